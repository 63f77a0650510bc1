"""The check of a ``network.py``-shaped file: its ``Network.backprop`` (or the linear exercise's, or one with a
modified neuron) run on the cases and compared with the true gradients, and the cause of a wrong δ named."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import CASE_SIZES, _close, _sigmoid_prime, _Unusable, _worst


@dataclass
class _ModifiedNeuron:
    """The neuron of the modified-neuron exercise: row ``row`` of layer ``layer`` (the book's l) has f for σ; per
    case, f(z) there (the student's f) and its slope f'(z) by a central difference of the student's f."""

    layer: int
    row: int
    value: dict
    slope: dict

    def prime(self, c: int, i: int, z):
        """σ'(z) of layer index ``i`` with f'(z) at the modified neuron."""
        prime = _sigmoid_prime(z)
        if i == self.layer - 2:
            prime[self.row] = self.slope[c]
        return prime


def _truth(cases: dict, c: int, linear: bool = False, modified: _ModifiedNeuron | None = None):
    """z, a (a[0] = x) and δ of case ``c``, δ ≡ ∂C/∂z by torch autograd in float64; ``linear``: σ(z) = z;
    ``modified``: f at one neuron, entered as its value plus its slope times z's deviation, so that autograd carries
    the slope found from the student's f, not their f_prime."""
    n = len(cases[f"{c}_sizes"]) - 1
    a = [torch.tensor(cases[f"{c}_x"])]
    zs = []
    for i in range(n):
        w = torch.tensor(cases[f"{c}_w{i}"], requires_grad=True)
        z = w @ a[-1] + torch.tensor(cases[f"{c}_b{i}"])
        z.retain_grad()
        zs.append(z)
        if modified is not None and i == modified.layer - 2:
            row = torch.zeros_like(z)
            row[modified.row] = 1.0
            f_z = modified.value[c] + modified.slope[c] * (z - z.detach())
            a.append(torch.sigmoid(z) * (1.0 - row) + f_z * row)
        else:
            a.append(z if linear else torch.sigmoid(z))
    (0.5 * ((a[-1] - torch.tensor(cases[f"{c}_y"])) ** 2).sum()).backward()
    return [z.detach().numpy() for z in zs], [t.detach().numpy() for t in a], [z.grad.numpy() for z in zs]


def _delta_cause(got, g, z, a, linear: bool = False, modified_prime=None) -> str:
    """The common slip that ``got`` matches, for δ = g ⊙ σ'(z) (δ = g for linear neurons; ``modified_prime``: σ'(z)
    with f'(z) at the modified neuron, for its layer)."""
    if modified_prime is not None:
        candidates = {
            "σ'(z) used at the modified neuron, where f'(z) belongs": g * _sigmoid_prime(z),
            "a sign flip (−δ)": -g * modified_prime,
        }
    elif linear:
        candidates = {
            "the sigmoid's σ'(z) kept: for σ(z) = z, σ'(z) = 1": g * _sigmoid_prime(z),
            "a sign flip (−δ)": -g,
        }
    else:
        candidates = {
            "σ'(a) used for σ'(z): σ(z)(1 − σ(z)) evaluated at a = σ(z)": g * _sigmoid_prime(a),
            "a missing σ'(z) factor": g,
            "a sign flip (−δ)": -g * _sigmoid_prime(z),
        }
    for cause, value in candidates.items():
        if _close(got, value):
            return f"; likely cause: {cause}"
    return ""


def _diagnose_network(cases: dict, out: dict, linear: bool = False, modified: _ModifiedNeuron | None = None):
    for c, sizes in enumerate(CASE_SIZES):
        if modified is not None and c not in modified.value:
            continue  # the modified neuron is not in this network
        zs, a, delta = _truth(cases, c, linear, modified)
        n = len(sizes) - 1
        for i in reversed(range(n)):  # output layer first
            layer, nb, nw = i + 2, out[f"{c}_nb{i}"], out[f"{c}_nw{i}"]
            for name, got, want in (("nabla_b", nb, delta[i]), ("nabla_w", nw, delta[i] @ a[i].T)):
                if got.shape != want.shape:
                    raise _Unusable(
                        f"layer {layer} of Network({sizes}): {name} has shape {got.shape}, expected {want.shape}"
                    )
            true_nw = delta[i] @ a[i].T
            if _close(nb, delta[i]) and _close(nw, true_nw):
                continue
            where = f"layer l = {layer} of Network({sizes})"
            if not _close(nb, delta[i]) and _close(nw, true_nw):
                return [f"BP3 wrong at {where}: nabla_b is not δ; {_worst(nb, delta[i])}"]
            if _close(nb, delta[i]):
                cause = "; likely cause: a sign flip (−δ aᵀ)" if _close(nw, -true_nw) else ""
                for k, a_k in enumerate(a):
                    if k != i and a_k.shape == a[i].shape and _close(nw, delta[i] @ a_k.T):
                        cause = f"; likely cause: the wrong layer's activation, a^{k + 1} in place of a^{i + 1}"
                return [f"BP4 wrong at {where}: nabla_w is not δ (a^{layer - 1})ᵀ; {_worst(nw, true_nw)}{cause}"]
            if i == n - 1:
                g, equation = a[-1] - cases[f"{c}_y"], "BP1"
            else:
                g, equation = cases[f"{c}_w{i + 1}"].T @ delta[i + 1], "BP2"
            modified_here = modified is not None and i == modified.layer - 2
            modified_prime = modified.prime(c, i, zs[i]) if modified_here else None
            cause = _delta_cause(nb, g, zs[i], a[i + 1], linear, modified_prime)
            w_next = cases[f"{c}_w{i + 1}"] if equation == "BP2" else None
            prime = 1.0 if linear else (modified.prime(c, i, zs[i]) if modified else _sigmoid_prime(zs[i]))
            if (
                w_next is not None
                and w_next.shape[0] == w_next.shape[1]
                and _close(nb, (cases[f"{c}_w{i + 1}"] @ delta[i + 1]) * prime)
            ):
                cause = "; likely cause: a missing transpose, w^(l+1) in place of (w^(l+1))ᵀ"
            if not _close(nw, nb @ a[i].T):
                cause += "; nabla_w is not your δ (a^(l-1))ᵀ either (BP4)"
            return [f"{equation} wrong at {where}: δ^{layer} (your nabla_b) {_worst(nb, delta[i])}{cause}"]
    return []
