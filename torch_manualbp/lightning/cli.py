r"""``manualbp fit|validate|test|predict``: LightningCLI over ``ManualBPClassifier`` and ``MNISTDataModule``.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
    manualbp fit --config experiments/nielsen_ch1.yaml --trainer.accelerator cuda
    manualbp fit --config experiments/nielsen_ch1.yaml --ckpt_path last   # resume an interrupted run
    manualbp predict --config experiments/nielsen_ch1.yaml --ckpt_path last --data.predict_path my_digits/
    manualbp fit --config experiments/nielsen_ch1_seeds.yaml   # three seeds as one population
    manualbp fit --config experiments/nielsen_ch1.yaml --population.eta [0.025,0.25,2.5]   # one member per η

On top of plain ``LightningCLI``, :class:`ManualBPCLI`:

- checks the settings right after parsing, before anything is built or written, and raises :class:`ConfigError`
  naming the setting (``model.sizes must start with 784 ...``); ``torch_manualbp.cli.main`` prints such errors as
  one line; an abbreviated option (``--model.et``) is refused, not taken for the one it abbreviates;
- never answers from an untrained network: ``validate``, ``test`` and ``predict`` need ``--ckpt_path`` (a file, or
  ``last``), and ``last`` that finds no ``last.ckpt`` is a :class:`ConfigError`, for ``fit`` too (a resume that
  would silently start from scratch);
- on SIGINT (Ctrl-C) or SIGTERM during ``fit``, finishes the batch, writes ``last.ckpt`` and stops with
  :class:`RunInterrupted` (:class:`StopOnSignal`); ``torch_manualbp.cli.main`` prints the command that resumes;
- adds a :class:`~torch_manualbp.lightning.safety.DivergenceGuard` to the trainer's callbacks unless the config
  already has one (configure it there to change ``every_n_steps``);
- adds an :class:`~torch_manualbp.lightning.safety.AtomicCheckpointIO` to the trainer's plugins unless the config
  already has a ``CheckpointIO`` plugin (or the strategy is one that brings its own, FSDP or DeepSpeed);
- adds an :class:`~torch_manualbp.lightning.report.EpochReport` (the book's line per epoch, a summary and a chart)
  unless the config sets ``report: false`` or already lists one, and a
  :class:`~torch_manualbp.lightning.report.PredictionReport` to ``predict``;
- ``validate`` and ``test`` print the book's line only (``--verbose true`` adds Lightning's table); they and
  ``predict`` log nothing and make no ``version_N`` folder unless ``--trainer.logger`` is given on the command line;
- turns Lightning's progress bar off by default when standard output is not a terminal (a CI log), where its
  carriage returns would fill the log; ``--trainer.enable_progress_bar`` decides otherwise;
- logs to CSV under ``runs/manualbp`` by default (Lightning would pick TensorBoard whenever it is installed); the
  configs name their logger, and ``--trainer.logger.class_path lightning.pytorch.loggers.TensorBoardLogger``
  switches a config's logger to TensorBoard (``pip install -e ".[tensorboard]"``).
- with ``--trainer.default_root_dir D``, puts the logger's and the ``ModelCheckpoint`` callbacks' relative folders
  (the configs' ``runs``) under D instead of the working directory; ``--trainer.fast_dev_run`` writes no checkpoint
  (Lightning's own ``save_last`` would) and ends with one line instead of the summary;
- trains a population (a :class:`~torch_manualbp.lightning.ManualBPClassifier` of K members) instead of one
  network when the config or the command line gives any ``population.*`` setting: ``population.seeds`` (one member
  per seed, member k starting from the weights ``--seed_everything seeds[k]`` gives the single network; default:
  ``seed_everything`` for every member), ``population.eta`` and ``population.lmbda`` (one value per member, in place
  of ``model.eta`` and ``model.lmbda``); K is the longest list, the others one value or K. Every other ``model.*``
  setting applies to every member (L1, dropout, ``compile``, the backend); what would need autograd
  (``model.momentum``, ``weight_decay``, ``--optimizer``, DDP, mixed precision) or one η for all (``lr_schedule``,
  ``--lr_scheduler``) is refused in one line, by the rule the classifier applies
  (:func:`~torch_manualbp.lightning.paths.training_path`). ``validate``, ``test`` and ``predict`` take the same
  config (its ``population:`` section builds the module the checkpoint fits); ``predict`` answers with the ensemble,
  the members' averaged output activations, or with member k alone given ``--population.member k``.

The configs in ``experiments/`` need no change for either.
"""

from __future__ import annotations

import copy
import csv
import logging
import pickle
import re
import signal
import sys
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import DefaultHelpFormatter, Namespace, lazy_instance
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple
from lightning.pytorch.loggers import CSVLogger

from ..mnist import MNIST_CLASSES, MNIST_INPUTS, find_mnist_files
from .datamodule import MNISTDataModule, check_train_size, training_images
from .hparams import check_hyperparameters, check_layer_settings, population_settings
from .last_checkpoint import LastAtEpochEnd
from .module import ManualBPClassifier
from .paths import training_path
from .progress import updates_made
from .report import EpochReport, PredictionReport, shown_path
from .safety import AtomicCheckpointIO, DivergenceGuard

__all__ = [
    "ConfigError",
    "ManualBPCLI",
    "RunInterrupted",
    "read_config",
    "StopOnSignal",
    "run",
    "check_settings",
    "refused_checkpoint_message",
]

#: What each subcommand does, at the head of its ``--help``, with the settings that matter most.
_DESCRIPTIONS = {
    "fit": "manualbp fit: train a network of sigmoid layers on MNIST by mini-batch SGD, the book's backpropagation"
    " (BP1-BP4) written by hand. The settings that matter most: --config (experiments/nielsen_ch1.yaml is the book's"
    " chapter-1 run), --model.sizes, --model.eta, --model.cost, --model.mini_batch_size, --trainer.max_epochs,"
    " --ckpt_path last (resume an interrupted run), --population.seeds / --population.eta / --population.lmbda (train"
    " several networks at once, one per value).",
    "validate": "manualbp validate: the accuracy of a trained network on the 10,000 validation images. Needs"
    " --ckpt_path (a checkpoint file, or last).",
    "test": "manualbp test: the accuracy of a trained network on the 10,000 test images. Needs --ckpt_path (a"
    " checkpoint file, or last).",
    "predict": "manualbp predict: the digit a trained network reads in your images. Needs --ckpt_path (a checkpoint"
    " file, or last) and --data.predict_path (an image, a folder of images or an IDX images file).",
}
_SUBCOMMANDS = tuple(_DESCRIPTIONS)

#: Sphinx markup in the docstrings that ``--help`` shows, as plain text.
_ROLE = re.compile(r":[\w:]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`_")
_TEX = {
    r"\eta": "η",
    r"\lambda": "λ",
    r"\sigma": "σ",
    r"\delta": "δ",
    r"\partial": "∂",
    r"\to": "→",
    r"\cdot": "·",
    r"\,": " ",
}

#: Strategies that install their own (sharded) CheckpointIO, which the atomic plugin must not replace.
_OWN_CHECKPOINT_IO = ("fsdp", "deepspeed", "xla", "modelparallel")


class ConfigError(ValueError):
    """A setting of the ``manualbp`` command is invalid; the message names the setting and what it must be."""


class RunInterrupted(Exception):
    """``fit`` stopped on a signal after writing ``checkpoint``; resuming from it continues where it stopped.

    Attributes:
        signum: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
        step: the SGD updates the checkpoint holds.
        epoch: the epoch it was in.
        checkpoint: the path of the checkpoint written.
    """

    def __init__(self, signum: int, step: int, epoch: int, checkpoint: str) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step} (epoch {epoch})")
        self.signum, self.step, self.epoch, self.checkpoint = signum, step, epoch, checkpoint


class StopOnSignal(L.Callback):
    r"""On SIGINT (Ctrl-C) or SIGTERM during training, finish the batch, write the checkpoint and stop.

    The checkpoint is this run's last checkpoint (``last.ckpt``, or ``last-vN.ckpt`` where another run's
    ``last.ckpt`` is already there: never over another run's file) in the folder of the first ``ModelCheckpoint``
    that keeps one (``save_last``), else in the first one's folder, written at the end of the batch as a
    ``ModelCheckpoint`` due at that step would be, so the resumed run goes on exactly as the uninterrupted one. Then
    :class:`RunInterrupted` stops ``fit``. A second signal before then stops at once (Python's ``KeyboardInterrupt``).
    Under DDP a signal to any process stops all of them at the same step. Outside training the signals keep their
    handlers.
    """

    def __init__(self) -> None:
        self.received = 0  # the signal number, once one arrives
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.received = 0
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame) -> None:
        if self.received:  # asked twice: stop now
            self._restore()
            raise KeyboardInterrupt
        self.received = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        received = self.received
        if trainer.world_size > 1:  # every process stops at the same step
            received = int(trainer.strategy.reduce(torch.tensor(received, device=pl_module.device), reduce_op="max"))
        if not received:
            return
        path = _interrupt_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the whole training state, as last.ckpt holds it
        self._restore()
        raise RunInterrupted(received, updates_made(trainer, pl_module), trainer.current_epoch, path)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class EarlierMetrics(L.Callback):
    r"""A run resumed into its own ``CSVLogger`` folder (a config that fixes ``version``) keeps the rows that the
    checkpoint's steps logged: Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it starts, and the resumed run
    logs again only what comes after the checkpoint. Read before the trainer starts (:meth:`read`), written back at
    ``on_fit_start``, after the logger has started and before it writes anything."""

    def __init__(self, path: Path, rows: list[dict[str, str]], header: list[str]) -> None:
        self.path, self.rows, self.header = path, rows, header

    @classmethod
    def read(cls, trainer, ckpt_path: str) -> EarlierMetrics | None:
        """The rows of ``trainer``'s ``metrics.csv`` up to the step of the checkpoint at ``ckpt_path``, or ``None``
        when there is nothing to keep (another logger, a new version folder)."""
        logger = trainer.logger
        if not isinstance(logger, CSVLogger) or trainer.global_rank != 0 or not Path(ckpt_path).is_file():
            return None
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            return None
        step = torch.load(ckpt_path, map_location="cpu", weights_only=True)["global_step"]
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if row.get("step") and int(float(row["step"])) <= step]
            return cls(path, rows, list(reader.fieldnames or []))

    def on_fit_start(self, trainer, pl_module) -> None:
        writer = trainer.logger.experiment
        with open(self.path, "w", newline="") as f:
            table = csv.DictWriter(f, fieldnames=self.header)
            table.writeheader()
            table.writerows(self.rows)
        # the header's columns, so that the logger appends under them (and rewrites the file whole for a new one)
        writer.metrics_keys = list(self.header)


def _interrupt_checkpoint_path(trainer) -> str:
    """This run's own last checkpoint, where ``--ckpt_path last`` looks: the file its ``ModelCheckpoint`` with
    ``save_last`` has been writing (``last.ckpt``, or ``last-v1.ckpt`` when another run's ``last.ckpt`` was there
    first), else the first free ``last[-vN].ckpt`` in that callback's folder (else the first ``ModelCheckpoint``'s,
    else the trainer's checkpoint folder): never another run's file."""
    callbacks = [callback for callback in trainer.checkpoint_callbacks if isinstance(callback, ModelCheckpoint)]
    keeper = next((callback for callback in callbacks if callback.save_last and callback.dirpath), None)
    keeper = keeper or next((callback for callback in callbacks if callback.dirpath), None)
    if keeper is None:
        keeper = ModelCheckpoint(dirpath=Path(trainer.default_root_dir) / "checkpoints")
    if keeper.last_model_path:  # this run's (a resumed run's too: the callback's state holds it)
        return keeper.last_model_path
    path, version = keeper.format_checkpoint_name({}, keeper.CHECKPOINT_NAME_LAST), keeper.STARTING_VERSION
    while Path(path).exists():  # another run's: the next version, as Lightning names its own last checkpoints
        path, version = keeper.format_checkpoint_name({}, keeper.CHECKPOINT_NAME_LAST, ver=version), version + 1
    if keeper.save_last:  # in the checkpoint's callback state, as Lightning records it before it saves: the resumed
        keeper.last_model_path = path  # run goes on writing this file, not a new version beside it
    return path


def plain_text(text: str) -> str:
    r"""``text`` without reStructuredText and Sphinx markup, as ``--help`` prints it: ``:math:`\eta``` → η,
    ``:class:`~a.b.C``` → C, ```text <url>`_`` → text (url), ````code```` → code."""
    text = _LINK.sub(r"\1 (\2)", text)
    text = _ROLE.sub(lambda found: found[1].rsplit(".", 1)[-1] if found[1].startswith("~") else found[1], text)
    for macro, letter in _TEX.items():
        text = text.replace(macro, letter)
    return text.replace("`", "")


class _PlainHelpFormatter(DefaultHelpFormatter):
    """``--help`` in plain text: the docstrings' markup removed before the lines are wrapped."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return super()._split_lines(plain_text(text), width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(plain_text(text), width, indent)

    def start_section(self, heading: str | None) -> None:
        super().start_section(heading and plain_text(heading))


#: Parse errors raise ``jsonargparse.ArgumentError`` instead of printing the whole usage and exiting; an abbreviated
#: option is an error, not the option it abbreviates.
_PARSER_KWARGS: dict[str, Any] = {
    "exit_on_error": False,
    "allow_abbrev": False,
    "formatter_class": _PlainHelpFormatter,
    "prog": "manualbp",
    "description": "manualbp: Nielsen's chapter-2 backpropagation on MNIST (manualbp --help lists the subcommands)",
}
_PARSER_KWARGS.update(
    {
        name: {key: _PARSER_KWARGS[key] for key in ("exit_on_error", "allow_abbrev", "formatter_class")}
        | {"description": text}
        for name, text in _DESCRIPTIONS.items()
    }
)


class _ArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, with ``validate`` and ``test`` quiet by default (``verbose`` false): EpochReport prints
    the book's line, which Lightning's table would repeat (``--verbose true`` brings the table back)."""

    def add_method_arguments(self, theclass, themethod, *args, **kwargs):
        added = super().add_method_arguments(theclass, themethod, *args, **kwargs)
        if themethod in ("validate", "test"):
            self.set_defaults(verbose=False)
        return added


class ManualBPCLI(LightningCLI):
    """``LightningCLI`` with settings checked up front, a divergence guard, atomic checkpoint writes and a report of
    what happened by default."""

    def add_arguments_to_parser(self, parser) -> None:
        # --optimizer and --lr_scheduler as LightningCLI has them, handed to the classifier, which builds them
        # (``--lr_scheduler`` alone drives its own torch.optim.SGD at model.eta, on the fused path as on autograd's)
        parser.add_optimizer_args((torch.optim.Optimizer,), link_to="model.optimizer")
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple, link_to="model.lr_scheduler")
        for name, kind, text in _POPULATION_ARGUMENTS:
            parser.add_argument(f"--population.{name}", type=kind | None, default=None, help=text)
        parser.add_argument(
            "--report",
            type=bool,
            default=True,
            help="print the book's line after every epoch, a summary and a chart of the curves at the end of fit,"
            " and the accuracy of test (EpochReport); false: only Lightning's own output",
        )

    def parse_arguments(self, parser, args) -> None:
        self._command_line = sys.argv[1:] if args is None else args
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        _data_dir_beside_its_config(config, self._command_line)
        check_settings(config, subcommand)
        if config.get("lr_scheduler") and (config.get("model") or {}).get("lr_schedule", "constant") != "constant":
            raise ConfigError("--lr_scheduler and model.lr_schedule both set the learning rate's schedule; give one")
        if _population(config):
            _check_population(config)

    def instantiate_classes(self) -> None:
        _paths_under_root_dir(self._settings(self.config))
        super().instantiate_classes()
        config = self._settings(self.config)
        population = _population(config)
        if population:  # the classifier's settings, for K members (see _check_population for what cannot apply)
            model = dict(config["model"])
            seeds = population.get("seeds")
            model.update(
                seeds=config["seed_everything"] if seeds is None else seeds,
                eta=population.get("eta") or model["eta"],
                lmbda=model["lmbda"] if population.get("lmbda") is None else population["lmbda"],
                member=population.get("member"),
            )
            self.model = ManualBPClassifier(**model)

    def instantiate_trainer(self, **kwargs: Any):
        trainer = self._settings(self.config_init).get("trainer", {})
        callbacks = _as_list(kwargs.pop("callbacks", trainer.get("callbacks")))
        if not any(isinstance(callback, DivergenceGuard) for callback in callbacks):
            callbacks.append(DivergenceGuard())
        if self.subcommand == "fit":
            callbacks.append(StopOnSignal())
        elif not _named_on_command_line("--trainer.logger", self._command_line):
            # the config's logger is fit's; an evaluation's result is its printed line, and nothing is written
            # (no log folder, no copy of the config, which would otherwise land in the working directory)
            kwargs["logger"] = False
            self.save_config_callback = None
        if self.subcommand == "predict":
            if not any(isinstance(callback, PredictionReport) for callback in callbacks):
                callbacks.append(PredictionReport())
        elif self._settings(self.config).get("report", True):
            if not any(isinstance(callback, EpochReport) for callback in callbacks):
                callbacks.append(EpochReport())
        if self.subcommand == "fit":  # after the report, whose record of the epoch the checkpoint then holds
            callbacks.append(LastAtEpochEnd())
        if kwargs.get("fast_dev_run", trainer.get("fast_dev_run")):
            # Lightning's docs: fast_dev_run writes no checkpoint; its ModelCheckpoint would still write last.ckpt
            # at the end of training (save_last), into the config's folder
            callbacks = [callback for callback in callbacks if not isinstance(callback, ModelCheckpoint)]
            kwargs["enable_checkpointing"] = False
        callbacks = self._steps_in_batches(kwargs, trainer, callbacks)
        plugins = _as_list(kwargs.pop("plugins", trainer.get("plugins")))
        strategy = kwargs.get("strategy", trainer.get("strategy", "auto"))
        strategy_name = (strategy if isinstance(strategy, str) else type(strategy).__name__).lower()
        has_own = any(name in strategy_name for name in _OWN_CHECKPOINT_IO)
        if not has_own and not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(callbacks=callbacks, plugins=plugins or None, **kwargs)

    def _steps_in_batches(self, kwargs: dict, trainer: dict, callbacks: list) -> list:
        """The settings that count steps, given in SGD updates (checked to be whole batches of them:
        :func:`_check_step_counts`), as Lightning counts steps, in batches (``trainer.global_step``): ``max_steps``
        and an int ``val_check_interval`` into ``kwargs``, and each ``ModelCheckpoint``'s ``every_n_train_steps``, which
        it keeps privately, by building it again from its settings in the config. The saved config keeps updates."""
        config = self._settings(self.config)
        per_batch = updates_per_batch(config)
        for key in ("max_steps", "min_steps", "val_check_interval"):
            value = kwargs.get(key, trainer.get(key))
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                kwargs[key] = value // per_batch
        max_steps = kwargs.get("max_steps") or -1
        MAX_STEPS_IN_UPDATES.counted = (max_steps, per_batch) if per_batch > 1 and max_steps > 0 else None
        if per_batch == 1:
            return callbacks
        # the config's callbacks, each beside the instance built from it (the same list, in the same order)
        given = zip(_as_list((config.get("trainer") or {}).get("callbacks")), _as_list(trainer.get("callbacks")))
        rebuilt = {}
        for entry, callback in given:
            settings = _init_args(entry)
            every = settings.get("every_n_train_steps")
            if isinstance(callback, ModelCheckpoint) and every:
                rebuilt[id(callback)] = type(callback)(**{**settings, "every_n_train_steps": every // per_batch})
        return [rebuilt.get(id(callback), callback) for callback in callbacks]

    def _settings(self, config):
        """The running subcommand's section of ``config`` (``self.config`` or ``self.config_init``), or all of it."""
        return config.get(str(self.subcommand), config)

    def _resolve_last(self, subcommand: str) -> str | None:
        """The subcommand's ``ckpt_path``, ``last`` resolved here as Lightning would, to refuse what it would only
        warn about (LightningCLI's ``before_<subcommand>`` hooks run this before the subcommand reads its settings)."""
        settings = self.config_init[subcommand]
        if settings.get("ckpt_path") == "last":
            path = _last_checkpoint(self.trainer, subcommand)
            _check_ckpt_path(path)  # whole, and loadable with weights_only=True, like a file named on the command line
            settings["ckpt_path"] = path
        return settings.get("ckpt_path")

    def before_fit(self) -> None:
        ckpt_path = self._resolve_last("fit")
        earlier = EarlierMetrics.read(self.trainer, ckpt_path) if ckpt_path else None
        if earlier is not None:
            self.trainer.callbacks.append(earlier)

    def after_fit(self) -> None:
        MAX_STEPS_IN_UPDATES.counted = None

    def before_validate(self) -> None:
        self._resolve_last("validate")

    def before_test(self) -> None:
        self._resolve_last("test")

    def before_predict(self) -> None:
        self._resolve_last("predict")


#: ``population.*``: a config (or command line) with any of them trains a population, the other model settings
#: applying to every member.
_POPULATION_ARGUMENTS = (
    (
        "seeds",
        list[int],
        "train a population: one member per seed, member k starting from the weights that"
        " --seed_everything seeds[k] gives a single network (default: seed_everything, for every member)",
    ),
    ("eta", list[float], "train a population: one learning rate per member (instead of model.eta)"),
    ("lmbda", list[float], "train a population: one L2 parameter λ per member (instead of model.lmbda)"),
    (
        "member",
        int,
        "predict with member k of a population alone (default: the ensemble, the members' averaged output activations)",
    ),
)


def _population(config) -> dict:
    """The ``population`` settings given (not None); empty when the run trains a single network."""
    population = config.get("population") or {}
    return {key: value for key, value in dict(population).items() if value is not None}


def _check_population(config) -> None:
    """:class:`ConfigError` for ``population.*`` settings that cannot work, or settings a population cannot apply
    (by :func:`~torch_manualbp.lightning.paths.training_path`, the classifier's own rule)."""
    model = config.get("model") or {}
    population = _population(config)
    seeds = population.get("seeds", config.get("seed_everything"))
    try:
        seeds, _, _ = population_settings(
            seeds, population.get("eta", model.get("eta")), population.get("lmbda", model.get("lmbda", 0.0))
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"population.{err}") from None
    given = {key for key in ("optimizer", "lr_scheduler") if config.get(key)}
    schedulers = ["--lr_scheduler"] if "lr_scheduler" in given else []
    trainer = config.get("trainer") or {}
    try:
        training_path(
            {**model, "lmbda": population.get("lmbda", model.get("lmbda", 0.0))},
            members=len(seeds),
            own_optimizer="optimizer" not in given,
            schedulers=schedulers or None,
            precision=str(trainer.get("precision") or "32-true"),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    member = population.get("member")
    if member is not None and not 0 <= member < len(seeds):
        raise ConfigError(f"population.member must be a member's index in 0..{len(seeds) - 1}, got {member}")


def _paths_under_root_dir(config) -> None:
    r"""With ``trainer.default_root_dir`` D set, the relative ``save_dir`` of the trainer's logger and ``dirpath`` of
    its ``ModelCheckpoint`` callbacks (the configs' ``runs``, ``runs/nielsen_ch1``) are taken under D, where
    Lightning puts the logs and checkpoints of a trainer that names no folder, instead of the working directory;
    absolute paths are kept. Changes ``config`` (a subcommand's parsed settings) in place."""
    trainer = config.get("trainer") or {}
    root = trainer.get("default_root_dir")
    if not root:
        return

    def under_root(init_args, key: str, default: str | None = None) -> None:
        path = init_args.get(key, default) if init_args is not None else default
        if path is not None and not Path(path).is_absolute() and "://" not in str(path):
            init_args[key] = str(Path(root) / path)

    logger = trainer.get("logger")
    if isinstance(logger, CSVLogger):  # the command's default logger, not yet built
        trainer["logger"] = lazy_instance(CSVLogger, save_dir=str(Path(root) / "runs"), name="manualbp")
    for entry in _as_list(logger):
        if isinstance(entry, Namespace) and entry.get("init_args") is not None:
            under_root(entry.init_args, "save_dir")
    for entry in _as_list(trainer.get("callbacks")):
        if isinstance(entry, Namespace) and str(entry.get("class_path", "")).endswith("ModelCheckpoint"):
            under_root(entry.get("init_args"), "dirpath")


def read_config(path: str | Path) -> dict:
    """The settings of the YAML config at ``path`` as ``--config path`` takes them: a relative ``data.data_dir``
    is relative to the file's folder (the shipped configs' ``../data/mnist`` is the repository's MNIST from any
    working directory), and made absolute here. For scripts that load a config, change it and write it elsewhere."""
    path = Path(path)
    settings = yaml.safe_load(path.read_text())
    data = settings.get("data") if isinstance(settings, dict) else None
    if isinstance(data, dict) and data.get("data_dir") is not None:
        data_dir = Path(str(data["data_dir"])).expanduser()  # ~/mnist is the user's, not beside the file
        data["data_dir"] = str(data_dir if data_dir.is_absolute() else (path.parent / data_dir).resolve())
    return settings


def _data_dir_beside_its_config(config, args) -> None:
    """``data.data_dir`` as :func:`read_config` reads it from the last ``--config`` file that sets it; one given on
    the command line, or the default, stays relative to the working directory. Changes ``config`` in place."""
    data = config.get("data")
    whole_section = isinstance(args, list) and any(re.match(r"--data(=|$)", str(arg)) for arg in args)
    if data is None or whole_section or _named_on_command_line("--data.data_dir", args):
        return
    data_dir = None
    for path in config.get("config") or []:  # in the command line's order: the last file that sets it wins
        try:
            settings = read_config(getattr(path, "absolute", None) or str(path))
        except (OSError, yaml.YAMLError):  # jsonargparse has read it already; nothing to add here
            continue
        written = settings.get("data") if isinstance(settings, dict) else None
        if isinstance(written, dict) and written.get("data_dir") is not None:
            data_dir = written["data_dir"]
    if data_dir is not None:
        data["data_dir"] = data_dir


def _named_on_command_line(option: str, args) -> bool:
    """Whether ``option`` (or one of its sub-options, ``option.…``) is among the command line's arguments."""
    return isinstance(args, list) and any(re.match(rf"{re.escape(option)}(\.|=|$)", str(arg)) for arg in args)


def _last_checkpoint(trainer, subcommand: str) -> str:
    """The one ``last*.ckpt`` in the folders of the trainer's ``ModelCheckpoint`` callbacks (where Lightning's
    ``ckpt_path="last"`` looks); :class:`ConfigError` saying what to pass when there is none, or several (two runs'
    ``last.ckpt`` and ``last-v1.ckpt``: which one to resume is the user's choice, not the newest file's)."""
    callbacks = [callback for callback in trainer.checkpoint_callbacks if isinstance(callback, ModelCheckpoint)]
    folders = {Path(callback.dirpath) for callback in callbacks if callback.dirpath}
    found = sorted(
        {path for folder in folders for path in folder.glob(f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}*.ckpt")}
    )
    if len(found) == 1:
        return str(found[0])
    if found:
        names = ", ".join(shown_path(path) for path in found)
        raise ConfigError(f"ckpt_path last: {len(found)} last checkpoints ({names}); pass --ckpt_path <one of them>")
    folders = ", ".join(sorted({shown_path(callback.dirpath) for callback in callbacks if callback.dirpath}))
    where = f"in {folders}" if folders else "(no ModelCheckpoint in the config names a dirpath)"
    if subcommand == "fit":
        raise ConfigError(
            f"ckpt_path last: no last.ckpt {where} to resume from; leave --ckpt_path out to start a new run"
        )
    raise ConfigError(
        f"ckpt_path last: no last.ckpt {where}; {subcommand} needs a trained network: train one with manualbp fit,"
        " or pass --ckpt_path <checkpoint file>"
    )


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_settings(config, subcommand: str | None = None) -> None:
    r"""Raise :class:`ConfigError` for a setting that cannot work, naming it; ``config`` is one subcommand's section.

    Checked: ``model.sizes`` (at least two positive sizes, 784 inputs and 10 outputs for MNIST), ``model.eta``,
    ``model.momentum``, ``model.weight_decay``, ``model.regularization`` and ``model.dropout`` (by the classifier's
    own rules, :func:`check_hyperparameters`), ``data.batch_size`` and ``data.eval_batch_size`` (>= 1),
    ``data.train_size`` (1..50,000 or None), ``model.training_set_size`` (the n of λ/n: with a nonzero λ it must be
    the number of training examples the data module gives), ``data.data_dir`` (holds the four MNIST files,
    unless ``data.download`` is on) and ``ckpt_path`` (an existing, complete checkpoint file, or ``last``; given at
    all for ``validate``, ``test`` and ``predict``, which evaluate a trained network; ``best`` only inside ``fit``).
    """
    model, data = config.get("model"), config.get("data")
    if config.get("trainer") is not None:
        _check_trainer(config["trainer"])
        _check_step_counts(config)
    if model is not None:
        _check_model(model)
    if data is not None:
        _check_data(data, subcommand)
    if model is not None and data is not None:
        _check_training_set_size(model, data, _population(config).get("lmbda"))
    ckpt_path = config.get("ckpt_path")
    if subcommand in ("validate", "test", "predict"):
        if not ckpt_path:
            raise ConfigError(
                f"{subcommand} needs a trained network: pass --ckpt_path last (the newest last.ckpt of the config's"
                " run) or --ckpt_path <checkpoint file>; manualbp fit trains one"
            )
        if ckpt_path == "best":  # Lightning knows the best checkpoint only in the process that trained it
            raise ConfigError(
                "ckpt_path best is known only inside manualbp fit; pass the file that fit's summary names as"
                " 'Best checkpoint', or --ckpt_path last"
            )
    _check_ckpt_path(ckpt_path)


def _check_trainer(trainer) -> None:
    """The Trainer settings Lightning refuses for a module that steps itself (``manual optimization``), refused
    here in words a ``manualbp`` user can act on."""
    accumulate = trainer.get("accumulate_grad_batches")
    if accumulate not in (None, 1):
        raise ConfigError(
            f"trainer.accumulate_grad_batches {accumulate} is not supported: every update is one of the book's SGD"
            " steps on model.mini_batch_size examples; for larger steps set --model.mini_batch_size instead"
        )
    if trainer.get("gradient_clip_val") not in (None, 0, 0.0):
        raise ConfigError(
            f"trainer.gradient_clip_val {trainer['gradient_clip_val']} is not supported: the book's SGD step does"
            " not clip gradients (the divergence guard stops a run whose weights stop being finite); leave it out"
        )


def updates_per_batch(config) -> int:
    """The SGD updates one Lightning batch makes: ``data.batch_size`` images in mini-batches of
    ``model.mini_batch_size`` (the last one smaller where it does not divide), or 1 without a mini-batch size."""
    size = (config.get("model") or {}).get("mini_batch_size")
    batch = (config.get("data") or {}).get("batch_size")
    return -(-batch // size) if size and batch else 1


class _MaxStepsInUpdates(logging.Filter):
    """Lightning's "`max_steps=N` reached." in the user's units, the SGD updates asked for, with the batches Lightning
    counted them as; armed (``counted``: Lightning's max_steps and the updates a batch makes) while ``manualbp fit``
    runs with a max_steps it turned into batches."""

    counted: tuple[int, int] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.counted is not None:
            batches, per_batch = self.counted
            if record.getMessage() == f"`Trainer.fit` stopped: `max_steps={batches}` reached.":
                record.msg = (
                    f"`Trainer.fit` stopped: `max_steps={batches * per_batch}` reached ({batches} Lightning batches"
                    f" of {per_batch} SGD updates)."
                )
                record.args = ()
        return True


#: Installed on Lightning's rank-zero logger; disarmed after each fit (ManualBPCLI.after_fit, torch_manualbp.cli.main)
MAX_STEPS_IN_UPDATES = _MaxStepsInUpdates()
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(MAX_STEPS_IN_UPDATES)


def _init_args(entry) -> dict:
    """A callback's settings as the config gives them (``init_args`` of a ``class_path`` entry), as a dict."""
    init_args = entry.get("init_args") if hasattr(entry, "get") else None
    if init_args is None:
        return {}
    return init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)


def _check_step_counts(config) -> None:
    """``trainer.max_steps``, an int ``trainer.val_check_interval`` and a ``ModelCheckpoint``'s
    ``every_n_train_steps`` count SGD updates (``manualbp`` hands Lightning, which counts batches, their number of
    batches: :meth:`ManualBPCLI._steps_in_batches`); training stops, validates and saves only between Lightning
    batches, so they must be whole batches of updates."""
    trainer, per_batch = config["trainer"], updates_per_batch(config)
    where = (
        f"each Lightning batch makes {per_batch} SGD updates (data.batch_size / model.mini_batch_size) and training"
        " stops, validates and saves only between batches"
    )
    counts = [(f"trainer.{key}", trainer.get(key)) for key in ("max_steps", "min_steps", "val_check_interval")]
    for k, entry in enumerate(_as_list(trainer.get("callbacks"))):
        settings = _init_args(entry)
        counts.append((f"trainer.callbacks[{k}].every_n_train_steps", settings.get("every_n_train_steps")))
    for name, value in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % per_batch == 0:
            continue
        lower, upper = value // per_batch * per_batch, (value // per_batch + 1) * per_batch
        choices = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(f"{name} {value} counts SGD updates, and {where}: use {choices}")


#: The settings checked up front by the classifier's own rules (check_hyperparameters); sizes are checked here, for
#: MNIST, and the rest when the classifier is built.
_MODEL_SETTINGS = ("sizes", "eta", "momentum", "weight_decay", "regularization", "dropout", "activation")


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
            raise ConfigError(f"model.sizes must end with {MNIST_CLASSES} (one output neuron per digit), got {sizes}")
    settings = {name: model.get(name) for name in _MODEL_SETTINGS if model.get(name) is not None}
    try:
        check_hyperparameters(**settings)  # the classifier's own rules, before anything is built
        if model.get("layers") is not None:  # chapter 6's layers, and the settings they cannot take
            check_layer_settings(model)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.{err}") from None


def _check_data(data, subcommand: str | None = None) -> None:
    for key in ("batch_size", "eval_batch_size"):
        value = data.get(key)
        if value is not None and value < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {value}")
    try:
        check_train_size(data.get("train_size"))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.{err}") from None
    predict_path = data.get("predict_path")
    if predict_path is not None and not Path(predict_path).exists():
        raise ConfigError(
            f"data.predict_path {str(Path(predict_path).resolve())!r} does not exist; give an image file, a directory"
            " of images or an IDX images file"
        )
    data_dir = data.get("data_dir")
    if data_dir is None or data.get("download") or subcommand == "predict":  # predict reads predict_path only
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


def _check_training_set_size(model, data, population_lmbda) -> None:
    """With a nonzero λ, ``model.training_set_size`` (the n of λ/n) must be the number of training examples the data
    module gives (``data.train_size``, times 5 with ``data.expand``), as the book's ``n = len(training_data)``."""
    lmbdas = population_lmbda if population_lmbda is not None else [model.get("lmbda") or 0.0]
    n, given = training_images(data.get("train_size"), bool(data.get("expand"))), model.get("training_set_size")
    if any(lmbdas) and given is not None and given != n:
        raise ConfigError(
            f"model.training_set_size={given} but the data module trains on {n} examples (data.train_size,"
            f" data.expand): λ/n needs n = {n}; set model.training_set_size: {n}"
        )


def _check_ckpt_path(ckpt_path) -> None:
    """A checkpoint file named on the command line must exist, be a whole ``torch.save`` archive (a zip file), and
    load with ``torch.load(weights_only=True)``: nothing in it may be an object whose unpickling could run code."""
    special = ckpt_path in ("last", "best", "hpc") or str(ckpt_path).lower().startswith("registry")
    if not ckpt_path or special or "://" in str(ckpt_path):
        return  # Lightning resolves these itself ("last": ManualBPCLI.before_<subcommand>, first)
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path {str(path)!r} is not a file; give a checkpoint file, or 'last' to resume from the newest"
            " last.ckpt"
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
        raise ConfigError(
            f"ckpt_path {str(path)!r} is not a readable checkpoint ({' '.join(str(err).split())})"
        ) from None


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
        parser_class=_ArgumentParser,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "enable_progress_bar": sys.stdout.isatty(),  # no carriage returns in a CI log
            "logger": lazy_instance(CSVLogger, save_dir="runs", name="manualbp"),  # not TensorBoard, even if installed
        },
        args=args,
        **kwargs,
    )
