"""Planted mistake: backprop_matrix returns the mean over the mini-batch, where update_mini_batch wants the sum."""

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
        delta = (activations[-1] - y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].T)
        for k in range(2, self.num_layers):
            delta = np.dot(self.weights[-k + 1].T, delta) * sigmoid_prime(zs[-k])
            nabla_b[-k] = delta
            nabla_w[-k] = np.dot(delta, activations[-k - 1].T)
        return nabla_b, nabla_w

    def backprop_matrix(self, X, Y):
        nabla_b = [None] * len(self.biases)
        nabla_w = [None] * len(self.weights)
        activation, activations, zs = X, [X], []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b  # b broadcasts over the columns
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = (activations[-1] - Y) * sigmoid_prime(zs[-1])  # one column of δ per example
        nabla_b[-1] = delta.sum(axis=1, keepdims=True)
        nabla_w[-1] = np.dot(delta, activations[-2].T)  # the sum over examples of δ aᵀ
        for k in range(2, self.num_layers):
            delta = np.dot(self.weights[-k + 1].T, delta) * sigmoid_prime(zs[-k])
            nabla_b[-k] = delta.sum(axis=1, keepdims=True)
            nabla_w[-k] = np.dot(delta, activations[-k - 1].T)
        m = X.shape[1]  # the planted mistake: the mean over the mini-batch, which update_mini_batch takes itself
        return [nb / m for nb in nabla_b], [nw / m for nw in nabla_w]
