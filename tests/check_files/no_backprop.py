"""A student file with neither Network nor the bp functions."""


def bp1(nabla_a, z):
    return nabla_a
