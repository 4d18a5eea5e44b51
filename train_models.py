"""Train donor networks into the model store (installed: ``stitch-train``; code: ``stitch/commands/train_models.py``).

    python train_models.py                                   # Tiny-10 on digits, seed 0
    python train_models.py -m model=tiny10,resnet20 seed=0,1,2
    python train_models.py data=cifar10 model=resnet18 epochs=100 trainer=gpu
"""
from stitch.commands.train_models import main

if __name__ == "__main__":
    main()  # exit code: 0 trained (or already in the store), 1 failed, 2 bad configuration
