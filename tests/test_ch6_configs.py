"""Chapter 6's networks as ``model.layers`` (torch_manualbp.layer_spec): ManualBPClassifier's fused step and its
autograd path against plain autograd and torch.optim on an equal nn.Conv2d / max_pool2d / nn.Linear model in
float64; the configs through the real CLI (--print_config round trip, one-line errors, one short epoch of every
shipped experiments/ch6_*.yaml, resume, validate on a saved checkpoint)."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import DATA_DIR, ROOT, last, manualbp, metrics, quiet, run_cli, write_config
from torch import nn

from torch_manualbp.cli import main
from torch_manualbp.layer_spec import LayerNetwork, build_layers, check_layers
from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule

CONFIGS = sorted((ROOT / "experiments").glob("ch6_*.yaml"))
TOL = dict(rtol=1e-10, atol=1e-12)
SMALL = [{"conv_pool": [3, 5, 2], "activation": "tanh"}, {"fully_connected": 20, "activation": "relu"}, {"softmax": 10}]
BATCH, MINI, BATCHES, N = 20, 10, 3, 200  # 3 Lightning batches of 2 mini-batches: 6 SGD steps
TORCH_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "linear": lambda z: z}


class PlainNet(nn.Module):
    """The network of ``SMALL`` from torch's own modules: nn.Conv2d, max_pool2d, nn.Linear, F.cross_entropy."""

    def __init__(self, ours: LayerNetwork) -> None:
        super().__init__()
        conv, _, hidden, top = ours.layers
        self.conv = nn.Conv2d(1, 3, 5, dtype=torch.float64)
        self.hidden = nn.Linear(3 * 12 * 12, 20, dtype=torch.float64)
        self.top = nn.Linear(20, 10, dtype=torch.float64)
        with torch.no_grad():  # the classifier's starting weights
            for mine, theirs in ((self.conv, conv), (self.hidden, hidden), (self.top, top)):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)

    def cost(self, x, labels):
        a = torch.tanh(F.max_pool2d(self.conv(x.reshape(-1, 1, 28, 28)), 2))
        a = torch.relu(self.hidden(a.flatten(1)))
        return F.cross_entropy(self.top(a), labels)

    def pairs(self):
        return [
            (self.conv.weight, self.conv.bias),
            (self.hidden.weight, self.hidden.bias),
            (self.top.weight, self.top.bias),
        ]


def _data() -> MNISTDataModule:
    return MNISTDataModule(data_dir=str(DATA_DIR), batch_size=BATCH, seed=2, train_size=N)


def _mini_batches():
    """The training mini-batches the classifier steps through, in order, from a data module of the same seed."""
    data = _data()
    data.setup("fit")
    for b, (x, _, labels) in enumerate(data.train_dataloader()):
        if b == BATCHES:
            return
        for start in range(0, len(x), MINI):
            yield x[start : start + MINI].double(), labels[start : start + MINI]


def _fit_float64(tmp_path, **settings) -> tuple[ManualBPClassifier, PlainNet]:
    torch.manual_seed(0)
    model = ManualBPClassifier(
        layers=SMALL, cost="log_likelihood", mini_batch_size=MINI, training_set_size=N, **settings
    )
    model.double()
    plain = PlainNet(model.network)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=BATCHES, limit_val_batches=0, precision="64-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, _data())
    return model, plain


def _assert_same_parameters(model: ManualBPClassifier, plain: PlainNet, tol=TOL) -> None:
    ours = [(layer.weight, layer.bias) for layer in model.network.layers if not isinstance(layer, nn.Flatten)]
    for (w, b), (w_ref, b_ref) in zip(ours, plain.pairs(), strict=True):
        torch.testing.assert_close(w, w_ref, **tol)
        torch.testing.assert_close(b, b_ref, **tol)


@quiet
def test_the_fused_step_of_a_layers_network_equals_autograd_and_sgd_on_torchs_own_layers_float64(tmp_path, caplog):
    with caplog.at_level("INFO"):
        model, plain = _fit_float64(tmp_path, eta=0.2, lmbda=3.0)
    assert "training with the fused SGD step (SequentialSGD" in caplog.text
    weights = [plain.conv.weight, plain.hidden.weight, plain.top.weight]
    biases = [plain.conv.bias, plain.hidden.bias, plain.top.bias]
    sgd = torch.optim.SGD([{"params": weights, "weight_decay": 3.0 / N}, {"params": biases}], lr=0.2)
    steps = 0
    for x, labels in _mini_batches():
        sgd.zero_grad()
        plain.cost(x, labels).backward()
        sgd.step()
        steps += 1
    assert steps == BATCHES * BATCH // MINI
    moved = (plain.top.weight.abs().sum() > 0).item()  # the softmax layer starts at zero: the steps changed it
    assert moved
    _assert_same_parameters(model, plain)


@quiet
@pytest.mark.parametrize(
    "settings, make",
    [
        ({"eta": 0.2, "momentum": 0.5, "lmbda": 3.0}, "momentum"),
        ({"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.003}}}, "adam"),
    ],
    ids=["sgd_momentum", "adam"],
)
def test_the_autograd_path_of_a_layers_network_equals_torchs_optimizer_on_torchs_own_layers_float64(
    tmp_path, caplog, settings, make
):
    with caplog.at_level("INFO"):
        model, plain = _fit_float64(tmp_path, **settings)
    assert "training through autograd and" in caplog.text
    weights = [plain.conv.weight, plain.hidden.weight, plain.top.weight]
    biases = [plain.conv.bias, plain.hidden.bias, plain.top.bias]
    if make == "momentum":  # the classifier's own SGD: the book's L2 as weight_decay λ/n on the weights alone
        groups = [{"params": weights, "weight_decay": 3.0 / N}, {"params": biases, "weight_decay": 0.0}]
        optimizer = torch.optim.SGD(groups, lr=0.2, momentum=0.5)
    else:
        optimizer = torch.optim.Adam(plain.parameters(), lr=0.003)
    for x, labels in _mini_batches():
        optimizer.zero_grad()
        plain.cost(x, labels).backward()
        optimizer.step()
    # Adam divides each step by sqrt(v): a gradient's last-bit rounding (our BP4's sums in another order) is scaled
    # up where the gradient is small, so 1e-10 absolute there, against SGD's 1e-10 relative
    _assert_same_parameters(model, plain, TOL if make == "momentum" else dict(rtol=1e-10, atol=1e-10))


def test_the_layers_build_network3s_shapes_and_initialisation():
    torch.manual_seed(0)
    layers = build_layers(
        [{"conv_pool": [20, 5, 2]}, {"conv_pool": [40, 5, 2]}, {"fully_connected": 100}, {"softmax": 10}]
    )
    assert [type(m).__name__ for m in layers] == [
        "ConvPool2d",
        "ConvPool2d",
        "Flatten",
        "FullyConnected",
        "FullyConnected",
    ]
    assert (layers[1].in_channels, layers[3].in_features, layers[4].activation.name) == (20, 40 * 4 * 4, "linear")
    assert not layers[4].weight.any() and not layers[4].bias.any()  # network3's SoftmaxLayer starts at zero
    assert abs(layers[3].weight.std().item() - 0.1) < 0.005  # N(0, 1/n_out), n_out = 100 (network3's)
    net = LayerNetwork([{"fully_connected": 30}, {"softmax": 10}])
    assert torch.allclose(net(torch.rand(4, 784)).sum(1), torch.ones(4, dtype=torch.float32))


@pytest.mark.parametrize(
    "layers, words",
    [
        ([{"dense": 100}, {"softmax": 10}], "layers[0] must name one kind of layer (conv_pool,"),
        ([{"conv_pool": [20, 5]}, {"softmax": 10}], "layers[0]: conv_pool takes [feature_maps, kernel_size,"),
        ([{"conv_pool": [20, 5, 5]}, {"softmax": 10}], "layers[0]: a 5 x 5 pool must divide the convolution's 24 x 24"),
        ([{"fully_connected": 100}, {"softmax": 5}], "layers[1]: softmax must have 10 neurons"),
        ([{"fully_connected": 100}], "layers[0]: the last layer must be the output layer"),
        ([{"softmax": 10}, {"softmax": 10}], "layers[0]: the softmax layer is the output layer, the last"),
        ([{"fully_connected": 100, "activation": "swish"}, {"softmax": 10}], "layers[0]: activation must be one of"),
        ([{"fully_connected": 9}, {"conv_pool": [2, 3, 1]}, {"softmax": 10}], "layers[1]: a conv_pool layer takes"),
        ([{"conv_pool": [2, 30, 1]}, {"softmax": 10}], "layers[0]: a 30 x 30 field does not fit the 28 x 28 maps"),
    ],
)  # fmt: skip
def test_bad_layers_are_one_line_naming_the_layer(layers, words):
    with pytest.raises(ValueError) as raised:
        check_layers(layers)
    assert words in str(raised.value) and "\n" not in str(raised.value)


def _config(tmp_path, source, name="config", **sections):
    return write_config(tmp_path, name=name, source=source, **sections)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("manualbp: error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0]


RUNG2 = ROOT / "experiments" / "ch6_rung2_conv20.yaml"


@quiet
@pytest.mark.parametrize(
    "model, words",
    [
        ({"layers": [{"dense": 100}, {"softmax": 10}]}, "model.layers[0] must name one kind of layer"),
        ({"layers": [{"conv_pool": [20, 5]}, {"softmax": 10}]}, "model.layers[0]: conv_pool takes [feature_maps,"),
        ({"layers": [{"conv_pool": [20, 5, 5]}, {"softmax": 10}]}, "model.layers[0]: a 5 x 5 pool must divide"),
        ({"layers": [{"conv_pool": [20, 5, 2]}, {"softmax": 5}]}, "model.layers[1]: softmax must have 10 neurons"),
        ({"sizes": [784, 30, 10]}, "model.sizes=[784, 30, 10] and layers both give the network; give one"),
        ({"cost": "quadratic"}, "model.cost='quadratic': a network of layers ends in the softmax layer"),
        ({"dropout": 0.5}, "model.dropout=0.5 does not apply to a network given as layers"),
        ({"seeds": [0, 1]}, "model.seeds=[0, 1] does not apply to a network given as layers"),
        ({"compile": True}, "model.compile=True does not apply"),
        ({"regularization": "l1", "lmbda": 1.0}, "model.regularization='l1' does not apply"),
        ({"activation": "relu"}, "model.activation='relu' does not apply"),
    ],
)  # fmt: skip
def test_bad_layer_configs_are_one_line_errors_before_anything_is_written(tmp_path, capsys, model, words):
    config = _config(tmp_path, RUNG2, model=model)
    assert main(["fit", "--config", str(config)]) == 2
    line = _one_error_line(capsys)
    assert words in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # nothing written


@quiet
def test_a_callback_that_observes_network_steps_is_refused_beside_layers(tmp_path):
    config = _config(tmp_path, RUNG2, data={"train_size": 100, "batch_size": 50})
    audit = {"class_path": "torch_manualbp.lightning.GradientAudit", "init_args": {"every_n_steps": 1}}
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["callbacks"].append(audit)
    config.write_text(yaml.safe_dump(settings))
    result = run_cli(config, "--trainer.max_epochs", "1")
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.rstrip().splitlines()[-1]
    assert line.startswith("manualbp: error: trainer.callbacks: GradientAudit observe Network's sigmoid layers"), line


def test_a_layers_config_round_trips_through_print_config(tmp_path):
    source = ROOT / "experiments" / "ch6_rung4_relu.yaml"
    config = _config(tmp_path, source)
    printed = manualbp("fit", "--config", config, "--print_config")
    assert printed.returncode == 0, printed.stderr[-2000:]
    model = yaml.safe_load(printed.stdout)["model"]
    assert model["layers"] == yaml.safe_load(source.read_text())["model"]["layers"]
    assert (model["cost"], model["eta"], model["lmbda"], model["sizes"]) == ("log_likelihood", 0.03, 1.0, None)
    again = tmp_path / "printed.yaml"
    again.write_text(printed.stdout)
    reprinted = manualbp("fit", "--config", again, "--print_config")
    assert reprinted.returncode == 0, reprinted.stderr[-2000:]
    assert reprinted.stdout == printed.stdout


def test_there_are_the_six_ladder_configs_each_naming_its_book_number_and_command():
    books = {
        "ch6_rung1_fc100": "97.80%",
        "ch6_rung2_conv20": "98.78%",
        "ch6_rung3_conv20_conv40": "99.06%",
        "ch6_rung4_relu": "99.23%",
        "ch6_rung5_expanded": "99.37%",
        "ch6_rung6_two_fc": "99.43%",
    }
    assert [path.stem for path in CONFIGS] == list(books)
    for path in CONFIGS:
        text, settings = path.read_text(), yaml.safe_load(path.read_text())
        assert f"To run: manualbp fit --config experiments/{path.name}" in text and books[path.stem] in text
        model, data = settings["model"], settings["data"]
        assert (model["mini_batch_size"], settings["trainer"]["max_epochs"], data.get("train_size")) == (10, 60, None)
        relu = path.stem[:9] in ("ch6_rung4", "ch6_rung5", "ch6_rung6")
        assert (model["eta"], model.get("lmbda", 0.0)) == ((0.03, 1.0) if relu else (0.1, 0.0))
        expanded = data.get("expand", False)
        assert expanded == (path.stem[:9] in ("ch6_rung5", "ch6_rung6"))
        # the book's λ/n: network3.py's lmbda 0.1 over its mini-batches, n / 10 of them
        steps = (250_000 if expanded else 50_000) // 10  # network3.py's num_training_batches
        assert not relu or model["lmbda"] / model["training_set_size"] == pytest.approx(0.1 / steps)


@quiet
@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_every_ch6_config_trains_a_short_epoch_through_the_cli(tmp_path, config):
    trainer = {"max_epochs": 1, "limit_val_batches": 0.1}  # 1,000 images of each evaluation (1 is read as 1.0)
    expanded = yaml.safe_load(config.read_text())["data"].get("expand", False)  # 100 images and their 400 shifts
    data, model = {"train_size": 100, "batch_size": 50}, {"training_set_size": 500 if expanded else 100}  # λ/n's n
    short = _config(tmp_path, config, data=data, trainer=trainer, model=model)
    result = run_cli(short)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert re.search(r"Epoch 0: \d+ / 1000 test images; validation \d+\.\d\d%, training cost \d\.\d{4}", out), out[
        -2000:
    ]
    assert "training with the fused SGD step (SequentialSGD" in out


@quiet
def test_two_epochs_equal_one_and_a_resumed_one_and_validate_on_the_checkpoint_repeats_them(tmp_path, capsys):
    data, trainer = {"train_size": 200, "batch_size": 100}, {"limit_val_batches": 0.1}
    straight = _config(tmp_path, RUNG2, "straight", data=data, trainer=trainer)
    resumed = _config(tmp_path, RUNG2, "resumed", data=data, trainer=trainer)
    assert run_cli(straight, "--trainer.max_epochs", "2").returncode == 0
    assert run_cli(resumed, "--trainer.max_epochs", "1").returncode == 0
    again = run_cli(resumed, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert again.returncode == 0, again.stderr[-3000:]
    want, got = metrics(tmp_path, "straight"), metrics(tmp_path, "resumed")
    for key in ("val/accuracy", "val/cost", "test/accuracy", "train/cost"):
        assert last(got, key) == last(want, key), key
    assert len([row for row in want if row.get("val/accuracy")]) == 2
    predicted = manualbp(
        "predict", "--config", straight, "--ckpt_path", "last", "--data.predict_path", ROOT / "experiments" / "digits"
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(re.findall(r"\.png: predicted \d \(top 2 output activations", predicted.stdout)) == 5, predicted.stdout
    # the checkpoint reloaded: validate gives the numbers of the trained model's last epoch
    checkpoint = tmp_path / "straight" / "last" / "last.ckpt"
    model = ManualBPClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    assert isinstance(model.network, LayerNetwork)
    assert model.hparams.layers == yaml.safe_load(RUNG2.read_text())["model"]["layers"]
    trainer = L.Trainer(limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    datamodule = MNISTDataModule(data_dir=str(DATA_DIR), train_size=200, batch_size=100, monitor_test=True)
    (result,) = trainer.validate(model, datamodule, verbose=False)[:1]
    assert result["val/accuracy"] == pytest.approx(last(want, "val/accuracy"), abs=1e-7)
    assert result["val/cost"] == pytest.approx(last(want, "val/cost"), rel=1e-6)


def test_the_engine_rewinds_to_a_step_with_its_gradients_as_autograd_gives_them():
    from torch_manualbp.sequential_engine import SequentialSGD

    torch.manual_seed(3)
    net = LayerNetwork(SMALL, dtype=torch.float64)
    x, labels = torch.rand(30, 784, dtype=torch.float64), torch.randint(0, 10, (30,))
    engine = SequentialSGD(net, 10, lmbda=1.0, n=N)
    start = [p.detach().clone() for p in net.parameters()]
    engine.run(x[:10], labels[:10], 0.3, first_step=0)
    after_first = [p.detach().clone() for p in net.parameters()]
    engine.run(x[10:], labels[10:], 0.3, first_step=1)  # steps 1 and 2
    assert not engine.rewind(3) and engine.rewind(2)
    for p, want in zip(net.parameters(), start, strict=True):
        assert not torch.equal(p, want)  # steps 0 and 1 replayed
    assert engine.rewind(1)
    for p, want in zip(net.parameters(), after_first, strict=True):
        torch.testing.assert_close(p, want, rtol=0, atol=0)  # the parameters before step 1
    plain = PlainNet(net)
    plain.cost(x[10:20], labels[10:20]).backward()
    for (w, b), (w_ref, b_ref) in zip(
        [(m.weight, m.bias) for m in net.layers if not isinstance(m, nn.Flatten)], plain.pairs(), strict=True
    ):
        torch.testing.assert_close(w.grad, w_ref.grad, **TOL)
        torch.testing.assert_close(b.grad, b_ref.grad, **TOL)
    engine.forget()
    assert not engine.rewind(1)
