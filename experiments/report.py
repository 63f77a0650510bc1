r"""Run a training config over several seeds and write a results table (markdown) and a plot (PNG).

Each seed is one ``manualbp fit`` process (the project's real entry point) with that seed for the
initialisation and for the shuffling; its CSV log is read back when it ends. The table gives, per seed,
the best validation accuracy, the test accuracy at that epoch, and, where the config also evaluates
the test set every epoch (``data.monitor_test``), the best test accuracy over epochs, which is the
figure the book reports; then the median over seeds. The plot shows validation accuracy and cost per
epoch for every seed.

With ``--population`` the seeds are trained as one population instead (one ``manualbp fit`` process, its
``population.seeds`` the seeds): member k starts from seed k's initial weights, and all members share the config's
shuffling (``data.seed``), so the per-seed rows equal those of separate runs given the same ``data.seed``
(``-- --data.seed 0``), up to float32 rounding; the wall-clock column is then the whole population's.

To run::

    python experiments/report.py experiments/nielsen_ch1.yaml --seeds 0 1 2 --book 95.42
    python experiments/report.py experiments/nielsen_ch1.yaml --seeds 0 1 2 --book 95.42 --population
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import yaml

from torch_manualbp.lightning.cli import read_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="a manualbp YAML config, e.g. experiments/nielsen_ch1.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, each with one thread when > 1")
    parser.add_argument(
        "--population", action="store_true", help="train the seeds as one population (shuffling shared: data.seed)"
    )
    parser.add_argument("--book", type=float, help="the book's figure for this config, in percent, for the table")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"), help="where the .md and .png go")
    parser.add_argument("--runs", type=Path, default=Path("runs/report"), help="where the training logs go")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:split]), argv[split + 1 :]  # after --: more manualbp fit options
    name = args.config.stem
    if args.population:
        seconds, histories = train_population(args.config, name, args.seeds, args.runs, extra)
    else:
        seconds = train_seeds(args.config, name, args.seeds, args.jobs, args.runs, extra)
        histories = {seed: read_history(args.runs / name / f"seed_{seed}") for seed in args.seeds}
    args.out.mkdir(parents=True, exist_ok=True)
    table = results_table(name, histories, seconds, args.book)
    command = " ".join(["python", "experiments/report.py", *sys.argv[1:]])
    (args.out / f"{name}.md").write_text(f"Command: `{command}`\n\n{table}\n")
    cost = read_config(args.config).get("model", {}).get("cost", "quadratic")
    plot(name, histories, args.out / f"{name}.png", cost)
    print(table)


def train_seeds(config: Path, name: str, seeds: list[int], jobs: int, runs: Path, extra: list[str]) -> dict[int, float]:
    """Train one ``manualbp fit`` process per seed, ``jobs`` at a time; return each one's wall-clock seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1") if jobs > 1 else dict(os.environ)
    pending, running, seconds = list(seeds), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            seed_config = write_seed_config(config, name, seed, runs)
            command = [sys.executable, "-m", "torch_manualbp.cli", "fit", "--config", str(seed_config), *extra]
            running[seed] = (subprocess.Popen(command, env=env), time.perf_counter())
        time.sleep(1)
        for seed, (process, start) in list(running.items()):
            if process.poll() is not None:
                if process.returncode != 0:
                    raise SystemExit(f"seed {seed}: manualbp fit exited with {process.returncode}")
                seconds[seed] = time.perf_counter() - start
                del running[seed]
    return seconds


def train_population(config: Path, name: str, seeds: list[int], runs: Path, extra: list[str]):
    """Train the seeds as one population (one ``manualbp fit``); return each seed's seconds (the whole run's) and
    history, read from the members' metrics (``val/accuracy/member{k}`` ...)."""
    settings = read_config(config)
    settings["population"] = {"seeds": list(seeds)}
    path = write_run_config(settings, runs, name, "population")
    # one thread unless the user chose: with other processes busy beside it, the default two threads made an epoch of
    # nielsen_ch1_seeds.yaml take 267 s here, against 2.7 s with one
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    start = time.perf_counter()
    command = [sys.executable, "-m", "torch_manualbp.cli", "fit", "--config", str(path), *extra]
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        raise SystemExit(f"population: manualbp fit exited with {done.returncode}")
    seconds = time.perf_counter() - start
    together = read_history(runs / name / "population")
    histories = {
        seed: {key[: -len(f"/member{k}")]: values for key, values in together.items() if key.endswith(f"/member{k}")}
        for k, seed in enumerate(seeds)
    }
    return dict.fromkeys(seeds, seconds), histories


def write_seed_config(config: Path, name: str, seed: int, runs: Path) -> Path:
    """The config with this seed (initialisation and shuffling) and its own log and checkpoint folder."""
    settings = read_config(config)
    settings["seed_everything"] = seed
    settings.setdefault("data", {})["seed"] = seed
    return write_run_config(settings, runs, name, f"seed_{seed}")


def write_run_config(settings: dict, runs: Path, name: str, version: str) -> Path:
    """``settings`` with their own log and checkpoint folder, ``runs/name/version``, written beside it."""
    run_dir = runs / name / version
    trainer = settings.setdefault("trainer", {})
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(runs), "name": name, "version": version},
    }
    for callback in trainer.get("callbacks", []):
        if "dirpath" in callback.get("init_args", {}):
            callback["init_args"]["dirpath"] = str(run_dir / "last")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = runs / name / f"{version}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def read_history(run_dir: Path) -> dict[str, dict[int, float]]:
    """metric name -> {epoch: value}, from a CSVLogger's metrics.csv (one row per logging event)."""
    history: dict[str, dict[int, float]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("epoch", "step") and value != "":
                    history.setdefault(key, {})[int(row["epoch"])] = float(value)
    return history


def results_table(name: str, histories: dict, seconds: dict, book: float | None) -> str:
    """Per seed: best validation accuracy and its epoch, test accuracy there, best test accuracy; then medians."""
    columns = ["seed", "best val. accuracy (epoch)", "test acc. at that epoch", "best test acc. (epoch)", "wall-clock"]
    lines = [f"Results of `{name}` ({len(histories)} seeds)", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + " --- |" * len(columns))
    val, test_at_val, best_test = [], [], []
    for seed, h in histories.items():
        if "test/accuracy" not in h:
            raise SystemExit(f"seed {seed} has no per-epoch test accuracy: the config needs data.monitor_test: true")
        val_acc, test_acc = h["val/accuracy"], h["test/accuracy"]
        epoch = max(val_acc, key=val_acc.get)
        test_epoch = max(test_acc, key=test_acc.get)
        val.append(100 * val_acc[epoch])
        test_at_val.append(100 * test_acc[epoch])
        best_test.append(100 * test_acc[test_epoch])
        lines.append(
            f"| {seed} | {val[-1]:.2f}% ({epoch}) | {test_at_val[-1]:.2f}% | {best_test[-1]:.2f}% ({test_epoch}) "
            f"| {seconds[seed]:.0f} s |"
        )
    median = statistics.median
    lines.append(
        f"| median | {median(val):.2f}% | {median(test_at_val):.2f}% | {median(best_test):.2f}% "
        f"| {median(seconds.values()):.0f} s |"
    )
    if book is not None:
        lines.append(f"| the book | | | {book:.2f}% | |")
    return "\n".join(lines)


def plot(name: str, histories: dict, path: Path, cost: str = "quadratic") -> None:
    fig, (acc_ax, cost_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (seed, h) in enumerate(histories.items()):
        for ax, metric, keys in ((acc_ax, "accuracy", ("val", "test")), (cost_ax, "cost", ("train", "val"))):
            for key, style in zip(keys, ("-", ":")):
                epochs = sorted(h[f"{key}/{metric}"])
                values = [h[f"{key}/{metric}"][e] * (100 if metric == "accuracy" else 1) for e in epochs]
                ax.plot(epochs, values, style, color=f"C{i}", label=f"{key}, seed {seed}")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{name}: accuracy per epoch")
    cost_ax.set(
        xlabel="epoch", ylabel=f"{cost.replace('_', '-')} cost C", title=f"{name}: cost per epoch", yscale="log"
    )
    for ax in (acc_ax, cost_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
