r"""The ``manualbp`` command.

To run::

    manualbp gradcheck                                     # gradcheck every Function, print a table
    manualbp fit --config experiments/nielsen_ch1.yaml     # train MNIST (LightningCLI: fit, validate, test)
    manualbp predict --config experiments/nielsen_ch1.yaml --ckpt_path last --data.predict_path my_digit.png

A bad setting, a config that does not parse, missing data, a checkpoint that could run code, images that cannot be
read or a diverging run end with one line on stderr, ``manualbp: error: <what is wrong>``, and exit status 2
(1 for a diverged run) instead of a traceback; ``MANUALBP_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys

#: Exit status of a run stopped by bad settings, arguments or files (as argparse uses), and of a diverged run.
USAGE_ERROR, DIVERGED = 2, 1

_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] != ["gradcheck"]:
        if args[:1] in ([], ["-h"], ["--help"]):
            print("manualbp gradcheck [--seed N]: check every Function's backward against finite differences\n")
        return _train(argv)
    parser = argparse.ArgumentParser(prog="manualbp gradcheck", description=_gradcheck.__doc__)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test inputs")
    return _gradcheck(parser.parse_args(args[1:]).seed)


def _train(argv: list[str] | None) -> int:
    """``manualbp fit|validate|test|predict ...`` through LightningCLI; expected failures become one line on stderr."""
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from .lightning.cli import ConfigError, refused_checkpoint_message, run  # Lightning only for these commands
    from .lightning.report import UnreadableImagesError
    from .lightning.safety import DivergenceError

    try:
        run(argv)  # None: LightningCLI reads sys.argv itself
    except (ArgumentError, ConfigError, DivergenceError, MisconfigurationException, ValueError, TypeError,
            OSError, pickle.UnpicklingError) as err:  # fmt: skip
        if os.environ.get("MANUALBP_DEBUG", "") not in ("", "0"):
            raise
        message = _one_line(err)
        if isinstance(err, ArgumentError):
            args = sys.argv[1:] if argv is None else argv
            command = f"manualbp {args[0]}" if args and args[0] in _SUBCOMMANDS else "manualbp"
            message += f" ({command} --help lists every option)"
        elif isinstance(err, pickle.UnpicklingError):  # a checkpoint Lightning found itself (--ckpt_path last)
            message = f"the checkpoint to resume from: {refused_checkpoint_message(err)}"
        elif not isinstance(err, (ConfigError, DivergenceError, UnreadableImagesError)):
            message += f" [{type(err).__name__}; MANUALBP_DEBUG=1 shows the traceback]"
        print(f"manualbp: error: {message}", file=sys.stderr, flush=True)
        return DIVERGED if isinstance(err, DivergenceError) else USAGE_ERROR
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Shut DDP's process group down before the interpreter exits.

    Lightning leaves it open; gloo's worker threads are then destroyed during interpreter shutdown, which
    sometimes aborts the process ("terminate called without an active exception", exit status -6) after
    training has finished and saved everything.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _one_line(err: BaseException) -> str:
    """The exception's message with its lines joined, so that the error is one line whatever raised it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


def _gradcheck(seed: int) -> int:
    """Run gradcheck and gradgradcheck on every Function over several shapes; print a pass/fail table."""
    from .gradcheck import default_cases, format_table, run_checks

    rows = run_checks(default_cases(seed))
    print(format_table(rows))
    return 0 if all(passed for *_, passed, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
