"""A student's answer to the chapter's problem "backpropagation with linear neurons": σ(z) = z throughout, so
σ'(z) = 1 and BP1/BP2 lose their σ' factor."""

import numpy as np


class Network:
    def __init__(self, sizes):
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.biases = [np.random.randn(n, 1) for n in sizes[1:]]
        self.weights = [np.random.randn(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]

    def backprop(self, x, y):
        nabla_b = [None] * len(self.biases)
        nabla_w = [None] * len(self.weights)
        activation, activations = x, [x]
        for b, w in zip(self.biases, self.weights):
            activation = np.dot(w, activation) + b  # a = σ(z) = z
            activations.append(activation)
        delta = activations[-1] - y  # BP1 with σ'(z) = 1
        nabla_b[-1] = delta  # BP3
        nabla_w[-1] = np.dot(delta, activations[-2].T)  # BP4
        for k in range(2, self.num_layers):
            delta = np.dot(self.weights[-k + 1].T, delta)  # BP2 with σ'(z) = 1
            nabla_b[-k] = delta  # BP3
            nabla_w[-k] = np.dot(delta, activations[-k - 1].T)  # BP4
        return nabla_b, nabla_w
