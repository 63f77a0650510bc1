"""The book's per-example algorithm, an independent reference for the tests (not imported by the package)."""
import numpy as np


def book_backprop(weights, biases, x, y):
    """network.py's backprop, example by example, as the book writes it: column vectors in numpy.

    Returns the per-example gradients of C_x = ½‖y − aᴸ‖² and the per-example δ of each layer.
    """
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))
    activation, activations, zs = x.reshape(-1, 1), [x.reshape(-1, 1)], []
    for w, b in zip(weights, biases):
        z = w @ activation + b.reshape(-1, 1)
        zs.append(z)
        activation = sigmoid(z)
        activations.append(activation)
    sp = lambda z: sigmoid(z) * (1 - sigmoid(z))
    delta = (activations[-1] - y.reshape(-1, 1)) * sp(zs[-1])
    deltas, nabla_w, nabla_b = [delta], [delta @ activations[-2].T], [delta]
    for l in range(2, len(weights) + 1):
        delta = (weights[-l + 1].T @ delta) * sp(zs[-l])
        deltas.insert(0, delta)
        nabla_w.insert(0, delta @ activations[-l - 1].T)
        nabla_b.insert(0, delta)
    return nabla_w, [nb.ravel() for nb in nabla_b], [d.ravel() for d in deltas]
