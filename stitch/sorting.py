"""Natural order of names with numbers in them: ``layer2`` before ``layer10``."""
from __future__ import annotations

import re

_DIGITS = re.compile(r"(\d+)")


def natural_key(s) -> tuple:
    """'layer10' after 'layer2', 'layer1.1' after 'layer1.0', 'blocks.2' before 'blocks.10': digit runs
    compare as numbers. Any value is compared by its ``str``; the key never compares a number with text."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in _DIGITS.split(str(s)) if t)
