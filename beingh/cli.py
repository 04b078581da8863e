"""`beingh` console script: dispatches `beingh <command> ...` to the module that implements it.

Commands are imported lazily so `beingh check` does not pay for importing the model or simulators.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("beingh.train.cli:main", "train a policy (same arguments as `torchrun -m beingh.train`)"),
    "serve": ("beingh.inference.server:main", "serve a checkpoint over websockets"),
    "infer": ("beingh.inference.cli:main", "run the policy on one observation file (npz/json)"),
    "eval": ("beingh.eval.cli:main", "closed-loop evaluation in a simulator"),
    "demo": ("beingh.eval.demo:main", "collect demos / run the end-to-end CPU demo"),
    "stats": ("beingh.data.cli:stats_main", "compute and print dataset statistics"),
    "check": ("beingh.data.cli:check_main", "validate a dataset config against the data"),
}


def _usage() -> str:
    lines = ["usage: beingh <command> [args]", "", "commands:"]
    lines += [f"  {name:<7} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"beingh: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(rest) or 0)
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        print(f"beingh {name}: this environment has no torch (the LIBERO venv runs only `eval --env libero` and "
              "`demo collect --env libero`); run it from beingh's main environment", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
