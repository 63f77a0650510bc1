"""functions_correct.py with BP2 taking σ'(a) for σ'(z)."""

import numpy as np


def sigmoid_prime(z):
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 - s)


def bp1(nabla_a, z):
    return nabla_a * sigmoid_prime(z)


def bp2(w_next, delta_next, z):
    return np.dot(w_next.T, delta_next) * sigmoid_prime(1.0 / (1.0 + np.exp(-z)))


def bp3(delta):
    return delta


def bp4(delta, a_prev):
    return np.dot(delta, a_prev.T)
