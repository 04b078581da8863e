"""`python -m beingh <command>`: the same as the `beingh` console script."""

import sys

from beingh.cli import main

sys.exit(main())
