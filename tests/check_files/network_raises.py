"""The correct network_correct.py with one planted mistake: an exception inside backprop."""

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1.0 - sigmoid(z))


class Network:
    def __init__(self, sizes):
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.biases = [np.random.randn(n, 1) for n in sizes[1:]]
        self.weights = [np.random.randn(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]

    def backprop(self, x, y):
        nabla_b = [None] * len(self.biases)
        nabla_w = [None] * len(self.weights)
        activation, activations, zs = x, [x], []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = (activations[-1] - y) * sigmoid_prime(zs[-1])  # BP1
        nabla_b[-1] = delta  # BP3
        raise RuntimeError("student gave up")
        nabla_w[-1] = np.dot(delta, activations[-2].T)  # BP4
        for k in range(2, self.num_layers):
            delta = np.dot(self.weights[-k + 1].T, delta) * sigmoid_prime(zs[-k])  # BP2
            nabla_b[-k] = delta  # BP3
            nabla_w[-k] = np.dot(delta, activations[-k - 1].T)  # BP4
        return nabla_b, nabla_w
