"""The thread rule (torch_manualbp/threads.py): its decisions for the measured sizes, that the user's choice wins,
and the line it says. Whatever touches torch's thread count runs in a fresh process, as a user's program would."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from torch_manualbp.threads import ONE_THREAD_UP_TO, recommended_threads, torch_default_threads

MEASURED = [
    ([784, 30, 10], 10),
    ([784, 30, 10], 100),
    ([784, 100, 10], 10),
    ([784, 100, 10], 100),
    ([784, 400, 10], 10),
    ([784, 400, 10], 100),
    ([784, 1000, 1000, 10], 10),
    ([784, 1000, 1000, 10], 100),
]


def run_fresh(code: str, **env: str) -> dict:
    """Run ``code`` in a new Python process whose environment sets no thread count (plus ``env``); its JSON line."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    clean.update(env, PYTHONPATH=str(ROOT))
    prelude = "import json, torch\nfrom torch_manualbp.threads import apply_thread_rule, torch_default_threads\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, env=clean, cwd=ROOT, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("sizes, mini_batch_size", MEASURED)
def test_one_thread_for_every_measured_network(sizes, mini_batch_size):
    assert recommended_threads(sizes, mini_batch_size) == 1


def test_torchs_default_above_the_largest_measured_step():
    sizes = [784, 4000, 4000, 10]  # 100 × (784·4000 + 4000·4000 + 4000·10) ≈ 1.9e9 multiply-adds a step
    assert 100 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) > ONE_THREAD_UP_TO
    assert recommended_threads(sizes, 100) == torch_default_threads()


def test_torch_default_threads_is_what_a_fresh_process_starts_with():
    seen = run_fresh("print(json.dumps([torch.get_num_threads(), torch_default_threads()]))")
    assert seen[0] == seen[1]


def test_the_rule_sets_one_thread_and_says_why_when_nobody_chose():
    seen = run_fresh(
        "line = apply_thread_rule([784, 30, 10], 10)\nfirst = torch.get_num_threads()\n"
        "again = apply_thread_rule([784, 30, 10], 10)\n"
        "print(json.dumps([line, first, again, torch.get_num_threads()]))"
    )
    line, threads, again, threads_again = seen
    assert line == (
        "manualbp: 1 intra-op thread (small network: [784, 30, 10] at mini-batch 10, 0.24 million "
        "multiply-adds a step; OMP_NUM_THREADS overrides)"
    )
    assert threads == 1
    assert (again, threads_again) == (line, 1), "a second call took the rule's own count for the user's choice"


@pytest.mark.skipif(torch_default_threads() < 2, reason="needs 2 cores: the rule's count and the user's must differ")
def test_the_users_omp_num_threads_wins():
    seen = run_fresh(
        "before = torch.get_num_threads()\nline = apply_thread_rule([784, 30, 10], 10)\n"
        "print(json.dumps([before, line, torch.get_num_threads()]))",
        OMP_NUM_THREADS="2",
    )
    assert seen == [2, "manualbp: 2 intra-op threads (OMP_NUM_THREADS=2)", 2]


def test_an_explicit_set_num_threads_call_wins():
    chosen = torch_default_threads() + 1  # any count other than torch's default is seen as the user's
    seen = run_fresh(
        f"torch.set_num_threads({chosen})\n"
        "print(json.dumps([apply_thread_rule([784, 30, 10], 10), torch.get_num_threads()]))"
    )
    assert seen == [f"manualbp: {chosen} intra-op threads (torch.set_num_threads({chosen}))", chosen]


@pytest.mark.parametrize(
    "sizes, mini_batch_size, named",
    [
        ([784], 10, "sizes"),
        ("784, 30", 10, "sizes"),
        ([784, 0, 10], 10, "sizes"),
        ([784, 30.0, 10], 10, "sizes"),
        ([784, 30, 10], 0, "mini_batch_size"),
        ([784, 30, 10], 10.0, "mini_batch_size"),
        ([784, 30, 10], True, "mini_batch_size"),
    ],
)
def test_bad_sizes_or_mini_batch_size_name_the_argument(sizes, mini_batch_size, named):
    with pytest.raises(ValueError, match=named):
        recommended_threads(sizes, mini_batch_size)


def test_a_population_counts_the_work_of_all_its_members():
    # [784, 30, 10] at mini-batch 10 is 0.24 million multiply-adds a step; K members stepped together do K times that
    one = recommended_threads([784, 30, 10], 10)
    members = int(ONE_THREAD_UP_TO // (10 * (784 * 30 + 30 * 10))) + 1  # just enough members to pass the threshold
    assert one == 1
    assert recommended_threads([784, 30, 10], 10, members=members) == torch_default_threads()
    with pytest.raises(ValueError, match="members must be a positive int"):
        recommended_threads([784, 30, 10], 10, members=0)


def test_the_population_fit_says_its_thread_rule_with_its_members(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch_manualbp.cli",
            "fit",
            "--config",
            str(ROOT / "experiments" / "nielsen_ch1_seeds.yaml"),
            "--data.data_dir",
            str(ROOT / "data" / "mnist"),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_checkpointing",
            "false",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the run's config.yaml goes here, not into the repository
        env={k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        | {"PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "manualbp: 1 intra-op thread (small networks, 3 stepped together: [784, 30, 10] at mini-batch 10" in (
        out.stdout + out.stderr
    )
