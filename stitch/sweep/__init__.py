"""Sweeps: collect stitching records into tables, aggregate over seeds, draw the papers' figures.

``collect``: records -> pandas tables (CSV/Parquet); ``figures``: matplotlib figures;
``lmc``: linear mode connectivity of saved stitching layers; ``gpus``: one GPU per
parallel Hydra job. Entry point: ``sweep.py``; workflow: ``docs/sweeps.md``.
"""
from .collect import Collection, aggregate, collect, export

__all__ = ["Collection", "aggregate", "collect", "export"]
