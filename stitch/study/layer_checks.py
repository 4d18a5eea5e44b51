"""Layer names and ranks checked against untrained networks, before any donor is trained or data read, and
the expansion of ``layer``/``target_layer`` into the study's (source, target) pairs: one definition of which
pairs a study runs, used by the check and by the study itself."""
from __future__ import annotations

from .. import models
from ..errors import ConfigError
from ..models import StitchableNetwork
from ..settings import ModelSpec, StudySettings, _raise, shown


def layer_pairs(layer, target_layer, m1: StitchableNetwork, m2: StitchableNetwork) -> list[tuple[str, str]]:
    """Expand ``layer``/``target_layer`` into canonical (L, M) pairs.

    Each is ``all`` (the family's default group, e.g. block outputs), ``every``, a group name
    (Tiny-10 ``bn``: every pre-activation point), a layer name or alias, or a list of these;
    ``target_layer=None`` pairs each source layer with itself.
    """
    as_list = lambda v: v if v is None or isinstance(v, str) else [str(x) for x in v]  # noqa: E731
    sources = list(dict.fromkeys(m1.select_layers(as_list(layer))))  # relu3 and its alias layer3 are one layer
    if target_layer is None:
        for L in sources:
            if L not in m2.layers:
                raise ConfigError(f"target_layer is unset, so the target is the source layer {L!r}, which model 2 "
                                  f"({m2.family}) does not have; pass target_layer=<name> or target_layer=all. "
                                  f"Model 2 layers: {', '.join(m2.layers)}")
        return [(L, L) for L in sources]
    targets = list(dict.fromkeys(m2.select_layers(as_list(target_layer))))
    return [(L, M) for L in sources for M in targets]



def check_layers(s: StudySettings, num_classes: int, input_shape: tuple[int, ...] | None = None) -> None:
    """Reject layer names the two models do not have, and ranks above the channels of a layer pair,
    using untrained networks (no donor needed).

    Names are resolved as the study does (aliases, groups, ``all``: ``StitchableNetwork.select_layers``).
    """
    def build(m: ModelSpec, which: str):
        try:
            return models.build(m.name, num_classes, **dict(m.options or {}))
        except (TypeError, ValueError, KeyError) as e:  # an option value the family cannot take
            raise ConfigError(f"{which}.options={shown(m.options)}: {m.name} cannot be built with them ({e})") from None

    m1 = build(s.model1, "model1")
    nets = {"model1": m1, "model2": m1 if s.self_stitch_possible else build(s.model2, "model2")}
    problems: list[str] = []
    if input_shape is not None:  # e.g. a 224-px ViT on 32-px images: say so before any donor is trained
        for which, net in nets.items():
            spec: ModelSpec = getattr(s, which)
            try:
                net.layer_shapes(tuple(input_shape))
            except Exception as e:  # noqa: BLE001 - any failure here means the input does not fit
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                problems.append(f"{which}={spec.name} {spec.options or {}} cannot take "
                                f"{s.data.name} images of shape {tuple(input_shape)} ({first}); pick a "
                                f"matching input size (e.g. model@{which}=vit_tiny_32 or {which}.options.img_size=...)")
        _raise(problems)
    selected = {}
    for key, which in (("layer", "model1"), ("target_layer", "model2")):
        if getattr(s, key) is not None:
            try:
                selected[key] = nets[which].select_layers(getattr(s, key))
            except models.UnknownLayerError as e:
                problems.append(f"{key}={shown(getattr(s, key))} ({which}): {e}")
    if s.target_layer is None and "layer" in selected:  # the target is the source layer: model 2 must have it
        try:
            layer_pairs(s.layer, None, nets["model1"], nets["model2"])
        except ConfigError as e:
            problems.append(str(e))
    if not problems and input_shape is not None:
        problems += _rank_problems(s, nets, tuple(input_shape))
    _raise(problems)


def _rank_problems(s: StudySettings, nets: dict, input_shape: tuple[int, ...]) -> list[str]:
    """A low-rank layer (TLM ``rank``, DM ``solver=rank``) of rank above min(C_in, C_out) is not low rank."""
    ranked = {name: m.rank for name, m in s.method.items()
              if m.rank is not None and (m.kind == "tlm" or m.solver == "rank")}
    if not ranked:
        return []
    pairs = layer_pairs(s.layer, s.target_layer, nets["model1"], nets["model2"])
    shapes1, shapes2 = nets["model1"].layer_shapes(input_shape), nets["model2"].layer_shapes(input_shape)
    channels = lambda shape: shape[0] if len(shape) == 3 else shape[-1]  # noqa: E731 - conv C x H x W, tokens T x D
    most = min(min(channels(shapes1[L]), channels(shapes2[M])) for L, M in pairs)
    return [f"{name}.rank={shown(r)}: expected a positive integer <= {most} (the fewest channels of the "
            f"layer pairs)" for name, r in ranked.items() if r > most]
