"""A student's answer to the chapter's problem "alternate presentation of the equations of backpropagation": BP1 and
BP2 with Σ'(z), the square matrix whose diagonal holds σ'(z) and whose other entries are zero."""

import numpy as np


def sigmoid_prime(z):
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 - s)


def sigma_prime_matrix(z):
    return np.diagflat(sigmoid_prime(z))


def bp1(nabla_a, z):
    return np.dot(sigma_prime_matrix(z), nabla_a)


def bp2(w_next, delta_next, z):
    return np.dot(sigma_prime_matrix(z), np.dot(w_next.T, delta_next))
