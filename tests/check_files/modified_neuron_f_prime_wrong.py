"""Planted mistake: f = tanh at the modified neuron (l = 2, j = 1), but f_prime is not its derivative."""

import numpy as np

MODIFIED_NEURON = (2, 1)  # (l, j): layer l as in the book, row j of z^l


def f(z):
    return np.tanh(z)


def f_prime(z):
    return 1.0 - np.tanh(z)  # the planted mistake: tanh'(z) is 1 − tanh²(z)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class Network:
    def __init__(self, sizes):
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.biases = [np.random.randn(n, 1) for n in sizes[1:]]
        self.weights = [np.random.randn(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]

    def activation_prime(self, z, layer):
        s = sigmoid(z)
        prime = s * (1.0 - s)
        if layer == MODIFIED_NEURON[0]:
            prime[MODIFIED_NEURON[1]] = f_prime(z[MODIFIED_NEURON[1]])
        return prime

    def backprop(self, x, y):
        nabla_b = [None] * len(self.biases)
        nabla_w = [None] * len(self.weights)
        activation, activations, zs = x, [x], []
        for layer, (b, w) in enumerate(zip(self.biases, self.weights), start=2):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            if layer == MODIFIED_NEURON[0]:
                activation[MODIFIED_NEURON[1]] = f(z[MODIFIED_NEURON[1]])
            activations.append(activation)
        delta = (activations[-1] - y) * self.activation_prime(zs[-1], self.num_layers)
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].T)
        for k in range(2, self.num_layers):
            delta = np.dot(self.weights[-k + 1].T, delta) * self.activation_prime(zs[-k], self.num_layers - k + 1)
            nabla_b[-k] = delta
            nabla_w[-k] = np.dot(delta, activations[-k - 1].T)
        return nabla_b, nabla_w
