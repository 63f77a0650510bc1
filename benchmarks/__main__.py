r"""``python -m benchmarks``: run the benchmark sections and write benchmark.md/.json/.png.

Examples::

    python -m benchmarks                               # all sections, full size
    python -m benchmarks --quick                       # smoke run: few repeats, 2,000-example epoch, 90% target
    python -m benchmarks --only functions epoch        # some sections
    python -m benchmarks --threads 1 --out /tmp/bench  # one intra-op thread, results elsewhere
    python -m benchmarks --quick --only peers contention  # the peers (JAX if installed) and the busy neighbour

Sections: ``functions`` (custom Functions vs autograd), ``epoch`` (one training epoch, eight ways),
``cli`` (the main command: one CLI epoch vs the book's, eager and compiled, and 30 epochs end to end),
``time95`` (time to 95% test accuracy via ``manualbp fit``), ``statistics`` (per-example gradient statistics
on top of a step), ``peers`` (one epoch of the book's run: the book, autograd, ``sgd_step``, a bare fused step
and JAX), ``contention`` (one thread against several per network size, and eager and compiled steps beside a
busy process), ``population`` (K networks stepped together by ``Population.sgd_step`` beside one
``Network.sgd_step`` and the bare step), ``book`` (one epoch of the book's session, ``torch_manualbp.book.network.SGD``,
beside the book's own per-example numpy). ``functions``, ``epoch``, ``time95`` and ``statistics`` also run on CUDA
when a GPU is present (``--no-cuda`` to skip).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

SECTIONS = ("functions", "epoch", "cli", "time95", "statistics", "peers", "contention", "population", "book")
QUICK = {"repeats": 5, "min_sample_s": 0.002, "epoch_examples": 2000, "epoch_repeats": 2, "peer_repeats": 3}
FULL = {"repeats": 21, "min_sample_s": 0.02, "epoch_examples": 50_000, "epoch_repeats": 3, "peer_repeats": 5}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--quick", action="store_true", help="a smoke run (well under a minute)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where results go")
    parser.add_argument(
        "--threads",
        type=int,
        default=cores,
        help=f"torch intra-op threads, also for the subprocesses (default: usable cores, {cores})",
    )
    parser.add_argument("--repeats", type=int, help="timing samples per contender (section 1)")
    parser.add_argument("--examples", type=int, help="training examples in the epochs of sections epoch and peers")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "mnist")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA runs even if a GPU is present")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # Before torch/numpy load: OpenMP and BLAS read these once, and the manualbp subprocess inherits them.
    # Too many threads on a busy machine is ruinous for small ops (spinning threads wait for each other).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from torch_manualbp.testing.timing import machine_info

    from . import (
        book_session,
        cli_epoch,
        contention,
        epoch,
        functions,
        peers,
        population,
        report,
        statistics,
        time_to_95,
    )

    size = dict(QUICK if args.quick else FULL)
    size["repeats"] = args.repeats or size["repeats"]
    size["epoch_examples"] = args.examples or size["epoch_examples"]
    devices = ["cpu"]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append("cuda")
    meta = {
        "command": " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeats": size["repeats"],
        "sizes": size,
        "machine": machine_info(),
    }
    sections: dict = {}
    if "cuda" not in devices:
        why = "disabled by --no-cuda" if args.no_cuda else "CUDA is not available on this machine"
        sections["cuda_note"] = f"Skipped: {why}."
    else:
        sections["cuda_note"] = f"Run on {torch.cuda.get_device_name(0)}: the rows with device `cuda` above."
    for device in devices:
        if "functions" in args.only:
            print(f"[functions] {device}", flush=True)
            sections.setdefault("functions", []).extend(functions.run(device, size["repeats"], size["min_sample_s"]))
        if "epoch" in args.only:
            print(f"[epoch] {device}, {size['epoch_examples']:,} examples", flush=True)
            sections.setdefault("epoch", []).extend(
                epoch.run(args.data_dir, size["epoch_examples"], size["epoch_repeats"], device)
            )
        if "cli" in args.only and device == "cpu":
            print("[cli] manualbp fit --config experiments/nielsen_ch1.yaml", flush=True)
            sections["cli"] = cli_epoch.run(args.data_dir, 2 if args.quick else 3, args.quick)
        if "time95" in args.only:
            print(f"[time95] {device}", flush=True)
            sections.setdefault("time95", []).append(time_to_95.run(args.out, device, args.quick))
        if "statistics" in args.only:
            print(f"[statistics] {device}", flush=True)
            sections.setdefault("statistics", []).extend(statistics.run(device, size["repeats"], size["min_sample_s"]))
    if "peers" in args.only:
        print(f"[peers] cpu, {size['epoch_examples']:,} examples", flush=True)
        sections["peers"] = peers.run(args.data_dir, size["epoch_examples"], size["peer_repeats"])
    if "contention" in args.only:
        print("[contention] cpu", flush=True)
        sections["contention"] = contention.run(args.quick)
    if "population" in args.only:
        print("[population] cpu", flush=True)
        sections["population"] = population.run("cpu", size["repeats"], size["min_sample_s"])
    if "book" in args.only:
        print(f"[book] cpu, {size['epoch_examples']:,} examples", flush=True)
        sections["book"] = book_session.run(args.data_dir, size["epoch_examples"], size["peer_repeats"])
    print()
    print(report.write(args.out, meta, sections))
    print(f"written: {args.out / 'benchmark.md'}, {args.out / 'benchmark.json'}, {args.out / 'benchmark.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
