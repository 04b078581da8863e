"""`python -m beingh.train ...` and `torchrun ... -m beingh.train ...`."""

import sys

from beingh.train.cli import main

sys.exit(main())
