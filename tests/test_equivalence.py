"""One harness for the engine's claim: every backend × cost × regularisation × dropout × (a network, a population)
× hidden activation makes the book's per-example update, in float64.

The reference is the book's algorithm written here in numpy, one example at a time as column vectors: feedforward
(removed hidden neurons output 0), BP1 for the cost, BP2 layer by layer (a removed neuron's δ is 0), BP3 and BP4
summed over the mini-batch, then the book's step with L2's (1 − ηλ/n) or L1's −(ηλ/n) sgn(w) on the weights. The
dropout masks are the one input taken from the package (``dropout_masks`` from the engine's generator state): which
neurons a step removes is chance, not an equation under test. Nothing else of the package computes the reference.

The compiled backend is checked on three settings rather than all (each new setting is a compile, 10-30 s).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from torch_manualbp import MiniBatchSGD, Network, Population
from torch_manualbp.step import dropout_masks

SIZES = [6, 5, 4, 3]  # two hidden layers: BP2 and dropout act twice
MINI_BATCH, ROWS, N = 4, 14, 20  # 14 rows: three steps of 4, then one of 2 (a ragged last mini-batch)
ETAS, LMBDAS = [0.7, 0.3, 1.5], [0.3, 0.0, 2.0]  # the members' own; a network takes the first


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1.0 - sigmoid(z))


#: the hidden layers' f and f', written here: (f, f')
HIDDEN = {
    "sigmoid": (sigmoid, sigmoid_prime),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(z.dtype)),
    "linear": (lambda z: z, np.ones_like),
}


def book_block(weights, biases, x, y, eta, lmbda, cost, regularization, masks, activation="sigmoid"):
    """The book's SGD over the block's mini-batches, example by example; returns each step's cost C₀ before it."""
    f, f_prime = HIDDEN[activation]
    costs = []
    for step, start in enumerate(range(0, len(x), MINI_BATCH)):
        batch = list(zip(x[start : start + MINI_BATCH], y[start : start + MINI_BATCH]))
        nabla_w = [np.zeros_like(w) for w in weights]
        nabla_b = [np.zeros_like(b) for b in biases]
        total = 0.0
        for x_col, y_col in ((xi.reshape(-1, 1), yi.reshape(-1, 1)) for xi, yi in batch):
            activations, zs = [x_col], []
            for l, (w, b) in enumerate(zip(weights, biases)):
                z = w @ activations[-1] + b.reshape(-1, 1)
                zs.append(z)
                if l < len(weights) - 1:  # a hidden layer: f, its removed neurons output 0
                    mask = 1.0 if masks is None else masks[l][step].reshape(-1, 1)
                    activations.append(f(z) * mask)
                elif cost == "log_likelihood":  # the softmax output layer
                    e = np.exp(z - z.max())
                    activations.append(e / e.sum())
                else:
                    activations.append(sigmoid(z))
            a = activations[-1]
            if cost == "quadratic":
                total += 0.5 * float(((a - y_col) ** 2).sum())
                delta = (a - y_col) * sigmoid_prime(zs[-1])  # (BP1)
            elif cost == "cross_entropy":
                total += float(-(y_col * np.log(a) + (1 - y_col) * np.log(1 - a)).sum())
                delta = a - y_col  # (BP1) σ' cancels
            else:
                zL = zs[-1]  # −ln a_y = ln Σ_k e^{z_k} − z_y, without ln 0 when a_y underflows
                total += float(zL.max() + np.log(np.exp(zL - zL.max()).sum()) - zL[y_col.argmax()].sum())
                delta = a - y_col  # (BP1) for softmax and the log-likelihood
            deltas = [delta]
            for l in range(len(weights) - 2, -1, -1):  # (BP2), down the hidden layers
                mask = 1.0 if masks is None else masks[l][step].reshape(-1, 1)
                deltas.insert(0, (weights[l + 1].T @ deltas[0]) * f_prime(zs[l]) * mask)
            for l, delta in enumerate(deltas):
                nabla_b[l] += delta.ravel()  # (BP3)
                nabla_w[l] += delta @ activations[l].T  # (BP4)
        m = len(batch)
        costs.append(total / m)
        for l in range(len(weights)):
            if regularization == "l2":
                weights[l] = (1 - eta * lmbda / N) * weights[l] - (eta / m) * nabla_w[l]
            else:
                weights[l] = weights[l] - (eta * lmbda / N) * np.sign(weights[l]) - (eta / m) * nabla_w[l]
            biases[l] = biases[l] - (eta / m) * nabla_b[l]
    return costs


def book_masks(state, p):
    """The masks the engine's generator draws from ``state``, one set per step, as (steps, H) per hidden layer."""
    generator = torch.Generator()
    generator.set_state(state.clone())
    steps = -(-ROWS // MINI_BATCH)
    drawn = [dropout_masks(SIZES, p, torch.empty(0, dtype=torch.float64), generator) for _ in range(steps)]
    return [np.stack([step[l].numpy() for step in drawn]) for l in range(len(SIZES) - 2)]


def as_numpy(network: Network):
    return [l.weight.detach().numpy().copy() for l in network.layers], [
        l.bias.detach().numpy().copy() for l in network.layers
    ]


SETTINGS = list(
    itertools.product(
        ["eager", "native"],
        ["quadratic", "cross_entropy", "log_likelihood"],
        ["none", "l2", "l1"],
        [0.0, 0.5],
        [1, 3],
        ["sigmoid"],
    )
)
# the other activations (on "native" the engine says the loop has sigmoid neurons only, and steps eagerly)
SETTINGS += list(
    itertools.product(
        ["eager", "native"],
        ["quadratic", "log_likelihood"],
        ["none", "l1"],
        [0.0, 0.5],
        [1, 3],
        ["tanh", "relu", "linear"],
    )
)
SETTINGS += [
    ("compiled", "quadratic", "none", 0.0, 1, "sigmoid"),
    ("compiled", "cross_entropy", "l1", 0.5, 3, "sigmoid"),
    ("compiled", "log_likelihood", "l2", 0.0, 3, "sigmoid"),
    ("compiled", "cross_entropy", "l2", 0.5, 1, "relu"),
]


@pytest.mark.parametrize("backend, cost, regularization, dropout, members, activation", SETTINGS)
def test_the_engine_makes_the_books_per_example_updates_float64(
    backend, cost, regularization, dropout, members, activation
):
    torch.manual_seed(len(SETTINGS))
    kind = {"cost": cost, "init": "normal", "dtype": torch.float64, "activation": activation}
    networks = [Network(SIZES, **kind) for _ in range(members)]
    start = [as_numpy(network) for network in networks]
    x = torch.rand(ROWS, SIZES[0], dtype=torch.float64)
    labels = torch.randint(0, SIZES[-1], (ROWS,))
    y = np.eye(SIZES[-1])[labels.numpy()]
    lmbdas = [0.0] * members if regularization == "none" else LMBDAS[:members]
    reg = "l2" if regularization == "none" else regularization
    model = Population(networks) if members > 1 else networks[0]
    lmbda, eta = (lmbdas, ETAS[:members]) if members > 1 else (lmbdas[0], ETAS[0])
    # compiled: the first three steps in one compiled call, the ragged fourth eagerly
    sgd = MiniBatchSGD(model, MINI_BATCH, lmbda, N, backend, steps_per_call=3, regularization=reg, dropout=dropout)
    states = sgd.generator_state() if dropout else None
    states = None if states is None else (states if members > 1 else states.unsqueeze(0))
    costs = sgd.run(x, labels, eta)
    assert costs.shape == ((4, members) if members > 1 else (4,))
    costs = costs.reshape(4, members)
    for k in range(members):
        weights, biases = start[k]
        masks = None if states is None else book_masks(states[k], dropout)
        want = book_block(weights, biases, x.numpy(), y, ETAS[k], lmbdas[k], cost, reg, masks, activation)
        np.testing.assert_allclose(costs[:, k].numpy(), want, rtol=1e-10, atol=1e-12)
        got_w, got_b = population_member(model, k) if members > 1 else as_numpy(model)
        for got, expected in zip(got_w + got_b, weights + biases):
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def population_member(population: Population, k: int):
    weights, biases = population.member_parameters(k)
    return [w.detach().numpy() for w in weights], [b.detach().numpy() for b in biases]
