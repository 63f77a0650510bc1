"""Planted mistake: BP1's product in the wrong order, (∇ₐC)ᵀ Σ'(z), a row vector where δ is a column."""

import numpy as np


def sigmoid_prime(z):
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 - s)


def sigma_prime_matrix(z):
    return np.diagflat(sigmoid_prime(z))


def bp1(nabla_a, z):
    return np.dot(nabla_a.T, sigma_prime_matrix(z))


def bp2(w_next, delta_next, z):
    return np.dot(sigma_prime_matrix(z), np.dot(w_next.T, delta_next))
