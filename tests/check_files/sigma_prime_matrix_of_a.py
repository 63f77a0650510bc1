"""Planted mistake: Σ' built from σ'(a), the sigmoid's derivative evaluated at a = σ(z) instead of at z."""

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigma_prime_matrix(z):
    a = sigmoid(z)
    return np.diagflat(sigmoid(a) * (1.0 - sigmoid(a)))


def bp1(nabla_a, z):
    return np.dot(sigma_prime_matrix(z), nabla_a)


def bp2(w_next, delta_next, z):
    return np.dot(sigma_prime_matrix(z), np.dot(w_next.T, delta_next))
