"""The console commands (``stitch-run``, ``stitch-train``, ``stitch-sweep``; see ``pyproject.toml``).

Each module holds one Hydra entry point reading the packaged configs (``stitch/conf``), so
the commands work from any directory once the package is installed (``pip install .``).
The root scripts ``stitch.py``, ``train_models.py`` and ``sweep.py`` call the same
functions. The module names are the Hydra job names (``stitch``, ``train_models``,
``sweep``): log files and launcher job names stay what they were.
"""
