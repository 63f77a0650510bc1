"""ManualBPClassifier with chapter 3's cross-entropy cost and the book's L2 regularisation, against the book's
update written out with plain autograd over the same mini-batches."""

import lightning as L
import pytest
import torch
from conftest import DATA_DIR

from torch_manualbp.lightning import ManualBPClassifier, MNISTDataModule
from torch_manualbp.testing.reference import autograd_cost


def test_training_equals_the_books_regularised_cross_entropy_update_over_the_same_batches(tmp_path):
    data = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=10, seed=3)
    data.setup("fit")
    eta, lmbda, n = 0.5, 5.0, 1000  # a small n, so that the decay 1 − ηλ/n = 0.9975 per step shows in 100 steps
    torch.manual_seed(0)
    model = ManualBPClassifier(
        [784, 30, 10], eta=eta, cost="cross_entropy", lmbda=lmbda, training_set_size=n, init="normal"
    )
    params = [p.detach().clone() for p in model.network.parameters()]
    # network2.py's step with plain autograd: W → (1 − ηλ/n) W − η ∂C₀/∂W, b → b − η ∂C₀/∂b, C₀ the cross-entropy.
    for step, (x, y, _) in enumerate(data.train_dataloader()):
        if step == 100:
            break
        leaves = [p.requires_grad_() for p in params]
        cost = autograd_cost(leaves, x, y, "cross_entropy")
        grads = torch.autograd.grad(cost, leaves)
        with torch.no_grad():
            params = [
                (1 - eta * lmbda / n) * p - eta * g if p.ndim == 2 else p - eta * g for p, g in zip(leaves, grads)
            ]
    trainer = L.Trainer(
        max_steps=100, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, data)
    for got, want in zip(model.network.parameters(), params):
        torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-5)


def test_validation_cost_is_the_cross_entropy_of_the_validation_images(tmp_path):
    data = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=10)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=20, limit_val_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    model = ManualBPClassifier([784, 30, 10], eta=0.5, cost="cross_entropy", init="normal")
    trainer.fit(model, data)
    x, y, _ = (t[:2000] for t in data.splits["val"])  # the two validation batches of 1,000
    net = model.network
    with torch.no_grad():
        want = autograd_cost(net.parameters(), x, y, "cross_entropy")
    torch.testing.assert_close(trainer.callback_metrics["val/cost"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"cost": "log_loss"}, ValueError, "cost must be one of"),
        ({"lmbda": -5.0}, ValueError, "lmbda must be a finite number >= 0"),
        ({"lmbda": 5.0, "training_set_size": 0}, ValueError, "n must be the training-set size"),
        ({"lmbda": 5.0, "weight_decay": 1e-4}, ValueError, "lmbda .* or weight_decay"),
    ],
)
def test_bad_cost_or_regularisation_raises_naming_the_argument(kwargs, error, words):
    with pytest.raises(error, match=words):
        ManualBPClassifier(**kwargs)


def test_the_books_lmbda_decays_the_weights_by_lmbda_over_n_and_leaves_the_biases_alone():
    model = ManualBPClassifier([784, 30, 10], cost="cross_entropy", lmbda=5.0, training_set_size=50_000)
    weights_group, biases_group = model.configure_optimizers().param_groups
    assert weights_group["weight_decay"] == 5.0 / 50_000 and biases_group["weight_decay"] == 0.0
    assert [p.ndim for p in weights_group["params"]] == [2, 2] and [p.ndim for p in biases_group["params"]] == [1, 1]


@pytest.mark.parametrize("regularization", ["l2", "l1"])
def test_the_evaluation_cost_is_network2s_total_cost_with_its_lambda_term_over_the_images_evaluated(
    tmp_path, regularization
):
    # network2.py's total_cost(data, lmbda): C₀ over the data + 0.5 (λ / len(data)) Σ‖w‖², the weights only; chapter
    # 3's L1 cost: + (λ / n) Σ|w|. val/cost0 keeps C₀ alone.
    data = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=100)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=5, limit_val_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    lmbdas = [5.0, 0.5]
    model = ManualBPClassifier(
        [784, 30, 10], eta=0.5, cost="cross_entropy", lmbda=lmbdas, seeds=[0, 1], regularization=regularization
    )
    trainer.fit(model, data)
    x, y, _ = (t[:2000] for t in data.splits["val"])  # the two validation batches of 1,000
    metrics = trainer.callback_metrics
    costs = []
    for k, lmbda in enumerate(lmbdas):
        net = model.population.network(k)  # member k's parameters, copied
        weights = [layer.weight for layer in net.layers]
        with torch.no_grad():
            c0 = autograd_cost(net.parameters(), x, y, "cross_entropy")
            size = sum(
                (w.abs().sum() for w in weights) if regularization == "l1" else (0.5 * (w**2).sum() for w in weights)
            )
            want = c0 + lmbda * size / len(x)
        torch.testing.assert_close(metrics[f"val/cost0/member{k}"], c0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(metrics[f"val/cost/member{k}"], want, rtol=1e-5, atol=1e-5)
        costs.append(want)
    torch.testing.assert_close(metrics["val/cost"], torch.stack(costs).mean(), rtol=1e-5, atol=1e-5)
