"""Planted mistake in the linear-neurons problem: the forward pass is linear (a = z), but BP1 and BP2 still multiply
by the sigmoid's σ'(z), copied over from network.py."""

import numpy as np


def sigmoid_prime(z):
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 - s)


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
            activation = z
            activations.append(activation)
        delta = (activations[-1] - y) * sigmoid_prime(zs[-1])  # the mistake: σ'(z) is 1 for linear neurons
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].T)
        for k in range(2, self.num_layers):
            delta = np.dot(self.weights[-k + 1].T, delta) * sigmoid_prime(zs[-k])
            nabla_b[-k] = delta
            nabla_w[-k] = np.dot(delta, activations[-k - 1].T)
        return nabla_b, nabla_w
