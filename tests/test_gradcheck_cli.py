"""`manualbp gradcheck`: its table covers every Function, and it does catch a wrong backward."""

import subprocess
import sys

import torch

from torch_manualbp.activations import ACTIVATIONS
from torch_manualbp.costs import COSTS
from torch_manualbp.gradcheck import Case, format_table, run_checks


class SigmoidWithWrongBackward(torch.autograd.Function):
    """σ(x) whose backward forgets the factor (1 − σ(x)): the kind of slip gradcheck exists to catch."""

    @staticmethod
    def forward(x):
        return torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return grad * a


def test_gradcheck_command_passes_every_case_of_every_function():
    result = subprocess.run(
        [sys.executable, "-m", "torch_manualbp.cli", "gradcheck"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "PASS" in line]
    every_function = {
        "sigmoid_linear",
        "quadratic_cost",
        "cross_entropy_cost",
        "sigmoid_cross_entropy",
        "log_likelihood_cost",
        "softmax_log_likelihood",
        "dropout",
        "fully_connected",
        "conv_pool",
        "NetworkCostFunction",
    }
    assert {row.split("|")[1].strip() for row in rows} == every_function
    assert {row.split("|")[3].strip() for row in rows} == {"gradcheck", "gradgradcheck"}
    assert "FAIL" not in result.stdout
    for name in ACTIVATIONS:  # fully_connected's gradcheck and gradgradcheck, for every activation
        assert sum(row.startswith("| fully_connected |") and f", {name} |" in row for row in rows) == 2
    for name in ACTIVATIONS:  # conv_pool's too, with a bias and a 2 x 2 pool
        assert sum(row.startswith("| conv_pool |") and f"bias, pool 2, {name} |" in row for row in rows) == 2
    assert sum(row.startswith("| conv_pool |") and "no bias, pool 1" in row for row in rows) == 2
    assert result.stdout.strip().endswith(f"{len(rows)} passed, 0 failed")


def test_a_wrong_backward_is_reported_as_a_failure():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    rows = run_checks([Case("wrong", "x (3, 4)", SigmoidWithWrongBackward.apply, (x,))])
    assert rows[0][1] == "gradcheck" and rows[0][2] is False
    assert "Jacobian mismatch" in rows[0][3]
    assert "0 passed, 2 failed" in format_table(rows)


def test_network_cost_function_rows_say_what_it_does_not_support():
    result = subprocess.run(
        [sys.executable, "-m", "torch_manualbp.cli", "gradcheck"], capture_output=True, text=True, timeout=300
    )
    network_rows = [line for line in result.stdout.splitlines() if line.startswith("| NetworkCostFunction")]
    assert any("gradgradcheck" in row and "not supported" in row for row in network_rows)
    passed = sum(row.rstrip(" |").endswith("PASS") and "| gradcheck |" in row for row in network_rows)
    assert passed == len(COSTS) + len(ACTIVATIONS) - 1  # every cost, then each activation but the sigmoid
