"""What several test files share: small seeded networks and tensors, short runs of the real CLI, and the paths they
use (the plain-autograd reference they compare against is :mod:`torch_manualbp.testing.reference`). Test files
import these helpers with ``from conftest import ...``; no test file imports another.

``tests/`` is also where the CLI finds the test-only callbacks (``kill_at_step``, ``kill_mid_checkpoint``): the
runs started by :func:`run_cli` get it on their ``PYTHONPATH``.
"""

from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
DATA_DIR = ROOT / "data" / "mnist"
NIELSEN = ROOT / "experiments" / "nielsen_ch1.yaml"
# for a CLI run in a subprocess, from any folder: this checkout's package and the test-only callbacks importable,
# one thread per process (the runs share 2 cores)
CLI_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS="1")

# Lightning and torch warn about settings the short test runs choose on purpose
quiet = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


# --- small networks and tensors -----------------------------------


def network_and_batch(cost: str = "quadratic"):
    """A float64 ``Network([6, 5, 4, 3], cost=cost)`` seeded 0, a batch of 7 inputs and their labels in 0..2."""
    from torch_manualbp import Network

    torch.manual_seed(0)
    net = Network([6, 5, 4, 3], cost=cost, dtype=torch.float64)
    return net, torch.rand(7, 6, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0, 2, 2])


def leaves(*shapes, dtype=torch.float64, seed=0) -> list[torch.Tensor]:
    """Random normal tensors of the given shapes that require grad, from their own seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, dtype=dtype, generator=g).requires_grad_() for s in shapes]


# --- the experiments' scripts ---------------------------------------------------------------------------------------


def import_experiment(name: str):
    """``experiments/<name>.py`` as a module, imported as the script runs: with its own folder on the path."""
    folder = str(ROOT / "experiments")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


# --- MNIST files and short CLI runs ---------------------------------------------------------------------------------


def copy_mnist_files(dst: Path, skip: str | None = None) -> Path:
    """Writable copies of the four gz files in ``dst``, leaving out file ``skip`` (a name such as
    ``"train-labels-idx1-ubyte"``)."""
    from torch_manualbp.mnist import MNIST_FILES

    dst.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES.values():
        if name != skip:
            (dst / f"{name}.gz").write_bytes((DATA_DIR / f"{name}.gz").read_bytes())
    return dst


def write_config(
    tmp_path: Path, name: str = "config", source: Path = NIELSEN, checkpoint_every: int | None = None, **sections
) -> Path:
    """``source`` with its logs and checkpoints under tmp_path and ``sections`` merged into it; ``checkpoint_every``
    sets how many steps apart ``last.ckpt`` is written."""
    settings = yaml.safe_load(source.read_text())
    settings["data"]["data_dir"] = str(DATA_DIR)
    trainer = settings["trainer"]
    trainer["logger"]["init_args"].update(save_dir=str(tmp_path / "runs"), name=name, version=0)
    trainer["callbacks"][1]["init_args"]["dirpath"] = str(tmp_path / name / "last")
    if checkpoint_every is not None:
        trainer["callbacks"][1]["init_args"]["every_n_train_steps"] = checkpoint_every
    for section, changes in sections.items():
        if isinstance(changes, dict):
            settings.setdefault(section, {}).update(changes)
        else:
            settings[section] = changes
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def edit_config(path: Path, edit) -> None:
    """Apply ``edit`` to the settings of the YAML config at ``path`` (a dict, changed in place) and save them."""
    settings = yaml.safe_load(path.read_text())
    edit(settings)
    path.write_text(yaml.safe_dump(settings))


def manualbp(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``manualbp *args`` in a subprocess (``python -m torch_manualbp.cli``), its output captured."""
    command = [sys.executable, "-m", "torch_manualbp.cli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=CLI_ENV, capture_output=True, text=True, timeout=600)


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    """``manualbp fit --config config *args`` in a subprocess from the repository root."""
    return manualbp("fit", "--config", config, *args)


def one_error_line(capsys) -> str:
    """The one ``manualbp: error:`` line an in-process ``main`` printed, last on stderr and with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("manualbp: error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0]


def metrics(tmp_path: Path, name: str = "config") -> list[dict]:
    """The rows of a run's ``metrics.csv`` (a config from :func:`write_config`)."""
    with open(tmp_path / "runs" / name / "version_0" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def last(rows: list[dict], key: str) -> float:
    return float([r[key] for r in rows if r.get(key)][-1])


def final_weights(tmp_path: Path, name: str) -> dict:
    """The network's tensors in a run's ``last.ckpt`` (a config from :func:`write_config`)."""
    checkpoint = torch.load(tmp_path / name / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("network.")}


def assert_resume_ends_like_the_straight_run(tmp_path: Path, killed: Path, remove_killer) -> None:
    """Resume the killed run from its ``last.ckpt`` as a user would, with ``remove_killer`` applied to its config
    (see :func:`edit_config`), and check that it ends with exactly the weights of the run named ``straight``."""
    edit_config(killed, remove_killer)
    resumed = run_cli(killed, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = final_weights(tmp_path, "straight"), final_weights(tmp_path, "killed")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def logged(trainer) -> dict[int, dict[str, float]]:
    """What a trainer's CSVLogger wrote, by step: ``{step: {"group/name": value}}``."""
    rows = {}
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(int(row["step"]), {}).update({k: float(v) for k, v in row.items() if v and "/" in k})
    return rows


def book_shift(images: np.ndarray, d: int, axis: int) -> np.ndarray:
    """``expand_mnist.py``'s displacement of every image at once: roll by ``d`` along ``axis`` (of one image), then
    zero the row or column that wrapped around."""
    shifted = np.roll(images, d, axis + 1)
    index = 0 if d == 1 else 27
    if axis == 0:
        shifted[:, index, :] = 0
    else:
        shifted[:, :, index] = 0
    return shifted


def saturated_network(cost: str, dtype: torch.dtype):
    """A ``Network([2, 2, 3], cost=cost)`` whose output weighted inputs are of order ±1e4 on two examples, each
    driven hard to a wrong class (labels 1 and 0): the saturated case the costs' BP1 must keep finite.
    Returns ``(net, x, labels)``."""
    from torch_manualbp import Network

    net = Network([2, 2, 3], cost=cost, dtype=dtype)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[5.0, -5.0], [-5.0, 5.0]]))
        net.layers[0].bias.zero_()
        net.layers[1].weight.copy_(torch.tensor([[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4]]))  # zᴸ of order ±1e4
        net.layers[1].bias.copy_(torch.tensor([0.0, 0.0, -1e4]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=dtype)
    return net, x, torch.tensor([1, 0])
