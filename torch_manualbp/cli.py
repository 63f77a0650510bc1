r"""The ``manualbp`` command.

To run::

    manualbp gradcheck          # gradcheck/gradgradcheck of every Function, as a table
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="manualbp", description="Backpropagation written by hand.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("gradcheck", help="check every Function's backward against finite differences")
    check.add_argument("--seed", type=int, default=0, help="seed of the random test inputs")
    args = parser.parse_args(argv)
    return _gradcheck(args.seed)


def _gradcheck(seed: int) -> int:
    from .gradcheck import default_cases, format_table, run_checks

    rows = run_checks(default_cases(seed))
    print(format_table(rows))
    return 0 if all(passed for *_, passed, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
