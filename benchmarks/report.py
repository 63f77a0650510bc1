r"""Turn the sections' rows into the outputs: a markdown table, a JSON record and a PNG chart.

* ``benchmark.md``: the machine, the command, then one table per section (medians and ratios).
* ``benchmark.json``: everything, raw samples included.
* ``benchmark.png``: custom/autograd time ratio per shape (section 1) and each epoch contender's
  ratio to the plain autograd loop (section 2), as bars, with a line at 1.0 (equal speed).

Called by ``python -m benchmarks``; not meant to be run on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from .book_session import markdown as book_table  # noqa: E402
from .population import markdown as population_table  # noqa: E402
from .statistics import markdown as statistics_table  # noqa: E402

__all__ = ["markdown", "write"]


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f}"


def _machine(meta: dict) -> str:
    m = meta["machine"]
    return "\n".join(
        [
            f"- Command: `{meta['command']}` ({meta['date']}, {'quick' if meta['quick'] else 'full'} run)",
            f"- CPU: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), torch threads: {m['torch_threads']}, "
            f"load average at start: {', '.join(f'{x:.2f}' for x in m['load_average'] or [])}",
            f"- GPU: {m['cuda'] or 'none (CUDA not available)'}",
            f"- Python {m['python']}, torch {m['torch']}, lightning {m['lightning']}, numpy {m['numpy']}",
            f"- Timing: `time.perf_counter`, contenders interleaved (A B, B A, ...), medians of "
            f"{meta['repeats']} samples per contender after a warm-up",
        ]
    )


def _functions_table(rows: list[dict]) -> str:
    lines = [
        "| case | device | N | H | custom µs | autograd µs | custom/autograd | saved KiB custom | saved KiB autograd "
        "| extra KiB custom | extra KiB autograd | max grad diff |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['device']} | {r['batch']} | {r['hidden']} | {r['custom_us']:,.1f} | "
            f"{r['autograd_us']:,.1f} | {r['ratio']:.2f} | {_kib(r['saved_custom'])} | {_kib(r['saved_autograd'])} | "
            f"{_kib(r['extra_custom'])} | {_kib(r['extra_autograd'])} | {r['max_grad_diff']:.1e} |"
        )
    return "\n".join(lines)


def _epoch_table(rows: list[dict]) -> str:
    lines = [
        "| contender | device | examples | steps | epoch s | µs/step | ratio to loop (autograd) | x book | "
        "val accuracy after |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        fit = f" (whole fit: {r['fit_s']:.3f})" if "fit_s" in r else ""
        compiled = f" (compile: {r['compile_s']:.1f})" if "compile_s" in r else ""
        x_book = f"{r['x_book']:.1f}" if r.get("x_book") else "–"
        accuracy = f"{r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else "–"
        lines.append(
            f"| {r['contender']} | {r['device']} | {r['examples']:,} | {r['steps']:,} | "
            f"{r['epoch_s']:.3f}{fit}{compiled} "
            f"| {r['us_per_step']:,.0f} | {r['ratio']:.2f} | {x_book} | {accuracy} |"
        )
    return "\n".join(lines)


def _time95_table(results: list[dict]) -> str:
    lines = [
        "| device | target | reached | test accuracy | step | epoch | s to target (from process start) "
        "| process wall s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['device']} | {r['target']:.0%} | {'yes' if r['reached'] else 'no'} | "
            f"{r.get('accuracy', float('nan')):.4f} | "
            f"{r.get('step')} | {r.get('epoch')} | {r.get('elapsed_s', float('nan')):.1f} | {r['process_wall_s']:.1f} |"
        )
    hp = results[0]["hparams"]
    data = results[0]["config"]["data"]
    lines.append(
        f"\nConfiguration: `{results[0]['command']}`; sizes {hp['sizes']}, η = {hp['eta']}, init {hp['init']}, "
        f"mini-batch {hp.get('mini_batch_size') or data['batch_size']} ({data['batch_size']} examples per Lightning "
        f"step), test accuracy checked every "
        f"{results[0]['config']['trainer']['callbacks'][0]['init_args']['every_n_steps']} steps."
    )
    return "\n".join(lines)


def _cli_table(r: dict) -> str:
    lines = [
        f"`manualbp fit --config {r['config']}`; one epoch = (wall time with `--trainer.max_epochs {r['long_epochs']}` "
        f"minus with `1`) / {r['long_epochs'] - 1} (training and validation), median of {r['repeats']} interleaved "
        "rounds.",
        "",
        "| run | one epoch s | x book | process with 1 epoch s |",
        "| --- | ---: | ---: | ---: |",
        f"| book (numpy), per-example | {r['book_epoch_s']:.3f} | 1.0 | – |",
    ]
    for kind, label in (("eager", "manualbp fit"), ("compiled", "manualbp fit --model.compile true")):
        lines.append(
            f"| {label} | {r[f'{kind}_epoch_s']:.3f} | {r[f'{kind}_x_book']:.1f} | "
            f"{r[f'{kind}_one_epoch_process_s']:.1f} |"
        )
    lines.append(f"\nCompiling run (1 epoch, Inductor cache filled): {r['compile_run_s']:.1f} s.")
    if "thirty_epochs_s" in r:
        lines.append(f"The README's main command, 30 epochs end to end after set-up: {r['thirty_epochs_s']:.1f} s.")
    return "\n".join(lines)


def _peers_table(section: dict, cli: dict | None) -> str:
    rows = section["rows"]
    lines = [
        f"{rows[0]['examples']:,} examples ({rows[0]['steps']:,} steps) an epoch, medians of "
        f"{len(rows[0]['samples_s'])} epochs each, one interleaved run.",
        "",
        "| contender | s/epoch | µs/step | x book | x JAX (time / JAX's) | val accuracy after |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        x_jax = f"{r['x_jax']:.2f}" if r["x_jax"] else "–"
        lines.append(
            f"| {r['contender']} | {r['epoch_s']:.3f} | {r['us_per_step']:,.0f} | {r['x_book']:.1f} | "
            f"{x_jax} | {r['val_accuracy']:.4f} |"
        )
    if section["jax_skipped"]:
        lines.append(f"\nJAX skipped: {section['jax_skipped']}")
    else:
        lines.append(f"\nJAX {section['jax_version']} (XLA's own CPU thread pool).")
    cli_line = "The `manualbp fit` epoch is section 3 (`--only cli`), timed against the book in its own rounds"
    if cli:
        jax = next((r["epoch_s"] for r in rows if r["contender"].startswith("JAX")), None)
        versus_jax = f", {cli['eager_epoch_s'] / jax:.2f}x JAX's epoch above" if jax else ""
        cli_line += (
            f": {cli['eager_epoch_s']:.3f} s, {cli['eager_x_book']:.1f}x its book{versus_jax} in this invocation"
        )
    lines.append(cli_line + ".")
    return "\n".join(lines)


def _contention_tables(section: dict) -> str:
    lines = [
        "Fused SGD step (`update_mini_batch`), random data, one thread against several, interleaved in one process.",
        "",
        "| sizes | mini-batch | µs/step, 1 thread | µs/step, several | threads | several / 1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in section["crossover"]:
        lines.append(
            f"| {r['sizes']} | {r['mini_batch']} | {r['one_us']:,.1f} | {r['many_us']:,.1f} | "
            f"{r['threads']} | {r['many_over_one']:.2f} |"
        )
    busy = section["busy"]
    lines += [
        "",
        f"{busy['sizes']}, mini-batch {busy['mini_batch']}: each worker its own process; compiled = `torch.compile` "
        f"of {busy['steps_per_call']} unrolled steps; busy = one CPU-bound process beside it (stopped and continued "
        "between samples, so idle and busy samples interleave).",
        "",
        "| worker | threads | µs/step idle | µs/step busy | busy / idle | / eager 1 thread, idle | "
        "/ eager 1 thread, busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in busy["rows"]:
        lines.append(
            f"| {r['worker']} | {r['threads']} | {r['idle_us']:,.1f} | {r['busy_us']:,.1f} | "
            f"{r['busy_over_idle']:.2f} | {r['idle_over_eager_1']:.2f} | {r['busy_over_eager_1']:.2f} |"
        )
    return "\n".join(lines)


def markdown(meta: dict, sections: dict) -> str:
    parts = ["# torch_manualbp benchmark", _machine(meta)]
    if "functions" in sections:
        parts += [
            "## 1. Forward+backward: custom Functions vs autograd",
            "`layer`: 784 → H sigmoid layer, x requires grad. `network`: [784, H, 10] + mean quadratic cost through "
            "the per-layer Functions; `network, one node`: the same through `Network.cost`. "
            "Ratio < 1: the custom Functions are faster. Saved: unique storages saved for backward; extra: "
            "those the caller does not hold anyway (not an input, parameter, target or the output).",
            _functions_table(sections["functions"]),
        ]
    if "epoch" in sections:
        parts += [
            "## 2. One training epoch, [784, 30, 10], η = 3.0, mini-batch 10",
            "Same initial weights and batches for all; equal validation accuracies confirm they trained alike.",
            _epoch_table(sections["epoch"]),
        ]
    if "cli" in sections:
        parts += ["## 3. The main command, one epoch and thirty", _cli_table(sections["cli"])]
    if "time95" in sections:
        parts += ["## 4. Time to target test accuracy via `manualbp fit`", _time95_table(sections["time95"])]
    if "statistics" in sections:
        parts += [
            "## 5. Per-example gradient statistics on top of a step, [784, 30, 10]",
            "Ratios: statistics + step / backprop step, and recorded + statistics / autograd step; goal ≤ 1.5. "
            "Peak: bytes held at once by tensors allocated during the call (`benchmarks/statistics.py`).",
            statistics_table(sections["statistics"]),
        ]
    if "peers" in sections:
        parts += [
            "## 6. Peers: one epoch of the book's run, [784, 30, 10], η = 3.0, mini-batch 10",
            _peers_table(sections["peers"], sections.get("cli")),
        ]
    if "contention" in sections:
        parts += ["## 7. Threads, and a busy process beside the run", _contention_tables(sections["contention"])]
    if "population" in sections:
        parts += [
            "## 8. Many networks, one step: `Population.sgd_step`, [784, 30, 10], mini-batch 10",
            population_table(sections["population"]),
        ]
    if "book" in sections:
        title = "## 9. The book's session: one epoch of torch_manualbp.book.network.SGD"
        parts += [title, book_table(sections["book"])]
    parts += ["## 10. CUDA", sections.get("cuda_note", "Included in the tables above (device column).")]
    return "\n\n".join(parts) + "\n"


def _plot(sections: dict, path: Path) -> None:
    panels = [k for k in ("functions", "epoch") if k in sections]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    for ax, key in zip(axes[:, 0], panels):
        rows = sections[key]
        if key == "functions":
            labels = [f"{r['device']}\nN={r['batch']}\nH={r['hidden']}" for r in rows]
            palette = {"layer": "tab:blue", "network": "tab:orange", "network, one node": "tab:purple"}
            colors = [palette.get(r["case"], "tab:gray") for r in rows]
            ax.set_title(
                "Forward+backward time, custom / autograd (blue: layer, orange: network, purple: network as one node)"
            )
        else:
            labels = [f"{r['contender']}\n{r['device']}" for r in rows]
            colors = "tab:green"
            ax.set_title("One epoch, time / plain autograd loop")
        ax.bar(range(len(rows)), [r["ratio"] for r in rows], color=colors)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylabel("time ratio (< 1: faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, meta: dict, sections: dict) -> str:
    """Write benchmark.md, benchmark.json and benchmark.png under ``out``; return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(meta, sections)
    (out / "benchmark.md").write_text(text)
    (out / "benchmark.json").write_text(json.dumps({"meta": meta, **sections}, indent=2, default=str))
    _plot(sections, out / "benchmark.png")
    return text
