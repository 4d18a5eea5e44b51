"""The uniform interface every stitchable network implements.

A stitchable network is an ordered chain of *stages* followed by a *head*::

    x -> stage_0 -> stage_1 -> ... -> stage_k -> head -> logits

Some stages end at a stitchable layer (their output is a representation one can
cut at); others are internal glue (e.g. a max-pool). ``forward_to(x, L)`` runs the
chain up to and including the stage named ``L``; ``forward_from(h, L)`` runs the
rest. Because both halves call exactly the same modules in the same order as
``forward``, ``forward_from(forward_to(x, L), L) == forward(x)`` holds bit for bit,
with no forward hooks involved.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError


class UnknownLayerError(ConfigError, ValueError):
    """Raised for a layer name the network does not expose (a configuration error: exit 2, one line)."""


class StitchableNetwork(nn.Module):
    """Base class: subclasses call ``_set_chain`` in ``__init__``.

    Cut points come in named *groups* (e.g. Tiny-10's ``conv``, ``bn``, ``relu``) so a
    study can select "every pre-activation point" by one word; ``layer=all`` means the
    family's default group (its block outputs). Old or paper-specific names can be
    *aliases* of a canonical name (``layer3`` -> ``relu3``); every method accepts them
    and ``check_layer`` returns the canonical name.
    """

    #: registry name of the family (set by subclasses)
    family: str = ""

    def _set_chain(self, stages: "OrderedDict[str, nn.Module]", head: nn.Module,
                   stitchable: Iterable[str] | None = None, register: bool = True,
                   groups: "dict[str, list[str]] | None" = None, default_group: str | None = None,
                   aliases: dict[str, str] | None = None) -> None:
        # ``register=False`` when the stages are already owned by the network's own attributes
        # (native checkpoint key names, e.g. ``conv1.weight``), so parameters are not listed twice.
        if register:
            # ModuleDict keys cannot contain '.', layer names (``layer1.0``) can
            self.stages = nn.ModuleDict({k.replace('.', '_'): m for k, m in stages.items()})
            self.head = head
        self._stage_mods = dict(stages)
        self._head_mod = head
        names = list(stages.keys())
        self._stage_names = names
        self._stage_index = {n: i for i, n in enumerate(names)}
        self.set_cut_points(names if stitchable is None else stitchable, groups, default_group, aliases)

    def set_cut_points(self, names: Iterable[str], groups: "dict[str, list[str]] | None" = None,
                       default_group: str | None = None, aliases: dict[str, str] | None = None) -> None:
        """Where this network may be cut, checked: ``names`` in forward order (stages of the chain, when it
        has one), named ``groups`` of them (the first, or ``default_group``, is what ``layer=all`` selects) and
        ``aliases`` (old or paper names of canonical ones). The one place cut points are set; subclasses and
        transforms (``fold.fold_batchnorm``) call it rather than writing the fields."""
        names = list(names)
        stages = getattr(self, "_stage_index", None)
        unknown = [n for n in names if stages is not None and n not in stages]
        if unknown:
            raise ValueError(f"stitchable layers {unknown} are not stages of {type(self).__name__}")
        groups = dict(groups or {"layers": names})
        for g, members in groups.items():
            if g in ("all", "every") or set(members) - set(names):
                raise ValueError(f"bad layer group {g!r} of {type(self).__name__}")
        groups = {g: [n for n in names if n in members] for g, members in groups.items()}
        if default_group is not None and default_group not in groups:
            raise ValueError(f"default layer group {default_group!r} is not a group of {type(self).__name__}")
        aliases = dict(aliases or {})
        bad = {a: c for a, c in aliases.items() if c not in names or a in names}
        if bad:
            raise ValueError(f"bad layer aliases {bad} of {type(self).__name__}")
        self._layers, self._groups, self._aliases = names, groups, aliases
        self._default_group = default_group or next(iter(groups))

    def drop_cut_points(self, gone: Iterable[str]) -> None:
        """Stop offering the cut points ``gone`` (e.g. a BatchNorm folded into its convolution): groups left
        empty, and aliases of them, go too; the default group stays if anything is left of it."""
        gone = set(gone)
        groups = {g: [n for n in m if n not in gone] for g, m in self._groups.items()}
        groups = {g: m for g, m in groups.items() if m}
        self.set_cut_points([n for n in self._layers if n not in gone], groups,
                            self._default_group if self._default_group in groups else None,
                            {a: c for a, c in self._aliases.items() if c not in gone})

    # ----------------------------------------------------------------- interface
    @property
    def layers(self) -> list[str]:
        """Every stitchable layer name (canonical), in forward order."""
        return list(self._layers)

    @property
    def layer_groups(self) -> "OrderedDict[str, list[str]]":
        """Named groups of cut points, the default group first (what ``layer=all`` selects)."""
        out = OrderedDict([(self._default_group, list(self._groups[self._default_group]))])
        out.update((g, list(m)) for g, m in self._groups.items() if g != self._default_group)
        return out

    @property
    def layer_aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def select_layers(self, spec: "str | Iterable[str]") -> list[str]:
        """Canonical names for ``all`` (the default group), ``every``, a group name, a name, an alias or a list."""
        if isinstance(spec, str):
            if spec == "all":
                return list(self._groups[self._default_group])
            if spec == "every":
                return self.layers
            if spec in self._groups:
                return list(self._groups[spec])
            return [self.check_layer(spec)]
        out = []
        for item in spec:
            out += self.select_layers(item)
        return out

    def check_layer(self, layer: str) -> str:
        """The canonical name of ``layer`` (an alias is resolved); an unknown name lists the valid ones."""
        layer = self._aliases.get(layer, layer)
        if layer not in self._layers:
            groups = "; ".join(f"{g}: {', '.join(m)}" for g, m in self.layer_groups.items())
            aliases = (f"; aliases: {', '.join(f'{a}={c}' for a, c in self._aliases.items())}"
                       if self._aliases else "")
            raise UnknownLayerError(
                f"unknown layer {layer!r} for model {self.family or type(self).__name__}; "
                f"valid layers are: {groups}{aliases} (or a group name, all, every)")
        return layer

    def forward_to(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Representation map R_L: the activation at (after) ``layer``."""
        return self.forward_between(x, None, layer)

    def forward_between(self, h: torch.Tensor, start: str | None, end: str) -> torch.Tensor:
        """Run from the activation at ``start`` (None: the input) up to and including ``end``."""
        end = self.check_layer(end)
        i = 0 if start is None else self._stage_index[self.check_layer(start)] + 1
        for name in self._stage_names[i:self._stage_index[end] + 1]:
            h = self._stage_mods[name](h)
        return h

    def forward_from(self, h: torch.Tensor, layer: str) -> torch.Tensor:
        """Task map T_L: the logits given the activation at ``layer``."""
        start = self._stage_index[self.check_layer(layer)] + 1
        for name in self._stage_names[start:]:
            h = self._stage_mods[name](h)
        return self._head_mod(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._stage_names:
            x = self._stage_mods[name](x)
        return self._head_mod(x)

    def upgrade_state_dict(self, state: dict) -> dict:
        """Translate checkpoint keys of earlier versions of this family (default: unchanged)."""
        return state

    @torch.no_grad()
    def layer_shapes(self, input_shape: tuple[int, ...]) -> "OrderedDict[str, tuple[int, ...]]":
        """Activation shape (without batch dim) of every stitchable layer for ``input_shape`` (C, H, W)."""
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(1, *input_shape, device=next(self.parameters()).device)
            shapes: "OrderedDict[str, tuple[int, ...]]" = OrderedDict()
            for name in self._stage_names:
                x = self._stage_mods[name](x)
                if name in self._layers:
                    shapes[name] = tuple(x.shape[1:])
            return _AliasDict(shapes, self._aliases)
        finally:
            self.train(was_training)


class _AliasDict(OrderedDict):
    """Layer -> value mapping that also answers to aliases (``shapes['layer3']`` is ``shapes['relu3']``)."""

    def __init__(self, items, aliases: dict[str, str]):
        super().__init__(items)
        self._aliases = aliases

    def __getitem__(self, key):
        return super().__getitem__(self._aliases.get(key, key))

    def __contains__(self, key) -> bool:
        return super().__contains__(self._aliases.get(key, key))


class _Ref(nn.Module):
    """Calls a module owned elsewhere without registering it twice (keeps native state-dict keys)."""

    def __init__(self, fn):
        super().__init__()
        self._fn = [fn]

    def forward(self, *args):
        return self._fn[0](*args)


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 bias: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def pool_linear(fc: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """Global average pool + linear classifier: the head of the CNNs here."""
    return fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))
