"""Chapter 6's networks as ``model.layers`` (torch_manualbp.layer_spec): ManualBPClassifier's fused step and its
autograd path against plain autograd and torch.optim on an equal nn.Conv2d / max_pool2d / nn.Linear model in
float64, with network3's dropout too (the masks drawn as the engine documents it, evaluation by the weights scaled by
1 - p); the configs through the real CLI (--print_config round trip, one-line errors, one short epoch of every
shipped experiments/ch6_*.yaml, resume, a dropout run killed mid-epoch and resumed, validate on a saved
checkpoint)."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import (
    DATA_DIR,
    ROOT,
    edit_config,
    final_weights,
    last,
    manualbp,
    metrics,
    one_error_line,
    quiet,
    run_cli,
    write_config,
)
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
        ({"dropout": 0.5}, "model.dropout=0.5 does not apply to a network given as layers: set a fully_connected"),
        ({"layers": [{"conv_pool": [20, 5, 2], "dropout": 0.5}, {"softmax": 10}]},
         "model.layers[0].dropout=0.5: network3.py's conv-pool layers have no dropout"),
        ({"layers": [{"conv_pool": [20, 5, 2]}, {"softmax": 10, "dropout": 1.0}]},
         "model.layers[1].dropout must be a fraction in [0, 1) of the layer's inputs to drop, got 1.0"),
        ({"layers": [{"fully_connected": 100, "dropout": -0.1}, {"softmax": 10}]},
         "model.layers[0].dropout must be a fraction in [0, 1)"),
        ({"layers": [{"fully_connected": 100, "dropout": "half"}, {"softmax": 10}]},
         "model.layers[0].dropout must be a number, the fraction of the layer's inputs dropped, got 'half'"),
        ({"layers": [{"fully_connected": 100, "dropout": 0.5}, {"softmax": 10}], "momentum": 0.5},
         "model.layers[0].dropout=0.5 is applied by the fused SGD step only, and momentum=0.5 trains the network"),
        ({"seeds": [0, 1]}, "model.seeds=[0, 1] does not apply to a network given as layers"),
        ({"compile": True}, "model.compile=True does not apply"),
        ({"regularization": "l1", "lmbda": 1.0}, "model.regularization='l1' does not apply"),
        ({"activation": "relu"}, "model.activation='relu' does not apply"),
    ],
)  # fmt: skip
def test_bad_layer_configs_are_one_line_errors_before_anything_is_written(tmp_path, capsys, model, words):
    config = _config(tmp_path, RUNG2, model=model)
    assert main(["fit", "--config", str(config)]) == 2
    line = one_error_line(capsys)
    assert words in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # nothing written


@quiet
def test_layer_dropout_on_a_run_that_goes_through_autograd_is_one_line_at_the_start(tmp_path, capsys):
    rung7 = ROOT / "experiments" / "ch6_rung7_dropout.yaml"
    config = _config(tmp_path, rung7, data={"train_size": 100, "expand": False}, trainer={"max_epochs": 1})
    assert main(["fit", "--config", str(config), "--trainer.precision", "bf16-mixed"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("manualbp: error: model.layers[2].dropout=0.5 and model.layers[3].dropout=0.5"), line
    assert "is applied by the fused SGD step only, and this run goes through autograd (precision=bf16-mixed" in line


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


def test_there_are_the_seven_ladder_configs_each_naming_its_book_number_and_command():
    books = {
        "ch6_rung1_fc100": "97.80%",
        "ch6_rung2_conv20": "98.78%",
        "ch6_rung3_conv20_conv40": "99.06%",
        "ch6_rung4_relu": "99.23%",
        "ch6_rung5_expanded": "99.37%",
        "ch6_rung6_two_fc": "99.43%",
        "ch6_rung7_dropout": "99.60%",
    }
    assert [path.stem for path in CONFIGS] == list(books)
    for path in CONFIGS:
        text, settings = path.read_text(), yaml.safe_load(path.read_text())
        assert f"To run: manualbp fit --config experiments/{path.name}" in text and books[path.stem] in text
        model, data = settings["model"], settings["data"]
        rung7 = path.stem[:9] == "ch6_rung7"  # 40 epochs, no L2: the dropout does the regularising
        epochs = 40 if rung7 else 60
        assert (model["mini_batch_size"], settings["trainer"]["max_epochs"], data.get("train_size")) == (
            10,
            epochs,
            None,
        )
        relu = path.stem[:9] in ("ch6_rung4", "ch6_rung5", "ch6_rung6")
        assert (model["eta"], model.get("lmbda", 0.0)) == (
            (0.03, 1.0) if relu else (0.03, 0.0) if rung7 else (0.1, 0.0)
        )
        expanded = data.get("expand", False)
        assert expanded == (path.stem[:9] in ("ch6_rung5", "ch6_rung6", "ch6_rung7"))
        dropouts = [layer.get("dropout", 0.0) for layer in model["layers"]]
        assert dropouts == ([0.0, 0.0, 0.5, 0.5, 0.5] if rung7 else [0.0] * len(dropouts))
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


DROPOUT_SMALL = [
    {"conv_pool": [3, 5, 2], "activation": "tanh"},
    {"fully_connected": 20, "activation": "relu", "dropout": 0.3},
    {"softmax": 10, "dropout": 0.5},
]


def _scaled_plain(ours: LayerNetwork) -> PlainNet:
    """``PlainNet`` with network3's evaluation weights: each dropout layer's weights times 1 - p (0.3, 0.5)."""
    plain = PlainNet(ours)
    with torch.no_grad():
        plain.hidden.weight.mul_(1 - 0.3)
        plain.top.weight.mul_(1 - 0.5)
    return plain


def test_a_dropout_networks_forward_and_evaluation_are_the_scaled_weights_forward_float64():
    torch.manual_seed(7)
    net = LayerNetwork(DROPOUT_SMALL, dtype=torch.float64)
    assert net.dropouts == (0.0, 0.0, 0.3, 0.5)
    with torch.no_grad():
        net.layers[3].weight.normal_()  # the softmax layer starts at zero: give it weights to scale
    plain = _scaled_plain(net)
    x, labels = torch.rand(8, 784, dtype=torch.float64), torch.randint(0, 10, (8,))
    with torch.no_grad():
        a = torch.tanh(F.max_pool2d(plain.conv(x.reshape(-1, 1, 28, 28)), 2))
        z = plain.top(torch.relu(plain.hidden(a.flatten(1))))
    torch.testing.assert_close(net(x), z.softmax(1), **TOL)
    output, cost = net.output_and_cost(x, labels)
    torch.testing.assert_close(output, z.softmax(1), **TOL)
    torch.testing.assert_close(cost, F.cross_entropy(z, labels), **TOL)
    unscaled = PlainNet(net)
    with torch.no_grad():
        z_unscaled = unscaled.top(torch.relu(unscaled.hidden(a.flatten(1))))
    assert not torch.allclose(z_unscaled, z)  # the scaling matters
    with pytest.raises(ValueError, match=r"^masks: this network drops its layers' inputs in training"):
        net.cost(x, labels)  # a training cost needs the step's masks


@quiet
def test_validate_and_forward_of_a_dropout_classifier_use_the_scaled_weights(tmp_path):
    torch.manual_seed(8)
    model = ManualBPClassifier(layers=DROPOUT_SMALL, cost="log_likelihood", eta=0.1)
    model.double()
    with torch.no_grad():
        model.network.layers[3].weight.normal_()
    plain = _scaled_plain(model.network)
    data = MNISTDataModule(data_dir=str(DATA_DIR), train_size=100, batch_size=50, eval_batch_size=200)
    trainer = L.Trainer(
        limit_val_batches=1, precision="64-true", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    (result,) = trainer.validate(model, data, verbose=False)
    x, _, labels = next(iter(data.val_dataloader()))
    x = x.double()
    with torch.no_grad():
        z = plain.top(
            torch.relu(plain.hidden(torch.tanh(F.max_pool2d(plain.conv(x.reshape(-1, 1, 28, 28)), 2)).flatten(1)))
        )
    assert result["val/cost"] == pytest.approx(F.cross_entropy(z, labels).item(), rel=1e-10)
    assert result["val/accuracy"] == pytest.approx((z.argmax(1) == labels).double().mean().item(), abs=1e-7)
    torch.testing.assert_close(model(x[:5]), z[:5].softmax(1), **TOL)


def _documented_masks(state: torch.Tensor, steps: int, rows: int, dtype=torch.float64) -> list[tuple]:
    """The masks the engine documents it draws from a generator in ``state``: for each step in order, for each
    dropout layer of DROPOUT_SMALL (inputs 3*12*12 at p 0.3, then 20 at p 0.5), ``bernoulli_(1 - p)`` of
    (rows, inputs)."""
    generator = torch.Generator()
    generator.set_state(state)
    return [
        tuple(
            torch.empty(rows, n, dtype=dtype).bernoulli_(1 - p, generator=generator) for n, p in ((432, 0.3), (20, 0.5))
        )
        for _ in range(steps)
    ]


def _plain_dropout_cost(plain: PlainNet, x, labels, masks):
    """PlainNet's training cost with the masks on the fully connected and the softmax layers' inputs."""
    a = torch.tanh(F.max_pool2d(plain.conv(x.reshape(-1, 1, 28, 28)), 2)).flatten(1)
    a = torch.relu(plain.hidden(a * masks[0]))
    return F.cross_entropy(plain.top(a * masks[1]), labels)


@quiet
def test_fused_dropout_training_equals_autograd_and_sgd_with_the_engines_masks_float64(tmp_path, caplog):
    torch.manual_seed(0)
    model = ManualBPClassifier(
        layers=DROPOUT_SMALL, cost="log_likelihood", mini_batch_size=MINI, training_set_size=N, eta=0.2, lmbda=3.0
    )
    model.double()
    plain = PlainNet(model.network)
    masks = _documented_masks(model.sgd.generator_state(), BATCHES * BATCH // MINI, MINI)
    assert all(0 < m.sum() < m.numel() for step in masks for m in step)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=BATCHES, limit_val_batches=0, precision="64-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with caplog.at_level("INFO"):
        trainer.fit(model, _data())
    assert "training with the fused SGD step (SequentialSGD" in caplog.text
    weights = [plain.conv.weight, plain.hidden.weight, plain.top.weight]
    biases = [plain.conv.bias, plain.hidden.bias, plain.top.bias]
    sgd = torch.optim.SGD([{"params": weights, "weight_decay": 3.0 / N}, {"params": biases}], lr=0.2)
    for (x, labels), step_masks in zip(_mini_batches(), masks, strict=True):
        sgd.zero_grad()
        _plain_dropout_cost(plain, x, labels, step_masks).backward()
        sgd.step()
    _assert_same_parameters(model, plain)


def test_the_dropout_engine_rewinds_with_its_masks_and_its_generator_state_replays_them():
    from torch_manualbp.sequential_engine import SequentialSGD

    torch.manual_seed(9)
    net = LayerNetwork(DROPOUT_SMALL, dtype=torch.float64)
    engine = SequentialSGD(net, 10)
    x, labels = torch.rand(30, 784, dtype=torch.float64), torch.randint(0, 10, (30,))
    masks = _documented_masks(engine.generator_state(), 3, 10)
    plain = PlainNet(net)
    engine.run(x, labels, 0.3, first_step=0)  # steps 0, 1, 2
    assert engine.rewind(1)  # the parameters after step 0, the gradients of step 1 with its masks
    _plain_dropout_cost(plain, x[:10], labels[:10], masks[0]).backward()
    with torch.no_grad():
        for p in plain.parameters():
            p -= 0.3 * p.grad
            p.grad = None
    _plain_dropout_cost(plain, x[10:20], labels[10:20], masks[1]).backward()
    ours = [(m.weight, m.bias) for m in net.layers if not isinstance(m, nn.Flatten)]
    for (w, b), (w_ref, b_ref) in zip(ours, plain.pairs(), strict=True):
        torch.testing.assert_close(w, w_ref, **TOL)
        torch.testing.assert_close(w.grad, w_ref.grad, **TOL)
        torch.testing.assert_close(b.grad, b_ref.grad, **TOL)
    # a checkpoint's generator state: a second engine restored to it draws the masks the first one draws next
    state, before = engine.generator_state(), [p.detach().clone() for p in net.parameters()]
    engine.run(x, labels, 0.3, first_step=3)
    after = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p, saved in zip(net.parameters(), before):
            p.copy_(saved)
    torch.manual_seed(10)  # another seed: the state restored, not the seed, decides the masks
    again = SequentialSGD(net, 10)
    again.set_generator_state(state)
    again.run(x, labels, 0.3, first_step=3)
    for p, want in zip(net.parameters(), after, strict=True):
        assert torch.equal(p, want)


# 10 updates a batch, 40 an epoch, 80 the run: last.ckpt at 20, 40, 60 and 80, the run's last update (one that
# every_n_train_steps does not divide would be the last.ckpt's); the killed run's last is 60, in the middle of epoch 1
RESUME_EVERY, KILL_AT = 20, 70
DROPOUT_RUN = {
    "model": {"layers": DROPOUT_SMALL, "eta": 0.1, "training_set_size": 400},
    "data": {"train_size": 400, "batch_size": 100, "expand": False},
    "trainer": {"max_epochs": 2, "limit_val_batches": 1},
}


def _dropout_run_config(tmp_path, name: str):
    """Rung 7's config made small (DROPOUT_RUN), last.ckpt every RESUME_EVERY updates instead of every epoch."""
    rung7 = ROOT / "experiments" / "ch6_rung7_dropout.yaml"
    config = write_config(tmp_path, name, rung7, checkpoint_every=RESUME_EVERY, **DROPOUT_RUN)
    edit_config(config, lambda s: s["trainer"]["callbacks"][1]["init_args"].pop("every_n_epochs"))
    return config


@quiet
def test_a_layers_dropout_run_killed_mid_epoch_and_resumed_ends_with_the_uninterrupted_runs_weights(tmp_path):
    straight, killed = (_dropout_run_config(tmp_path, name) for name in ("straight", "killed"))
    result = run_cli(straight)
    assert result.returncode == 0, result.stderr[-3000:]
    want = final_weights(tmp_path, "straight")
    assert torch.load(tmp_path / "straight" / "last" / "last.ckpt", weights_only=True)["manualbp_updates"] == 80
    killer = {"class_path": "kill_at_step.KillAtStep", "init_args": {"step": KILL_AT, "signal_name": "SIGKILL"}}
    edit_config(killed, lambda s: s["trainer"]["callbacks"].append(killer))
    assert run_cli(killed).returncode != 0
    saved = torch.load(tmp_path / "killed" / "last" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["manualbp_updates"] == 60  # mid-epoch 1
    assert saved["manualbp_dropout_generator"].dtype == torch.uint8  # where the masks' generator stood
    edit_config(killed, lambda s: s["trainer"]["callbacks"].pop())
    resumed = run_cli(killed, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = final_weights(tmp_path, "killed")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
