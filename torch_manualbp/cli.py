r"""The ``manualbp`` command.

To run::

    manualbp gradcheck                                     # gradcheck every Function, print a table
    manualbp fit --config experiments/nielsen_ch1.yaml     # train MNIST (LightningCLI: fit, validate, test)
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] != ["gradcheck"]:
        if args[:1] in ([], ["-h"], ["--help"]):
            print("manualbp gradcheck [--seed N]: check every Function's backward against finite differences\n")
        from .lightning.cli import run  # Lightning only for the training commands

        run(argv)  # None: LightningCLI reads sys.argv itself
        return 0
    parser = argparse.ArgumentParser(prog="manualbp gradcheck", description=_gradcheck.__doc__)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test inputs")
    return _gradcheck(parser.parse_args(args[1:]).seed)


def _gradcheck(seed: int) -> int:
    """Run gradcheck and gradgradcheck on every Function over several shapes; print a pass/fail table."""
    from .gradcheck import default_cases, format_table, run_checks

    rows = run_checks(default_cases(seed))
    print(format_table(rows))
    return 0 if all(passed for *_, passed, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
