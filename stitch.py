"""Stitching experiments (installed: the ``stitch-run`` command; code: ``stitch/commands/stitch.py``).

    python stitch.py                                   # Tiny-10 on digits, donors seeds 0 and 1, every layer, TLM and DM
    python stitch.py -m layer=all method=tlm,dm seed=0,1,2
    python stitch.py layer=layer3 target_layer=all method=dm      # one row of the layer x layer matrix
    python stitch.py model@model2=resnet20 layer=layer4 target_layer=layer2.0
"""
from stitch.commands.stitch import main

if __name__ == "__main__":
    main()  # exit code: 0 all runs ok (or claimed by another process), 1 a run failed, 2 bad configuration
