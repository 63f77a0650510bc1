"""Planted mistake: Σ' as the outer product σ'(z) σ'(z)ᵀ, a full matrix, not the diagonal one."""

import numpy as np


def sigmoid_prime(z):
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 - s)


def sigma_prime_matrix(z):
    return np.dot(sigmoid_prime(z), sigmoid_prime(z).T)


def bp1(nabla_a, z):
    return np.dot(sigma_prime_matrix(z), nabla_a)


def bp2(w_next, delta_next, z):
    return np.dot(sigma_prime_matrix(z), np.dot(w_next.T, delta_next))
