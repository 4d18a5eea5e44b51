"""``stitch-train`` (= ``python train_models.py``): train donor networks into the model store.

    stitch-train                                   # Tiny-10 on digits, seed 0
    stitch-train -m model=tiny10,resnet20 seed=0,1,2
    stitch-train data=cifar10 model=resnet18 epochs=100 trainer=gpu
"""
import hydra
from omegaconf import DictConfig

from stitch import cli
from stitch.settings import train_settings


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
@cli.job
def train(cfg: DictConfig) -> int:
    t = train_settings(cli.to_dict(cfg))
    _check_accelerator(t.trainer_args)
    from stitch.loggers import check_wandb_installed

    check_wandb_installed(t.logger)
    from stitch.donors import train_donor  # after the check: a typo fails before Lightning loads (seconds)

    train_donor(t)
    return 0  # failed runs: a failed training raises


def _check_accelerator(trainer: dict) -> None:
    """``trainer=gpu`` on a machine without one: one line before Lightning starts, not its traceback."""
    from stitch.hardware import check_device

    accelerator = str((trainer or {}).get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "mps"):
        check_device(accelerator, "trainer.accelerator", "trainer=default (accelerator: auto) or trainer.accelerator=cpu")
    devices = (trainer or {}).get("devices", 1)
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > 1:
        import torch

        if torch.cuda.device_count() < devices:
            from stitch.errors import ConfigError

            raise ConfigError(f"trainer.devices={devices}: this machine has {torch.cuda.device_count()} CUDA GPUs")


def main() -> None:
    cli.main(train)  # exit code: 0 trained (or already in the store), 1 failed, 2 bad configuration
