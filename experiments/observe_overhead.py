r"""What watching δˡ costs: a training step with ``record_errors()`` off, on, and the check itself.

The Functions' backward asks ``observe.is_recording()`` (is one module-level list empty?) and does
nothing more when it is not recording. This measures that test alone, and one forward+backward of ``[784, 30, 10]`` on a
mini-batch of 10 with the recording off and on, in alternating order through
:mod:`torch_manualbp.testing.timing` (medians of 15 samples of at least 0.2 s each).

To run::

    python experiments/observe_overhead.py    # writes experiments/results/observe_overhead.md
"""

from __future__ import annotations

import timeit
from pathlib import Path

import torch

from torch_manualbp import Network, observe
from torch_manualbp.functional import quadratic_cost
from torch_manualbp.observe import record_errors
from torch_manualbp.testing.timing import interleaved, median


def main(out: Path = Path("experiments/results")) -> None:
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds noise
    torch.manual_seed(0)
    net = Network([784, 30, 10])
    x, labels = torch.rand(10, 784), torch.randint(0, 10, (10,))

    def step() -> None:
        quadratic_cost(net(x), labels).backward()
        net.zero_grad(set_to_none=True)

    def recorded_step() -> None:
        with record_errors():
            step()

    samples, _ = interleaved({"off": step, "on": recorded_step}, repeats=15, min_sample_s=0.2)
    check_ns = (
        min(timeit.repeat("observe.is_recording()", globals={"observe": observe}, number=100_000, repeat=5)) * 1e4
    )
    off, on = (1e6 * median(samples[name]) for name in ("off", "on"))
    table = "\n".join([
        "| what | time |",
        "| --- | --- |",
        f"| the test in each layer's backward when nothing records (`observe.is_recording()`) | {check_ns:.0f} ns |",
        f"| forward+backward of [784, 30, 10], mini-batch 10, recording off | {off:.1f} µs |",
        f"| the same inside `record_errors()` | {on:.1f} µs ({on / off:.2f}x) |",
    ])  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "observe_overhead.md").write_text(
        f"Command: `python experiments/observe_overhead.py` (one thread)\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
