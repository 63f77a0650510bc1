"""``manualbp fit`` with a ``population:`` section: real CLI runs on the real MNIST files, a few batches each."""

import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, edit_config, manualbp, run_cli, write_config

from torch_manualbp import Network, Population
from torch_manualbp.layer_spec import LayerNetwork
from torch_manualbp.lightning import ManualBPClassifier
from torch_manualbp.lightning.cli import run

DIGITS = ROOT / "experiments" / "digits"
KILL_AT_STEP = {"class_path": "kill_at_step.KillAtStep"}  # tests/kill_at_step.py, on the runs' PYTHONPATH
# a few batches: 10 mini-batches of 10 per Lightning batch, evaluation on 100 images
SHORT = {
    "data": {"batch_size": 100, "eval_batch_size": 100, "monitor_test": True},
    "trainer": {"max_epochs": 2, "limit_train_batches": 6, "limit_val_batches": 1},
}


def checkpoint_state(tmp_path: Path, name: str) -> dict:
    saved = torch.load(tmp_path / name / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    return saved["state_dict"]


def test_population_members_end_with_the_weights_of_single_runs_with_their_seeds(tmp_path):
    population = write_config(tmp_path, "population", population={"seeds": [3, 5]}, **SHORT)
    assert run_cli(population).returncode == 0
    members = checkpoint_state(tmp_path, "population")
    hidden = 30
    for k, seed in enumerate((3, 5)):
        single = write_config(tmp_path, f"seed_{seed}", seed_everything=seed, **SHORT)
        done = run_cli(single)
        assert done.returncode == 0, done.stderr[-2000:]
        net = checkpoint_state(tmp_path, f"seed_{seed}")
        rows = slice(k * hidden, (k + 1) * hidden)
        pairs = [
            (members["population.weight_1"][rows], net["network.layers.0.weight"]),
            (members["population.bias_1"][rows], net["network.layers.0.bias"]),
            (members["population.weight_2"][k], net["network.layers.1.weight"]),
            (members["population.bias_2"][k], net["network.layers.1.bias"]),
        ]
        # 120 float32 SGD steps at η = 3, summed in another order (stacked and batched products): equal up to rounding
        for got, want in pairs:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # measured: at most 5e-6


def test_population_fit_prints_every_member_and_the_ensemble_each_epoch_and_a_summary(tmp_path):
    config = write_config(tmp_path, population={"seeds": [0, 1, 2]}, **SHORT)
    done = run_cli(config)
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = [line for line in done.stdout.splitlines() if line.startswith("Epoch ")]
    assert len(epochs) == 2
    for line in epochs:
        head = line.split(" / ")[0].split("members ")[1].split()
        assert len(head) == 3 and "test images (median" in line and "; ensemble " in line
    for start in ("Best member ", "Median member ", "Ensemble (members' averaged outputs), best epoch"):
        assert any(line.startswith(start) for line in done.stdout.splitlines()), start
    assert (tmp_path / "runs" / "config" / "version_0" / "curves.png").is_file()
    test = manualbp("test", "--config", config, "--ckpt_path", "last", "--trainer.limit_test_batches", "1")
    assert test.returncode == 0, test.stderr[-2000:]
    (line,) = [line for line in test.stdout.splitlines() if line.startswith("Test: ")]
    assert line.startswith("Test: ensemble ") and len(line.split("members ")[1].split(",")[0].split()) == 3
    ensemble = manualbp("predict", "--config", config, "--ckpt_path", "last", "--data.predict_path", DIGITS)
    member = manualbp(
        "predict", "--config", config, "--ckpt_path", "last", "--data.predict_path", DIGITS, "--population.member", "1"
    )
    assert ensemble.returncode == 0 and member.returncode == 0, ensemble.stderr[-2000:] + member.stderr[-2000:]
    assert ensemble.stdout != member.stdout  # one member's activations are not the members' average


def test_population_killed_mid_epoch_resumes_bit_identically_with_its_members_dropout_masks_and_l1(tmp_path):
    fast = {
        "population": {"seeds": [0, 1], "eta": [3.0, 0.5], "lmbda": [1.0, 2.0]},
        "model": {"sizes": [784, 30, 10], "dropout": 0.5, "regularization": "l1"},
        "data": {"batch_size": 100, "monitor_test": False},
        "trainer": {"max_epochs": 2, "limit_train_batches": 20, "limit_val_batches": 1},
    }
    straight = write_config(tmp_path, "straight", checkpoint_every=50, **fast)
    killed = write_config(tmp_path, "killed", checkpoint_every=50, **fast)
    edit_config(killed, lambda s: s["trainer"]["callbacks"].append(KILL_AT_STEP | {"init_args": {"step": 130}}))
    assert run_cli(straight).returncode == 0
    assert run_cli(killed).returncode == -signal.SIGKILL
    saved = torch.load(tmp_path / "killed" / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["manualbp_updates"] == 100 and saved["epoch"] == 0  # mid-epoch: 200 steps per epoch
    edit_config(killed, lambda s: s["trainer"]["callbacks"].pop())
    resumed = run_cli(killed, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want, got = checkpoint_state(tmp_path, "straight"), checkpoint_state(tmp_path, "killed")
    assert want.keys() == got.keys()
    for key in [key for key, value in want.items() if isinstance(value, torch.Tensor)]:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize(
    "options, named",
    [
        (["--population.seeds", "[0, 1]", "--population.eta", "[1.0, 2.0, 3.0]"], "population.seeds"),
        (["--population.seeds", "[4, 4]"], "population.seeds"),
        (["--population.eta", "[0.5, 0.0]"], "population.eta"),
    ],
)
def test_bad_population_settings_are_one_error_line_naming_the_setting(options, named):
    done = manualbp("fit", "--config", "experiments/nielsen_ch1.yaml", *options)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("manualbp: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"manualbp: error: {named}"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_existing_configs_still_build_a_single_network_and_the_seeds_config_a_population(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["manualbp"])  # run(args) alone, not pytest's arguments
    for config in sorted((ROOT / "experiments").glob("*.yaml")):
        settings = yaml.safe_load(config.read_text())
        cli = run(["--config", str(config), "--trainer.logger", "false"], run=False)
        assert type(cli.model) is ManualBPClassifier, config.name
        trained = cli.model.population if "population" in settings else cli.model.network
        kind = Population if "population" in settings else LayerNetwork if "layers" in settings["model"] else Network
        assert type(trained) is kind, config.name


def test_a_nan_in_one_member_stops_the_run_naming_the_member_and_the_step(tmp_path):
    config = write_config(tmp_path, checkpoint_every=20, population={"seeds": [0, 1, 2]}, **SHORT)
    edit_config(config, lambda s: s["trainer"].update(max_epochs=1))
    assert run_cli(config).returncode == 0
    last_ckpt = tmp_path / "config" / "last" / "last.ckpt"
    saved = torch.load(last_ckpt, map_location="cpu", weights_only=True)
    saved["state_dict"]["population.bias_2"][1, 0] = float("nan")  # member 1's output neuron 0
    torch.save(saved, last_ckpt)
    resumed = run_cli(config, "--ckpt_path", "last", "--trainer.max_epochs", "2")
    assert resumed.returncode != 0
    step = saved["manualbp_updates"]  # the SGD updates: where the next, diverging, one starts
    assert f"the training cost at step {step} is not finite for member 1 (seed 1, η 3, λ 0): nan" in resumed.stderr
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("manualbp: error:")]
    assert len(errors) == 1 and f"training diverged at step {step} (epoch 1)" in errors[0], resumed.stderr[-2000:]
