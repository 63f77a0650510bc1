r"""Section 3: the main command as a user runs it, ``manualbp fit --config experiments/nielsen_ch1.yaml``.

* **one CLI epoch**: the wall time of ``manualbp fit`` with ``--trainer.max_epochs 6`` minus that with ``1``, over 5
  (issue 18's measure: the difference of 2 and 1 epochs was smaller than the processes' noise once an epoch took well
  under a second), so one epoch of training *and* its validation (10,000 validation and 10,000 test images, as the
  config monitors both), without the process start, imports and data loading that both runs pay; on the default path
  (reported as ``eager`` for the report's keys: since issue 18 the classifier's ``backend="auto"``, the native op
  ``torch.ops.manualbp.sgd_block`` where it builds, as here, else the eager step) and with ``--model.compile true``
  (both compiled runs find Inductor's on-disk cache warm: a compiling warm-up run goes first, and its time is reported
  as the compile time);
* **the book's epoch**: the book's per-example numpy algorithm on the same 50,000 examples (untimed set-up, as in
  section 2), in the same interleaved rounds, as the reference of the ``x book`` ratios;
* **30 epochs**: the shipped config end to end (``manualbp fit --config experiments/nielsen_ch1.yaml``), process
  wall time, after set-up (the virtual environment exists).

Every run writes its config, logs and checkpoints into a temporary directory, removed at the end; the results name
paths relative to the repository.

To run only this section::

    python -m benchmarks --only cli [--quick]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from torch_manualbp.lightning.cli import read_config
from torch_manualbp.testing.timing import median

from .epoch import EpochBench
from .time_to_95 import REPO, _manualbp

__all__ = ["run"]

CONFIG = REPO / "experiments" / "nielsen_ch1.yaml"
LONG = 6  # epochs of the longer run: one epoch = (t(LONG) − t(1)) / (LONG − 1)


def _config(out: Path, name: str) -> Path:
    """The shipped config, written into ``out`` with its logs and checkpoints there instead of under ``runs/``."""
    config = read_config(CONFIG)
    trainer = config["trainer"]
    trainer["logger"]["init_args"].update(save_dir=str(out / "cli_runs"), name=name)
    for callback in trainer["callbacks"]:
        if callback["init_args"].get("dirpath"):
            callback["init_args"]["dirpath"] = str(out / "cli_runs" / name / "last")
    path = out / f"cli_{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _fit(config: Path, *args: str) -> float:
    """Wall seconds of one ``manualbp fit`` process; raises with its output if it fails."""
    command = [*_manualbp(), "fit", "--config", str(config), *args]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
        )
    return seconds


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def run(data_dir: Path, repeats: int, quick: bool, log=print) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="manualbp_cli_"))
    try:
        return _run(scratch, data_dir, repeats, quick, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(out: Path, data_dir: Path, repeats: int, quick: bool, log) -> dict:
    book = EpochBench(data_dir, 50_000, __import__("torch").device("cpu"))  # the CLI epoch is always a whole one
    eager, compiled = _config(out, "eager"), _config(out, "compiled")
    compile_s = _fit(compiled, "--trainer.max_epochs", "1", "--model.compile", "true")  # fills Inductor's cache
    log(f"  compiling run (1 epoch): {compile_s:.1f} s")
    runs = {
        "book": lambda: book.book()[0],
        "eager 1": lambda: _fit(eager, "--trainer.max_epochs", "1"),
        f"eager {LONG}": lambda: _fit(eager, "--trainer.max_epochs", str(LONG)),
        "compiled 1": lambda: _fit(compiled, "--trainer.max_epochs", "1", "--model.compile", "true"),
        f"compiled {LONG}": lambda: _fit(compiled, "--trainer.max_epochs", str(LONG), "--model.compile", "true"),
    }
    samples: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            samples[name].append(runs[name]())
            log(f"  {name:10s} repeat {repeat}: {samples[name][-1]:6.2f} s")
    book_s = median(samples["book"])
    result = {
        "config": _relative(CONFIG),
        "repeats": repeats,
        "long_epochs": LONG,
        "book_epoch_s": book_s,
        "compile_run_s": compile_s,
        "samples_s": samples,
    }
    for kind in ("eager", "compiled"):
        epoch_s = median(
            [(long - one) / (LONG - 1) for one, long in zip(samples[f"{kind} 1"], samples[f"{kind} {LONG}"])]
        )
        result[f"{kind}_epoch_s"] = epoch_s
        result[f"{kind}_x_book"] = book_s / epoch_s
        result[f"{kind}_one_epoch_process_s"] = median(samples[f"{kind} 1"])
    if not quick:
        result["thirty_epochs_s"] = _fit(_config(out, "thirty"))
        log(f"  30 epochs, end to end: {result['thirty_epochs_s']:.1f} s")
    return result
