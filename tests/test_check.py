"""`manualbp check`: a student's backprop file is passed when right, and each planted mistake is named (equation,
layer, cause). The truth the checker uses is torch autograd; the files here are written independently of it."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torch_manualbp.check import check_file

FILES = Path(__file__).parent / "check_files"


def manualbp_check(*args):
    return subprocess.run(
        [sys.executable, "-m", "torch_manualbp.cli", "check", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", ["network_correct.py", "functions_correct.py"])
def test_check_command_passes_a_correct_file_of_either_shape(name):
    result = manualbp_check(str(FILES / name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all right" in result.stdout


def test_check_command_names_the_equation_and_layer_of_a_planted_mistake():
    result = manualbp_check(str(FILES / "network_bp2_sigma_prime_of_a.py"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BP2 wrong at layer l = 3" in result.stdout and "σ'(a) used for σ'(z)" in result.stdout


@pytest.mark.parametrize(
    "name, equation, layer, cause",
    [
        ("network_bp1_sigma_prime_of_a.py", "BP1", 4, "σ'(a) used for σ'(z)"),
        ("network_bp1_missing_sigma_prime.py", "BP1", 4, "a missing σ'(z) factor"),
        ("network_bp1_sign.py", "BP1", 4, "a sign flip"),
        ("network_bp2_sigma_prime_of_a.py", "BP2", 3, "σ'(a) used for σ'(z)"),
        ("network_bp3.py", "BP3", 4, "nabla_b is not δ"),
        ("network_bp4_sign.py", "BP4", 4, "a sign flip"),
        ("network_bp4_wrong_layer.py", "BP4", 3, "the wrong layer's activation, a^3 in place of a^2"),
    ],
)
def test_planted_mistake_is_named_with_its_equation_layer_and_cause(name, equation, layer, cause):
    result = check_file(FILES / name)
    assert result.status == 1, result.lines
    assert len(result.lines) == 1
    assert result.lines[0].startswith(f"{equation} wrong at layer l = {layer} ") and cause in result.lines[0]
    assert "largest error" in result.lines[0]


def test_planted_mistake_in_a_bp_function_names_that_function_only():
    result = check_file(FILES / "functions_bp2_sigma_prime_of_a.py")
    assert result.status == 1
    assert len(result.lines) == 1 and result.lines[0].startswith("BP2 wrong") and "σ'(a)" in result.lines[0]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("no_backprop.py", "defines neither class Network nor bp2, bp3, bp4"),
        ("network_wrong_shape.py", "nabla_w has shape (4, 3), expected (3, 4)"),
        ("network_raises.py", 'line 32 (raise RuntimeError("student gave up")): RuntimeError'),
        ("network_bp2_missing_transpose.py", "line 34 "),
    ],
)
def test_unusable_file_gets_one_line_and_status_2(name, expected):
    result = check_file(FILES / name)
    assert result.status == 2 and len(result.lines) == 1
    assert expected in result.lines[0], result.lines


def test_file_that_does_not_parse_gets_its_line_and_status_2(tmp_path):
    student = tmp_path / "network.py"
    student.write_text("import numpy as np\n\ndef backprop(self, x, y)\n    return x\n")
    result = check_file(student)
    assert result.status == 2 and result.lines == [f"{student} does not parse: line 3: expected ':'"]


def test_missing_transpose_that_breaks_shapes_is_hinted_at():
    (line,) = check_file(FILES / "network_bp2_missing_transpose.py").lines
    assert "a missing transpose?" in line and "self.weights[-k + 1], delta" in line


def test_endless_loop_is_stopped_by_the_timeout_with_exit_status_2():
    result = manualbp_check(str(FILES / "network_loops.py"), "--timeout", "2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "manualbp check: network_loops.py: still running after 2 s (an endless loop?)"
    ]


def test_linear_neurons_exercise_passes_a_correct_answer_through_the_command():
    result = manualbp_check(str(FILES / "linear_correct.py"), "--exercise", "linear")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all right" in result.stdout


def test_linear_neurons_exercise_names_the_sigmoid_prime_kept_in_bp1():
    result = manualbp_check(str(FILES / "linear_sigmoid_prime_kept.py"), "--exercise", "linear")
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("BP1 wrong at layer l = 4 ") and "the sigmoid's σ'(z) kept" in line


def test_sigmoid_network_checked_as_linear_neurons_is_wrong_and_the_reverse_too():
    # the two problems' truths differ: a correct answer to one is wrong for the other
    assert check_file(FILES / "network_correct.py", exercise="linear").status == 1
    assert check_file(FILES / "linear_correct.py").status == 1


def test_linear_neurons_exercise_on_a_functions_file_is_unusable_in_one_line():
    result = check_file(FILES / "functions_correct.py", exercise="linear")
    assert result.status == 2 and len(result.lines) == 1 and "defines no class Network" in result.lines[0]


def test_unknown_exercise_is_refused_by_the_command_in_one_line():
    result = manualbp_check(str(FILES / "network_correct.py"), "--exercise", "softmax")
    assert result.returncode == 2 and "invalid choice: 'softmax'" in result.stderr


def test_sigma_prime_matrix_exercise_passes_a_correct_answer_through_the_command():
    result = manualbp_check(str(FILES / "sigma_prime_matrix_correct.py"), "--exercise", "sigma-prime-matrix")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all right" in result.stdout


@pytest.mark.parametrize(
    "name, first_line_starts, cause",
    [
        ("sigma_prime_matrix_of_a.py", "sigma_prime_matrix wrong", "σ'(a) used for σ'(z)"),
        ("sigma_prime_matrix_not_diagonal.py", "sigma_prime_matrix wrong", "the outer product σ'(z) σ'(z)ᵀ"),
        ("sigma_prime_matrix_row_vector.py", "BP1 (matrix form) wrong", "the product in the wrong order"),
    ],
)
def test_sigma_prime_matrix_exercise_names_the_planted_mistake_through_the_command(name, first_line_starts, cause):
    result = manualbp_check(str(FILES / name), "--exercise", "sigma-prime-matrix")
    assert result.returncode == 1, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(first_line_starts) and cause in first


def test_sigma_prime_matrix_exercise_traces_bp1_and_bp2_back_to_a_wrong_matrix():
    lines = check_file(FILES / "sigma_prime_matrix_not_diagonal.py", exercise="sigma-prime-matrix").lines
    assert [line.split(" wrong")[0] for line in lines] == [
        "sigma_prime_matrix",
        "BP1 (matrix form)",
        "BP2 (matrix form)",
    ]
    assert all("it follows from your sigma_prime_matrix" in line for line in lines[1:])


def test_sigma_prime_matrix_exercise_on_a_file_without_the_matrix_is_unusable_in_one_line():
    result = manualbp_check(str(FILES / "functions_correct.py"), "--exercise", "sigma-prime-matrix")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("does not define sigma_prime_matrix (the sigma-prime-matrix exercise)")


def test_modified_neuron_exercise_passes_a_correct_answer_through_the_command():
    # MODIFIED_NEURON = (2, 1) is hidden in [5, 4, 4, 3] and [4, 5, 3] and an output neuron in [3, 2]
    result = manualbp_check(str(FILES / "modified_neuron_correct.py"), "--exercise", "modified-neuron")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all right" in result.stdout


def test_modified_neuron_exercise_names_sigma_prime_kept_at_the_neuron_through_the_command():
    result = manualbp_check(str(FILES / "modified_neuron_sigma_prime_kept.py"), "--exercise", "modified-neuron")
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("BP2 wrong at layer l = 2 of Network([5, 4, 4, 3])")
    assert "σ'(z) used at the modified neuron, where f'(z) belongs" in line


def test_modified_neuron_exercise_says_when_f_prime_is_not_the_derivative_of_f():
    result = manualbp_check(str(FILES / "modified_neuron_f_prime_wrong.py"), "--exercise", "modified-neuron")
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("f_prime wrong: it is not the derivative of your f")
    z, yours, slope = map(float, re.search(r"at z = (\S+), f_prime\(z\) = (\S+) but .* is (\S+);", line).groups())
    # the file's f is tanh and its f_prime 1 − tanh(z); the numbers are printed to 6 significant digits
    assert yours == pytest.approx(1 - np.tanh(z), rel=1e-5)
    assert slope == pytest.approx(1 - np.tanh(z) ** 2, rel=1e-5)


def test_modified_neuron_in_none_of_the_networks_is_unusable_in_one_line(tmp_path):
    student = tmp_path / "network.py"
    source = (FILES / "modified_neuron_correct.py").read_text()
    student.write_text(source.replace("MODIFIED_NEURON = (2, 1)", "MODIFIED_NEURON = (9, 0)"))
    result = check_file(student, exercise="modified-neuron")
    assert result.status == 2 and len(result.lines) == 1
    assert "MODIFIED_NEURON = (9, 0) is in none of the checker's networks" in result.lines[0]


def test_modified_neuron_exercise_on_a_plain_network_file_is_unusable_in_one_line():
    result = manualbp_check(str(FILES / "network_correct.py"), "--exercise", "modified-neuron")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("does not define f, f_prime, MODIFIED_NEURON (the modified-neuron exercise)")


TIMING_LINE = re.compile(
    r"timing, Network\(\[784, 30, 10\]\) on a mini-batch of m = 10: per-example backprop (\S+) ms,"
    r" backprop_matrix (\S+) ms, (\S+)x \(median of 7 interleaved samples\)"
)


def test_matrix_mini_batch_exercise_passes_a_correct_answer_and_prints_both_times_and_their_ratio():
    result = manualbp_check(str(FILES / "matrix_mini_batch_correct.py"), "--exercise", "matrix-mini-batch")
    assert result.returncode == 0, result.stdout + result.stderr
    right, timing = result.stdout.strip().splitlines()
    assert right == "all right: matrix_mini_batch_correct.py"
    per_example, matrix, ratio = map(float, TIMING_LINE.fullmatch(timing).groups())
    assert per_example > 0 and matrix > 0 and ratio > 0  # timings are printed, never judged


@pytest.mark.parametrize(
    "name, cause",
    [
        ("matrix_mini_batch_not_summed.py", "nabla_b has shape (3, 6), expected (3, 1); likely cause: δ not summed"),
        ("matrix_mini_batch_mean.py", "nabla_b is not the per-example sum; largest error"),
    ],
)
def test_matrix_mini_batch_exercise_names_the_planted_mistake_at_the_output_layer(name, cause):
    result = manualbp_check(str(FILES / name), "--exercise", "matrix-mini-batch")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("backprop_matrix wrong at layer l = 4 of Network([5, 4, 4, 3]), m = 6: ")
    assert cause in lines[0] and TIMING_LINE.fullmatch(lines[-1])


def test_matrix_mini_batch_exercise_names_a_mean_for_the_sum():
    (first, *_) = check_file(FILES / "matrix_mini_batch_mean.py", exercise="matrix-mini-batch").lines
    assert "likely cause: divided by m" in first


def test_matrix_mini_batch_exercise_checks_the_per_example_backprop_too(tmp_path):
    student = tmp_path / "network.py"
    source = (FILES / "matrix_mini_batch_correct.py").read_text()
    planted = source.replace("nabla_b[-1] = delta\n", "nabla_b[-1] = -delta\n", 1)  # backprop's BP3, not the matrix's
    assert planted != source
    student.write_text(planted)
    lines = check_file(student, exercise="matrix-mini-batch").lines
    assert lines[0].startswith("BP3 wrong at layer l = 4 ") and TIMING_LINE.fullmatch(lines[-1])


def test_matrix_mini_batch_exercise_on_a_file_without_backprop_matrix_is_unusable_in_one_line():
    result = manualbp_check(str(FILES / "network_correct.py"), "--exercise", "matrix-mini-batch")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("has no Network.backprop_matrix (the matrix-mini-batch exercise)")
