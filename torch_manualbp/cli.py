r"""The ``manualbp`` command.

To run::

    manualbp gradcheck                                     # gradcheck every Function, print a table
    manualbp fit --config experiments/nielsen_ch1.yaml     # train MNIST (LightningCLI: fit, validate, test)
    manualbp predict --config experiments/nielsen_ch1.yaml --ckpt_path last --data.predict_path my_digit.png

A bad setting, a config that does not parse, missing data, a checkpoint that could run code, images that cannot be
read or a diverging run end with one line on stderr, ``manualbp: error: <what is wrong>``, and exit status 2
(1 for a diverged run) instead of a traceback; ``MANUALBP_DEBUG=1`` shows the traceback instead.

SIGINT (Ctrl-C) or SIGTERM during ``fit`` writes a checkpoint at the end of the batch and ends with one line on
stderr giving the command that resumes; the exit status is the shell's for that signal, 128 + its number (130 for
SIGINT, 143 for SIGTERM), so that scripts and schedulers see the run was stopped, not finished.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import shlex
import sys
import warnings

#: Exit status of a run stopped by bad settings, arguments or files (as argparse uses), and of a diverged run.
USAGE_ERROR, DIVERGED = 2, 1

_SUBCOMMANDS = ("fit", "validate", "test", "predict")

HELP = """\
usage: manualbp {fit,validate,test,predict,gradcheck,check} [options]

manualbp: Nielsen's chapter-2 backpropagation (BP1-BP4, written by hand as PyTorch autograd Functions), trained
on MNIST with Lightning.

subcommands:
  fit         train a network: manualbp fit --config experiments/nielsen_ch1.yaml
  validate    accuracy of a trained network on the validation images (needs --ckpt_path)
  test        accuracy of a trained network on the test images (needs --ckpt_path)
  predict     the digits a trained network reads in your images (needs --ckpt_path and --data.predict_path)
  gradcheck   check every Function's backward against finite differences (manualbp gradcheck [--seed N])
  check       check YOUR backprop (a network.py or bp1-bp4): manualbp check FILE [--exercise NAME] [--seed N]

the settings that matter most:
  --config FILE               a YAML config; experiments/ holds the book's runs (nielsen_ch1.yaml: chapter 1)
  --model.sizes [784,30,10]   the layer sizes
  --model.eta 3.0             the learning rate η
  --model.cost quadratic      or cross_entropy
  --trainer.max_epochs 30     how long to train
  --ckpt_path last            resume fit from the newest last.ckpt, or evaluate it (a checkpoint file works too)

manualbp <subcommand> --help lists every option of that subcommand.
"""

#: Messages from the libraries the command runs on that a user of ``manualbp`` cannot act on, each matched by its
#: text and category: adverts, a deprecation inside a dependency, and warnings about the callbacks that the
#: command itself adds or changes (EpochReport is not needed to predict; the best checkpoint's folder is the run's
#: log version, new on every resume).
_NOISE = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"The dirpath has changed from", UserWarning),
    (r"Be aware that when using `ckpt_path`, .* Please add the following callbacks: \['EpochReport'\]\.$", UserWarning),
    # --optimizer replacing the classifier's own SGD is what the user asked for; the start line says what trains
    (
        r"`ManualBPClassifier.configure_optimizers` will be overridden by `ManualBPCLI.configure_optimizers`",
        UserWarning,
    ),
)


class _NoTips(logging.Filter):
    """Drop Lightning's "💡 Tip: ... try installing ..." adverts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] in (["-h"], ["--help"]):
        print(HELP, end="")
        return 0
    if not args:  # a subcommand is required
        print(HELP, end="", file=sys.stderr)
        return USAGE_ERROR
    if args[:1] == ["check"]:
        return _check(args[1:])
    if args[:1] != ["gradcheck"]:
        return _train(argv)
    parser = argparse.ArgumentParser(prog="manualbp gradcheck", description=_gradcheck.__doc__)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test inputs")
    return _gradcheck(parser.parse_args(args[1:]).seed)


def _train(argv: list[str] | None) -> int:
    """``manualbp fit|validate|test|predict ...`` through LightningCLI; expected failures become one line on stderr."""
    _quiet_dependencies()
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from .lightning.cli import MAX_STEPS_IN_UPDATES, ConfigError, RunInterrupted, refused_checkpoint_message, run
    from .lightning.report import UnreadableImagesError, shown_path
    from .lightning.safety import DivergenceError

    expected = (ArgumentError, ConfigError, DivergenceError, MisconfigurationException, ValueError, TypeError, OSError)
    try:
        run(argv)  # None: LightningCLI reads sys.argv itself
    except RunInterrupted as stop:
        args = sys.argv[1:] if argv is None else list(argv)
        checkpoint = shown_path(stop.checkpoint)
        print(
            f"manualbp: interrupted at step {stop.step} (epoch {stop.epoch}); checkpoint {checkpoint};"
            f" resume with: {_resume_command(args, checkpoint)}",
            file=sys.stderr,
            flush=True,
        )
        return 128 + stop.signum
    except (*expected, pickle.UnpicklingError) as err:
        if os.environ.get("MANUALBP_DEBUG", "") not in ("", "0"):
            raise
        message = _one_line(err)
        if "Neither `tensorboard` nor `tensorboardX` is available" in message:  # jsonargparse's dump of the union
            message = (
                "trainer.logger: TensorBoardLogger needs TensorBoard, which is not installed: pip install -e"
                " '.[tensorboard]' (or leave trainer.logger out: the default CSVLogger writes metrics.csv)"
            )
        elif isinstance(err, ArgumentError):
            args = sys.argv[1:] if argv is None else argv
            command = f"manualbp {args[0]}" if args and args[0] in _SUBCOMMANDS else "manualbp"
            message += f" ({command} --help lists every option)"
        elif isinstance(err, pickle.UnpicklingError):  # a checkpoint Lightning found itself (--ckpt_path hpc)
            message = f"the checkpoint to resume from: {refused_checkpoint_message(err)}"
        elif not isinstance(err, (ConfigError, DivergenceError, UnreadableImagesError)):
            message += f" [{type(err).__name__}; MANUALBP_DEBUG=1 shows the traceback]"
        print(f"manualbp: error: {message}", file=sys.stderr, flush=True)
        return DIVERGED if isinstance(err, DivergenceError) else USAGE_ERROR
    finally:
        MAX_STEPS_IN_UPDATES.counted = None  # Lightning's messages of a later Trainer in this process stay its own
        _close_process_group()
    return 0


def _quiet_dependencies() -> None:
    """Silence, by message and category, what the libraries print that a ``manualbp`` user cannot act on (``_NOISE``);
    every other warning still shows."""
    for message, category in _NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in logger.filters):
        logger.addFilter(_NoTips())


def _resume_command(args: list[str], checkpoint: str) -> str:
    """The command line ``args`` with ``--ckpt_path`` set to ``checkpoint``: the command that resumes the run."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["manualbp", *kept, "--ckpt_path", checkpoint])


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


def _check(args: list[str]) -> int:
    """Check a student's backprop file; print one line per finding (exit 0 right, 1 wrong, 2 file unusable)."""
    from .check import EXERCISES, check_file

    parser = argparse.ArgumentParser(prog="manualbp check", description=_check.__doc__)
    parser.add_argument("file", help="your network.py (class Network with backprop) or a file defining bp1-bp4")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds your code may run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the checker's weights and inputs")
    parser.add_argument(
        "--exercise",
        choices=EXERCISES,
        help="the chapter's problem your file solves: linear (your Network.backprop for linear neurons, σ(z) = z);"
        " sigma-prime-matrix (your sigma_prime_matrix(z), bp1 and bp2 in the Σ'(z) matrix form);"
        " modified-neuron (your Network with f, f_prime at MODIFIED_NEURON = (l, j));"
        " matrix-mini-batch (your Network.backprop_matrix(X, Y), checked and timed against your backprop)",
    )
    options = parser.parse_args(args)
    result = check_file(options.file, timeout=options.timeout, seed=options.seed, exercise=options.exercise)
    for line in result.lines:
        print(
            f"manualbp check: {line}" if result.status == 2 else line, file=sys.stderr if result.status == 2 else None
        )
    return result.status


if __name__ == "__main__":
    sys.exit(main())
