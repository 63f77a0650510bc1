"""What the ``manualbp`` command prints and writes: the book's line per epoch, the summary and its chart, ``test``'s
accuracy, ``predict`` on the user's own images, and the refusal of a checkpoint that could run code.

The references are independent of the code under test: Lightning's own metrics file (torchmetrics' accuracy), the
network applied by hand to the raw MNIST tensors, and PIL opening the files named.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, ROOT, manualbp, metrics, write_config
from PIL import Image

from torch_manualbp.images import mnist_like
from torch_manualbp.lightning import ManualBPClassifier
from torch_manualbp.mnist import load_mnist

EPOCH_LINE = re.compile(
    r"^Epoch (\d+): (\d+) / (\d+) test images; validation (\d+\.\d\d)%, training cost (\d\.\d{4}), \d+\.\d s$"
)
PREDICT_LINE = re.compile(
    r"^(.+): predicted (\d) \(top 2 output activations: (\d) (\d\.\d{3}), (\d) (\d\.\d{3})\)(; .*)?$"
)


@pytest.fixture(scope="module")
def mnist() -> dict[str, torch.Tensor]:
    return load_mnist(DATA_DIR)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short real run of the chapter-1 config (test set monitored, as the book does): its directory, config and
    output."""
    tmp_path = tmp_path_factory.mktemp("fit")
    config = write_config(
        tmp_path,
        model={"init": "scaled"},
        data={"batch_size": 20},
        trainer={"max_epochs": 2, "limit_train_batches": 300},
    )
    result = manualbp("fit", "--config", config)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, config, result


def _network(checkpoint: Path) -> torch.nn.Module:
    model = ManualBPClassifier([784, 30, 10])
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    return model.network.eval()


def _summary_value(stdout: str, label: str) -> str:
    return next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith(label + ": "))


# --- fit: the book's line, the summary, the chart ------------------------------------------------------------------


def test_fit_prints_the_books_line_after_every_epoch_with_the_exact_count_of_correct_test_images(trained):
    tmp_path, _, result = trained
    assert "\r" not in result.stdout
    lines = [EPOCH_LINE.match(line) for line in result.stdout.splitlines() if line.startswith("Epoch ")]
    assert len(lines) == 2 and all(lines), result.stdout
    evaluated = [row for row in metrics(tmp_path) if row["test/accuracy"]]
    trained_rows = [row for row in metrics(tmp_path) if row["train/cost"]]
    for epoch, (match, row, train_row) in enumerate(zip(lines, evaluated, trained_rows)):
        assert int(match[1]) == epoch and int(match[3]) == 10_000
        # torchmetrics' accuracy, written by Lightning's CSV logger, times the 10,000 test images
        assert int(match[2]) == round(float(row["test/accuracy"]) * 10_000)
        assert float(match[4]) == pytest.approx(100 * float(row["val/accuracy"]), abs=0.005)
        assert float(match[5]) == pytest.approx(float(train_row["train/cost"]), abs=5e-5)


def test_fit_ends_with_a_summary_of_the_best_and_last_epochs_and_files_that_exist(trained):
    tmp_path, _, result = trained
    rows = [row for row in metrics(tmp_path) if row["val/accuracy"]]
    val = [float(row["val/accuracy"]) for row in rows]
    best = max(range(len(val)), key=lambda epoch: (val[epoch], -epoch))
    best_line = _summary_value(result.stdout, f"Best epoch {best} (by validation accuracy)")
    expected = [round(float(rows[best][key]) * 10_000) for key in ("val/accuracy", "test/accuracy")]
    assert best_line == (
        f"validation {expected[0]} / 10000 ({expected[0] / 100:.2f}%), "
        f"test {expected[1]} / 10000 ({expected[1] / 100:.2f}%)"
    )
    assert _summary_value(result.stdout, f"Last epoch {len(val) - 1}").startswith("validation ")
    assert re.search(r"^Finished 2 epochs in \d+\.\d s$", result.stdout, re.MULTILINE)
    best_checkpoint = Path(_summary_value(result.stdout, "Best checkpoint"))
    assert best_checkpoint.name == f"best-epoch={best}.ckpt" and best_checkpoint.is_file()
    assert Path(_summary_value(result.stdout, "Last checkpoint")) == tmp_path / "config" / "last" / "last.ckpt"
    assert Path(_summary_value(result.stdout, "Metrics")) == tmp_path / "runs" / "config" / "version_0" / "metrics.csv"
    chart = Path(_summary_value(result.stdout, "Curves"))
    assert chart.parent == tmp_path / "runs" / "config" / "version_0"
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 200
        image.load()  # decodes the whole file: a truncated PNG fails here


def test_manualbp_test_prints_its_accuracy_in_the_words_of_the_summary(trained, mnist):
    tmp_path, config, _ = trained
    checkpoint = tmp_path / "config" / "last" / "last.ckpt"
    result = manualbp("test", "--config", config, "--ckpt_path", checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        a = _network(checkpoint)(mnist["test_images"].reshape(-1, 784).float() / 255)
    correct = int((a.argmax(1) == mnist["test_labels"]).sum())
    assert re.search(rf"^Test: {correct} / 10000 \({correct / 100:.2f}%\), test cost \d\.\d{{4}}$", result.stdout, re.M)


def test_epoch_line_says_validation_images_when_the_test_set_is_not_monitored_and_report_false_drops_it(tmp_path):
    config = write_config(tmp_path, data={"monitor_test": False}, trainer={"max_epochs": 1, "limit_train_batches": 50})
    shown = manualbp("fit", "--config", config)
    assert shown.returncode == 0, shown.stderr[-3000:]
    line = next(line for line in shown.stdout.splitlines() if line.startswith("Epoch "))
    assert re.fullmatch(
        r"Epoch 0: \d+ / 10000 validation images \(\d+\.\d\d%\); training cost \d\.\d{4}, \d+\.\d s", line
    )
    dropped = manualbp("fit", "--config", config, "--report", "false", "--trainer.limit_train_batches", "5")
    assert dropped.returncode == 0, dropped.stderr[-3000:]
    assert "Epoch " not in dropped.stdout and "Best epoch" not in dropped.stdout


# --- predict -------------------------------------------------------------------------------------------------------


def test_mnist_test_images_saved_as_images_come_back_unchanged_white_on_black_or_inverted(mnist):
    for image in mnist["test_images"][:200]:
        expected = image.reshape(-1).float() / int(image.max())  # the strongest stroke becomes 1
        white_on_black, inverted = mnist_like(Image.fromarray(image.numpy()))
        assert not inverted and torch.equal(white_on_black, expected)
        black_on_white, inverted = mnist_like(Image.fromarray(255 - image.numpy()).convert("RGB"))
        assert inverted and torch.equal(black_on_white, expected)


def test_a_large_off_centre_dark_digit_is_fitted_into_20_pixels_with_its_mass_at_the_centre():
    canvas = torch.full((300, 200), 230, dtype=torch.uint8)  # light grey paper, a dark "7" in its upper left part
    canvas[20:40, 10:130] = 10  # the bar
    for row in range(40, 260):  # the stroke down, leaning left
        column = 120 - (row - 40) // 4
        canvas[row, column - 10 : column + 10] = 10
    pixels, inverted = mnist_like(Image.fromarray(canvas.numpy()))
    field = pixels.reshape(28, 28)
    assert inverted and field.min() >= 0 and field.max() <= 1 and field.max() > 0.9
    rows, cols = field.gt(0).any(1).nonzero(), field.gt(0).any(0).nonzero()
    height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert height == 20 and width == round(120 * 20 / 240)  # 240 x 120 pixels of ink, aspect kept
    grid = torch.arange(28, dtype=torch.float32)
    centre = ((field.sum(1) * grid).sum() / field.sum(), (field.sum(0) * grid).sum() / field.sum())
    assert all(abs(c - 14) <= 0.5 for c in centre)


def test_an_image_without_a_digit_or_not_an_image_is_refused_by_name():
    with pytest.raises(ValueError, match="holds no digit"):
        mnist_like(Image.new("L", (40, 40), 255))
    with pytest.raises(TypeError, match="image must be a PIL.Image.Image"):
        mnist_like(torch.zeros(28, 28))


def _predictions(stdout: str) -> dict[str, re.Match]:
    matches = [PREDICT_LINE.match(line) for line in stdout.splitlines()]
    return {Path(m[1]).name: m for m in matches if m}


def test_predict_on_pngs_of_mnist_test_images_answers_as_the_network_does_on_the_raw_tensors(trained, mnist, tmp_path):
    fit_dir, config, _ = trained
    checkpoint = fit_dir / "config" / "last" / "last.ckpt"
    images = mnist["test_images"][:12]
    for i, image in enumerate(images):
        Image.fromarray(image.numpy()).save(tmp_path / f"white_{i:02d}.png")
        Image.fromarray(255 - image.numpy()).save(tmp_path / f"dark_{i:02d}.png")
    result = manualbp("predict", "--config", config, "--ckpt_path", checkpoint, "--data.predict_path", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    pixels = images.reshape(-1, 784).float()
    with torch.no_grad():  # predict scales each image's strongest stroke to 1 (255 in 9 of 10 MNIST images)
        a = _network(checkpoint)(pixels / pixels.amax(1, keepdim=True))
    top = a.topk(2, dim=1)
    answers = _predictions(result.stdout)
    assert len(answers) == 24
    for i in range(len(images)):
        for name, note in (
            (f"white_{i:02d}.png", None),
            (f"dark_{i:02d}.png", "; inverted: a dark digit on a light background"),
        ):
            match = answers[name]
            assert int(match[2]) == int(match[3]) == top.indices[i, 0]
            assert int(match[5]) == top.indices[i, 1]
            # printed with 3 decimals: 5e-4 of rounding, plus float32 differences of the resampled image
            assert float(match[4]) == pytest.approx(top.values[i, 0].item(), abs=6e-4)
            assert float(match[6]) == pytest.approx(top.values[i, 1].item(), abs=6e-4)
            assert match[7] == note
    # the short run has learnt: most of these twelve are the digits the labels say
    assert sum(int(answers[f"white_{i:02d}.png"][2]) == mnist["test_labels"][i] for i in range(12)) >= 9


def _write_idx_images(path: Path, images: torch.Tensor) -> None:
    header = struct.pack(">iiii", 2051, *images.shape)
    path.write_bytes(gzip.compress(header + images.numpy().tobytes()))


def test_predict_on_an_idx_file_answers_each_image_as_the_network_does(trained, mnist, tmp_path):
    fit_dir, config, _ = trained
    checkpoint = fit_dir / "config" / "last" / "last.ckpt"
    images = mnist["test_images"][100:150]
    _write_idx_images(tmp_path / "digits-idx3-ubyte.gz", images)
    result = manualbp(
        "predict",
        "--config",
        config,
        "--ckpt_path",
        checkpoint,
        "--data.predict_path",
        tmp_path / "digits-idx3-ubyte.gz",
        "--data.eval_batch_size",
        "16",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = _network(checkpoint)(images.reshape(-1, 784).float() / 255).argmax(1)
    answers = _predictions(result.stdout)
    assert [int(answers[f"digits-idx3-ubyte.gz[{i}]"][2]) for i in range(50)] == expected.tolist()


def test_predict_on_a_directory_with_a_corrupt_file_answers_the_others_and_exits_non_zero(trained, mnist, tmp_path):
    fit_dir, config, _ = trained
    for i in range(3):
        Image.fromarray(mnist["test_images"][i].numpy()).save(tmp_path / f"digit_{i}.png")
    good = (tmp_path / "digit_1.png").read_bytes()
    (tmp_path / "digit_1b.png").write_bytes(good[: len(good) // 2])  # a PNG cut in half
    result = manualbp(
        "predict",
        "--config",
        config,
        "--ckpt_path",
        fit_dir / "config" / "last" / "last.ckpt",
        "--data.predict_path",
        tmp_path,
    )
    assert result.returncode == 2
    assert set(_predictions(result.stdout)) == {"digit_0.png", "digit_1.png", "digit_2.png"}
    unreadable = [line for line in result.stdout.splitlines() if "cannot read it" in line]
    assert len(unreadable) == 1 and unreadable[0].startswith(str(tmp_path / "digit_1b.png") + ": cannot read it: ")
    errors = result.stderr.strip().splitlines()
    assert errors[-1] == f"manualbp: error: 1 image file(s) could not be read: {tmp_path / 'digit_1b.png'}"
    assert "Traceback" not in result.stderr


class _RunsCode:
    """Unpickling this object runs a shell command: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("subcommand", ["fit", "predict"])
def test_a_checkpoint_that_weights_only_refuses_is_one_line_exit_2_and_nothing_runs_or_is_written(tmp_path, subcommand):
    marker = tmp_path / "code_ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, hostile)
    work = tmp_path / "work"
    work.mkdir()
    config = write_config(work, trainer={"max_epochs": 1, "default_root_dir": str(work)})
    before = sorted(p.name for p in work.rglob("*"))
    result = manualbp(
        subcommand, "--config", config, "--ckpt_path", hostile, "--data.predict_path", ROOT / "data", cwd=work
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"manualbp: error: ckpt_path {str(hostile)!r}: ")
    assert (
        "refused to load it (it holds objects that could run code)" in result.stderr and "posix.system" in result.stderr
    )
    assert not marker.exists()
    assert sorted(p.name for p in work.rglob("*")) == before  # nothing written


def test_a_predict_path_that_does_not_exist_is_one_line_naming_it(tmp_path, capsys):
    from torch_manualbp.cli import main

    config = write_config(tmp_path, trainer={"max_epochs": 1})
    missing = tmp_path / "no_such_digits"
    assert main(["predict", "--config", str(config), "--data.predict_path", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"manualbp: error: data.predict_path {str(missing)!r} does not exist; give an image file, a directory"
        " of images or an IDX images file"
    ]
