r"""``manualbp fit|validate|test``: LightningCLI over ``ManualBPClassifier`` and ``MNISTDataModule``.

To run::

    manualbp fit --config experiments/nielsen_ch1.yaml
    manualbp fit --config experiments/nielsen_ch1.yaml --trainer.accelerator cuda
    manualbp fit --config experiments/nielsen_ch1.yaml --ckpt_path last   # resume an interrupted run
"""
from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from .datamodule import MNISTDataModule
from .module import ManualBPClassifier


def run(args: list[str] | None = None) -> LightningCLI:
    """Run the Lightning CLI on ``args`` (``fit``/``validate``/``test`` and their options), or on ``sys.argv``."""
    return LightningCLI(
        ManualBPClassifier,
        MNISTDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
