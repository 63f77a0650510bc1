r"""Write a few digit images to try ``manualbp predict`` on: MNIST test images saved as PNGs (light on dark, as
MNIST has them), one of them inverted and enlarged as if scanned from paper, and a "7" drawn with thick dark strokes
on light paper, off-centre, the way a user might draw one.

To run::

    python experiments/make_digits.py                 # writes experiments/digits/*.png
    manualbp predict --config experiments/nielsen_ch1.yaml --ckpt_path last --data.predict_path experiments/digits
"""

from pathlib import Path

from PIL import Image, ImageDraw

from torch_manualbp.mnist import load_mnist

OUT = Path(__file__).resolve().parent / "digits"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    mnist = load_mnist(Path(__file__).resolve().parents[1] / "data" / "mnist")
    for i in range(3):
        label = int(mnist["test_labels"][i])
        Image.fromarray(mnist["test_images"][i].numpy()).save(OUT / f"mnist_test_{i}_label_{label}.png")
    scanned = Image.fromarray(255 - mnist["test_images"][3].numpy()).resize((140, 140), Image.Resampling.BICUBIC)
    scanned.save(OUT / f"mnist_test_3_label_{int(mnist['test_labels'][3])}_dark_on_light.png")
    drawn = Image.new("L", (240, 200), 235)  # light grey paper
    pen = ImageDraw.Draw(drawn)
    pen.line([(30, 30), (130, 30), (80, 170)], fill=20, width=14, joint="curve")  # a 7, left of centre
    drawn.save(OUT / "drawn_7.png")


if __name__ == "__main__":
    main()
