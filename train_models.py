"""Train donor networks into the model store.

    python train_models.py                                   # Tiny-10 on digits, seed 0
    python train_models.py -m model=tiny10,resnet20 seed=0,1,2
    python train_models.py data=cifar10 model=resnet18 epochs=100 trainer=gpu
"""
import hydra
from omegaconf import DictConfig

from stitch.cli import to_dict, user_errors_as_messages
from stitch.donors import train_donor


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@user_errors_as_messages
def main(cfg: DictConfig) -> float:
    c = to_dict(cfg)
    meta = train_donor(c["data"], c["model"], c["optim"], c["trainer"], c["epochs"], c["seed"], c["store"],
                       c["logger"], force=c["force"])
    return meta.get("metrics", {}).get("test_acc", float("nan"))


if __name__ == "__main__":
    main()
