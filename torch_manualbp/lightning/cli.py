r"""``manualbp fit|validate|test|predict``: LightningCLI over ``ManualBPClassifier`` and ``MNISTDataModule``.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
    manualbp fit --config experiments/nielsen_ch1.yaml --trainer.accelerator cuda
    manualbp fit --config experiments/nielsen_ch1.yaml --ckpt_path last   # resume an interrupted run
    manualbp predict --config experiments/nielsen_ch1.yaml --ckpt_path last --data.predict_path my_digits/

On top of plain ``LightningCLI``, :class:`ManualBPCLI`:

- checks the settings right after parsing, before anything is built or written, and raises :class:`ConfigError`
  naming the setting (``model.sizes must start with 784 ...``); ``torch_manualbp.cli.main`` prints such errors as
  one line;
- adds a :class:`~torch_manualbp.lightning.safety.DivergenceGuard` to the trainer's callbacks unless the config
  already has one (configure it there to change ``every_n_steps``);
- adds an :class:`~torch_manualbp.lightning.safety.AtomicCheckpointIO` to the trainer's plugins unless the config
  already has a ``CheckpointIO`` plugin (or the strategy is one that brings its own, FSDP or DeepSpeed);
- adds an :class:`~torch_manualbp.lightning.report.EpochReport` (the book's line per epoch, a summary and a chart)
  unless the config sets ``report: false`` or already lists one, and a
  :class:`~torch_manualbp.lightning.report.PredictionReport` to ``predict``;
- turns Lightning's progress bar off by default when standard output is not a terminal (a CI log), where its
  carriage returns would fill the log; ``--trainer.enable_progress_bar`` decides otherwise;
- logs to CSV under ``runs/manualbp`` by default (Lightning would pick TensorBoard whenever it is installed); the
  configs name their logger, and ``--trainer.logger.class_path lightning.pytorch.loggers.TensorBoardLogger``
  switches a config's logger to TensorBoard (``pip install -e ".[tensorboard]"``).

The configs in ``experiments/`` need no change for either.
"""
from __future__ import annotations

import copy
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from jsonargparse import lazy_instance
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from ..mnist import MNIST_CLASSES, MNIST_INPUTS, find_mnist_files
from .datamodule import MNISTDataModule
from .module import ManualBPClassifier, check_hyperparameters
from .report import EpochReport, PredictionReport
from .safety import AtomicCheckpointIO, DivergenceGuard

__all__ = ["ConfigError", "ManualBPCLI", "run", "check_settings", "refused_checkpoint_message"]


#: Parse errors raise ``jsonargparse.ArgumentError`` instead of printing the whole usage and exiting.
_PARSER_KWARGS: dict[str, Any] = {"exit_on_error": False}
_PARSER_KWARGS.update({name: {"exit_on_error": False} for name in ("fit", "validate", "test", "predict")})

#: Strategies that install their own (sharded) CheckpointIO, which the atomic plugin must not replace.
_OWN_CHECKPOINT_IO = ("fsdp", "deepspeed", "xla", "modelparallel")


class ConfigError(ValueError):
    """A setting of the ``manualbp`` command is invalid; the message names the setting and what it must be."""


class ManualBPCLI(LightningCLI):
    """``LightningCLI`` with settings checked up front, a divergence guard, atomic checkpoint writes and a report of
    what happened by default."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--report",
            type=bool,
            default=True,
            help="print the book's line after every epoch, a summary and a chart of the curves at the end of fit,"
            " and the accuracy of test (EpochReport); false: only Lightning's own output",
        )

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        check_settings(self.config[subcommand] if subcommand else self.config)

    def instantiate_trainer(self, **kwargs: Any):
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = _as_list(kwargs.pop("callbacks", trainer.get("callbacks")))
        if not any(isinstance(callback, DivergenceGuard) for callback in callbacks):
            callbacks.append(DivergenceGuard())
        if self.subcommand == "predict":
            if not any(isinstance(callback, PredictionReport) for callback in callbacks):
                callbacks.append(PredictionReport())
        elif self._get(self.config, "report", default=True):
            if not any(isinstance(callback, EpochReport) for callback in callbacks):
                callbacks.append(EpochReport())
        plugins = _as_list(kwargs.pop("plugins", trainer.get("plugins")))
        strategy = kwargs.get("strategy", trainer.get("strategy", "auto"))
        strategy_name = (strategy if isinstance(strategy, str) else type(strategy).__name__).lower()
        has_own = any(name in strategy_name for name in _OWN_CHECKPOINT_IO)
        if not has_own and not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(callbacks=callbacks, plugins=plugins or None, **kwargs)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_settings(config) -> None:
    r"""Raise :class:`ConfigError` for a setting that cannot work, naming it; ``config`` is one subcommand's section.

    Checked: ``model.sizes`` (at least two positive sizes, 784 inputs and 10 outputs for MNIST), ``model.eta``,
    ``model.momentum`` and ``model.weight_decay`` (by the classifier's own rules, :func:`check_hyperparameters`),
    ``data.batch_size`` and ``data.eval_batch_size`` (>= 1), ``data.data_dir`` (holds the four MNIST files,
    unless ``data.download`` is on) and ``ckpt_path`` (an existing, complete checkpoint file, or ``last``/``best``).
    """
    model, data = config.get("model"), config.get("data")
    if model is not None:
        _check_model(model)
    if data is not None:
        _check_data(data)
    _check_ckpt_path(config.get("ckpt_path"))


#: The settings checked up front by the classifier's own rules (check_hyperparameters); sizes are checked here, for
#: MNIST, and the rest when the classifier is built.
_MODEL_SETTINGS = ("eta", "momentum", "weight_decay")


def _check_model(model) -> None:
    sizes = model.get("sizes")
    if sizes is not None:
        if len(sizes) < 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
            raise ConfigError(f"model.sizes must be at least two positive layer sizes, e.g. [784, 30, 10], got {sizes}")
        if sizes[0] != MNIST_INPUTS:
            raise ConfigError(
                f"model.sizes must start with {MNIST_INPUTS} (MNIST images have {MNIST_INPUTS} pixels), got {sizes}"
            )
        if sizes[-1] != MNIST_CLASSES:
            raise ConfigError(
                f"model.sizes must end with {MNIST_CLASSES} (one output neuron per digit), got {sizes}"
            )
    settings = {name: model.get(name) for name in _MODEL_SETTINGS if model.get(name) is not None}
    try:
        check_hyperparameters(**settings)  # the classifier's own rules, before anything is built
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.{err}") from None


def _check_data(data) -> None:
    for key in ("batch_size", "eval_batch_size"):
        value = data.get(key)
        if value is not None and value < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {value}")
    predict_path = data.get("predict_path")
    if predict_path is not None and not Path(predict_path).exists():
        raise ConfigError(
            f"data.predict_path {str(Path(predict_path).resolve())!r} does not exist; give an image file, a directory"
            " of images or an IDX images file"
        )
    data_dir = data.get("data_dir")
    if data_dir is None or data.get("download"):
        return
    where = Path(data_dir).resolve()
    if not where.is_dir():
        raise ConfigError(
            f"data.data_dir {str(where)!r} is not a directory; point it at the four MNIST IDX files"
            " (the project ships them in data/mnist) or add --data.download true to fetch them"
        )
    try:
        find_mnist_files(data_dir)
    except FileNotFoundError as err:
        raise ConfigError(f"data.data_dir: {err} On the command line: --data.download true.") from None


def _check_ckpt_path(ckpt_path) -> None:
    """A checkpoint file named on the command line must exist, be a whole ``torch.save`` archive (a zip file), and
    load with ``torch.load(weights_only=True)``: nothing in it may be an object whose unpickling could run code."""
    special = ckpt_path in ("last", "best", "hpc") or str(ckpt_path).lower().startswith("registry")
    if not ckpt_path or special or "://" in str(ckpt_path):
        return  # Lightning resolves these itself; "last" with no last checkpoint starts from scratch, with a warning
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path {str(path)!r} is not a file; give a checkpoint file, or 'last' to resume from the newest last.ckpt"
        )
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive whose directory is at its very end
        raise ConfigError(
            f"ckpt_path {str(path)!r} is not a readable checkpoint (truncated, corrupted or not written by torch.save)"
        )
    try:  # mmap: the pickle is read, the tensors' bytes are not
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"ckpt_path {str(path)!r}: {refused_checkpoint_message(err)}") from None
    except RuntimeError as err:  # a zip archive that is not torch.save's
        raise ConfigError(f"ckpt_path {str(path)!r} is not a readable checkpoint ({' '.join(str(err).split())})") from None


def refused_checkpoint_message(err: pickle.UnpicklingError) -> str:
    """What to tell the user when ``torch.load(weights_only=True)`` refuses a checkpoint, with torch's reason."""
    # torch names what it refused on a line of its own ("Trying to load unsupported GLOBAL posix.system ...")
    reason = next((line.strip().rstrip(".") for line in str(err).splitlines() if "GLOBAL" in line), "")
    return (
        "torch.load(weights_only=True) refused to load it (it holds objects that could run code); load only"
        f" checkpoints from a source you trust{f' ({reason})' if reason else ''}"
    )


def run(args: list[str] | dict | None = None, **kwargs: Any) -> LightningCLI:
    """Run the Lightning CLI on ``args`` (``fit``/``validate``/``test``/``predict`` and options), or on ``sys.argv``.

    Raises:
        ConfigError: a setting is invalid (checked before anything is built).
        jsonargparse.ArgumentError: the arguments or the config do not parse (unknown key, wrong type).
        DivergenceError: training diverged (see :class:`~torch_manualbp.lightning.safety.DivergenceGuard`).
        UnreadableImagesError: ``predict`` could not read some images (it answered the others).
    """
    kwargs.setdefault("parser_kwargs", copy.deepcopy(_PARSER_KWARGS))  # LightningCLI adds to the nested dicts
    return ManualBPCLI(
        ManualBPClassifier,
        MNISTDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "enable_progress_bar": sys.stdout.isatty(),  # no carriage returns in a CI log
            "logger": lazy_instance(CSVLogger, save_dir="runs", name="manualbp"),  # not TensorBoard, even if installed
        },
        args=args,
        **kwargs,
    )
