"""The names of the similarity indices and direct-matching solvers, importable without torch.

The settings layer checks a user's spelling against these before any compute module (and torch,
~2 s) is loaded; :mod:`stitch.similarity` and :mod:`stitch.matching.direct` register their
implementations under exactly these names, and refuse to import if the two lists drift apart.
"""

from __future__ import annotations

# stitch.similarity.INDICES holds one SimilarityIndex per name, in this order
SIMILARITY_INDICES: tuple[str, ...] = ("cka", "cka_debiased", "cca", "svcca", "pwcca", "r2", "opd")

# stitch.matching.direct.solve's kinds: least squares, orthogonal Procrustes, reduced rank, Lasso
DIRECT_MATCHING_KINDS: tuple[str, ...] = ("ls", "procrustes", "rank", "lasso")


def similarity_index_key(name: object) -> str:
    """How a similarity index name is looked up: case-insensitive, '-' and '_' interchangeable."""
    return str(name).strip().lower().replace("-", "_")


def is_similarity_index(name: object) -> bool:
    return similarity_index_key(name) in SIMILARITY_INDICES
