r"""Section 3: wall-clock time to 95% MNIST test accuracy through the project's own ``manualbp fit``.

The launcher reads ``benchmarks/fast_95.yaml``, fills in the device, the result file and (``--quick``)
a lower target, writes the effective config next to the results, and starts ``manualbp fit --config``
as a subprocess with ``BENCH_T0`` set to the current time. The config's
:class:`benchmarks.stop_at_accuracy.StopAtAccuracy` callback checks the test accuracy every N steps,
stops the trainer at the target and writes the elapsed time since ``BENCH_T0``: interpreter start,
imports, reading and verifying the data on disk and training all count.

To run only this section::

    python -m benchmarks --only time95 [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from torch_manualbp.lightning.cli import read_config

__all__ = ["run", "CONFIG"]

CONFIG = Path(__file__).with_name("fast_95.yaml")
REPO = Path(__file__).resolve().parents[1]


def _manualbp() -> list[str]:
    """The installed ``manualbp`` script of this interpreter's environment, or the module if absent."""
    script = Path(sys.executable).with_name("manualbp")
    found = str(script) if script.exists() else shutil.which("manualbp")
    return [found] if found else [sys.executable, "-m", "torch_manualbp.cli"]


def _relative(path: Path) -> str:
    """``path`` relative to the repository (where ``manualbp`` runs), so results name no machine's paths."""
    return os.path.relpath(path, REPO)


def effective_config(out: Path, device: str, quick: bool) -> dict:
    """fast_95.yaml with the device, the output paths (relative to the repository) and, for a smoke run, a lower
    target."""
    config = read_config(CONFIG)
    trainer = config["trainer"]
    trainer["accelerator"] = device
    trainer["default_root_dir"] = _relative(out / f"time95_{device}")  # where LightningCLI saves config.yaml
    stopper = trainer["callbacks"][0]["init_args"]
    stopper["result_file"] = _relative(out / f"time_to_95_{device}.json")
    if quick:  # a smoke run: the mechanism end to end, not the figure
        stopper["target"], stopper["every_n_steps"] = 0.90, 200
        trainer["max_time"] = "00:00:00:40"
    return config


def run(out: Path, device: str, quick: bool, log=print) -> dict:
    """Launch one ``manualbp fit`` to the target; return the callback's record plus the launcher's view."""
    out = out.resolve()
    config = effective_config(out, device, quick)
    config_path = out / f"time_to_95_{device}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    result_file = REPO / config["trainer"]["callbacks"][0]["init_args"]["result_file"]
    result_file.unlink(missing_ok=True)
    command = [*_manualbp(), "fit", "--config", _relative(config_path)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log(f"  {' '.join(command)}")
    start = time.time()
    env["BENCH_T0"] = repr(start)
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if completed.returncode != 0 or not result_file.exists():
        tail = (completed.stdout + completed.stderr)[-3000:]
        raise RuntimeError(f"manualbp fit failed (exit {completed.returncode}):\n{tail}")
    result = json.loads(result_file.read_text())
    shown = ["manualbp", *command[len(_manualbp()) :]]  # the installed script's path is this machine's
    result.update(
        process_wall_s=wall, command=" ".join(shown), config_file=_relative(config_path), config=config, quick=quick
    )
    status = "reached" if result["reached"] else "NOT reached"
    log(
        f"  {status} {result['target']:.0%}: accuracy {result.get('accuracy', float('nan')):.4f} at step "
        f"{result.get('step')} after {result.get('elapsed_s', float('nan')):.1f} s (process {wall:.1f} s)"
    )
    return result
