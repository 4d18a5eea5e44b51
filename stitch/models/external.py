"""Any torchvision or timm classifier (or any ``nn.Module``) as a stitchable network.

``TracedNetwork`` traces the wrapped module with ``torch.fx`` once and reads its cut
points off the graph; nothing in the module is rewritten and no forward hook is used.

Why dominators
--------------
A cut point ``L`` must carry *everything* the rest of the network needs:
``forward_from(h, L)`` only gets the activation at ``L``. In graph terms, every path
from the input to the output must pass through ``L``: ``L`` *dominates* the output.
A residual block's output dominates, but the convolutions inside its branch do not
(the shortcut bypasses them), nor does a tensor that is also used later through a skip
connection. Nodes that do not depend on the input at all (parameters, constants,
position tables) are not on any input-to-output path and are simply recomputed by
whichever half needs them. The dominators of the output form one chain (the chain of
immediate dominators), computed in a single pass over the graph's topological order.

Default cut points are the outputs of the model's child modules, named by module path:
pure containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) are expanded
into their elements (``layer1.0``, ``features.4``, ``blocks.3``), any other module is one
unit (a residual block, an inception module, a patch embedding), except that a unit
wrapping a container of blocks (torchvision ViT's ``encoder``, a timm ConvNeXt stage) is
opened the same way when that gives it two or more cut points (``encoder.layers.encoder_layer_3``,
``stages.1.blocks.0``); this is decided per class, so blocks of one kind are all listed at
the same depth. Of those outputs only dominators are kept, and modules that are the
identity at inference (``Identity``, ``Dropout``) are skipped as mere repeats of the
previous point. Container elements form the ``blocks`` group (the default, ``layer=all``),
the other points (stem, pooling, final norm) the ``top`` group. ``layers=[...]`` names cut points
explicitly: module paths, or names of functional nodes qualified by the module that runs
them (``layer1.0.add``: a residual sum before its ReLU; ``adaptive_avg_pool2d``), each checked
to be a dominator; an invalid name gets the list of valid ones.

Exactness: ``forward_to``/``forward_between``/``forward_from`` run generated Python code
for a slice of the traced graph, calling the live modules of the wrapped model in the
original order, so ``forward_from(forward_to(x, L), L)`` equals ``forward(x)`` bit for bit
(``forward`` calls the wrapped module itself). Code that ``torch.fx`` resolves at trace
time (``if self.training:`` in a traced forward) is traced separately for train and eval.
"""
from __future__ import annotations

import difflib
import logging
from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch
from torch import fx, nn

from .base import StitchableNetwork
from .graph import CONTAINERS, INFERENCE_IDENTITIES, ExternalModelError, Trace, closure, may_mutate, trace_module

log = logging.getLogger(__name__)

__all__ = ["ExternalModelError", "TracedNetwork", "timm_model", "torchvision_model"]


# ---------------------------------------------------------------------------------- wrapper
# nn.Module's registries: sharing them makes the wrapper's parameters, buffers, children and
# state-dict keys exactly the wrapped model's (``conv1.weight``), and keeps both in sync
# under ``.to()``, ``load_state_dict(assign=True)`` or a replaced submodule.
_SHARED_REGISTRIES = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")


class TracedNetwork(StitchableNetwork):
    """A stitchable view of any single-input ``nn.Module`` (see the module docstring).

    ``state_dict()`` has the wrapped model's own keys, so its checkpoints load directly.
    ``layers``: explicit cut points (module paths or qualified node names such as
    ``layer1.0.add``) instead of the discovered ones; each must dominate the output.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | str | None = None, family: str = ""):
        super().__init__()
        for attr in _SHARED_REGISTRIES:
            object.__setattr__(self, attr, getattr(model, attr))
        object.__setattr__(self, "_model", model)  # not registered: its children already are, under their own names
        self.training = model.training
        self.family = family or type(model).__name__
        self._traces: dict[bool, Trace] = {}
        self._fns: dict[tuple, Callable] = {}
        # cut points are chosen on the inference graph
        was_training = model.training
        model.train(False)
        try:
            trace = self._traces[False] = trace_module(model, self.family)
        finally:
            model.train(was_training)
        if layers is None:
            names, groups = self._discover(trace)
        else:
            names = self._check_explicit([layers] if isinstance(layers, str) else [str(n) for n in layers], trace)
            groups = {"layers": names}
        self.set_cut_points(names, groups)  # no chain of stages here: the traced graph's nodes are the cut points

    @property
    def wrapped(self) -> nn.Module:
        """The torchvision/timm module itself (its parameters are this network's)."""
        return self._model

    def extra_repr(self) -> str:
        return f"family={self.family!r}, layers={len(self.layers)}"

    # ------------------------------------------------------------------ cut points
    def _discover(self, trace: Trace) -> tuple[list[str], dict[str, list[str]]]:
        """Child-module outputs that dominate the output, in forward order (see the module docstring)."""
        def is_cut(path: str, module: nn.Module) -> bool:
            return not isinstance(module, INFERENCE_IDENTITIES) and trace.module_outputs.get(path) in trace.dominators

        inside: dict[str, list[tuple[str, bool]]] = {}  # module path -> the points found in it when opened

        def points(prefix: str, module: nn.Module, in_container: bool) -> list[tuple[str, bool]]:
            """(module path, is a container element) of the cut points among ``module``'s children."""
            out: list[tuple[str, bool]] = []
            for name, child in module.named_children():
                path = prefix + name
                if type(child) in CONTAINERS:  # exact type: Conv2dNormActivation subclasses Sequential
                    out += points(path + ".", child, True)
                elif opens(type(child)):
                    out += opened(path, child)
                elif is_cut(path, child):
                    out.append((path, in_container))
            return out

        def opened(path: str, module: nn.Module) -> list[tuple[str, bool]]:
            if path not in inside:
                inside[path] = []  # a module nested in one of its own class stays closed
                inside[path] = points(path + ".", module, False)
            return inside[path]

        decided: dict[type, bool] = {}

        def opens(cls: type) -> bool:
            # A unit that wraps a sequence of blocks (torchvision's ViT ``encoder``, a timm
            # ConvNeXt/Swin stage) is opened when that gives it >= 2 cut points. The decision
            # is per class, so that blocks of one kind (MobileNet's inverted residuals, with
            # and without a shortcut) are all listed at the same depth.
            if cls not in decided:
                decided[cls] = False
                instances = [(p, m) for p, m in self._model.named_modules() if type(m) is cls]
                decided[cls] = all(any(type(c) in CONTAINERS for c in m.children()) and len(opened(p, m)) >= 2
                                   for p, m in instances)
            return decided[cls]

        found = points("", self._model, False)
        logits = trace.output.args[0]  # a cut after the logits would be pointless
        order = sorted(range(len(found)), key=lambda i: trace.index[trace.module_outputs[found[i][0]]])
        names, blocks, seen = [], [], set()
        for i in order:
            path, in_container = found[i]
            node = trace.module_outputs[path]
            if node in seen or node is logits:  # two names for one tensor: keep the first
                continue
            seen.add(node)
            names.append(path)
            if in_container:
                blocks.append(path)
        if not names:
            valid = trace.valid_names()
            hint = (f"pass model.options.layers=[...] with some of these node names or module paths: "
                    f"{', '.join(valid)}" if valid else "no node of its graph does (e.g. the input's shape is used "
                    "near the output), so it cannot be cut")
            raise ExternalModelError(f"{self.family}: no child module's output is passed through by every path from "
                                     f"the input to the output; {hint}")
        top = [n for n in names if n not in blocks]
        groups = {"blocks": blocks, "top": top} if blocks else {"top": top}
        return names, {g: m for g, m in groups.items() if m}

    def _check_explicit(self, names: list[str], trace: Trace) -> list[str]:
        unknown = [n for n in names if trace.node_of(n) is None]
        bypassed = [n for n in names if n not in unknown and trace.node_of(n) not in trace.dominators]
        if unknown or bypassed or not names:
            problems = []
            if bypassed:
                problems.append(f"{bypassed} {'is not a cut point' if len(bypassed) == 1 else 'are not cut points'}: "
                                "some path from the input to the output bypasses it (a residual shortcut or "
                                "another branch), so the rest of the network needs more than its activation")
            if unknown:
                problems.append(f"{unknown} {'is' if len(unknown) == 1 else 'are'} neither a module called once in "
                                "forward nor a node name")
            if not names:
                problems.append("the list is empty")
            raise ExternalModelError(f"model.options.layers for {self.family}: {'; '.join(problems)}. Valid cut "
                                     f"points: {', '.join(trace.valid_names())}")
        return sorted(dict.fromkeys(names), key=lambda n: trace.index[trace.node_of(n)])  # forward order

    def _trace_for(self, training: bool) -> Trace:
        """The graph for the current mode; the train-mode one is traced on first use."""
        trace = self._traces.get(training)
        if trace is None:
            trace = trace_module(self._model, self.family)
            missing = [n for n in self.layers if trace.node_of(n) not in trace.dominators]
            if missing:
                raise ExternalModelError(
                    f"{self.family}: {missing} are not cut points of its {'train' if training else 'eval'}-mode "
                    f"graph (its forward branches on self.training); cut it in the mode its layers were "
                    f"chosen in (eval), or pick other layers")
            self._traces[training] = trace
        return trace

    # ------------------------------------------------------------------ compiled graph slices
    def _compile(self, trace: Trace, source: fx.Node | None, result: Any, label: str,
                 to_output: bool = False) -> Callable:
        """Python code computing ``result`` (nodes) from the input, or from the value of ``source``.

        Runs the nodes ``result`` needs (input-independent ones included) in the traced
        order, plus the dead ends (asserts, unused in-place writes) that lie between
        ``source`` and ``result`` and that it can compute, so that the two halves of a split
        together run what ``forward`` runs. When the slice may write in place
        (``ReLU(inplace=True)`` right after the cut) it works on a copy of ``source``: the
        caller's activation must stay intact.

        The code refers to the model as ``self`` and is called with the live wrapped model
        (as fx's ``GraphModule`` is, but without its copied attribute references, which
        ``.to()`` or ``load_state_dict(assign=True)`` would leave stale).
        """
        roots: list[fx.Node] = []
        fx.node.map_arg(result, roots.append)
        keep = closure(roots, source)
        if source is None:
            keep.add(trace.input)
        elif trace.input in keep:
            raise AssertionError(f"{source.name} is not a cut point")  # excluded by the dominator check
        lo = -1 if source is None else trace.index[source]
        hi = trace.index[trace.output] if to_output else max(trace.index[r] for r in roots)
        for end in trace.dead_ends:
            if lo < trace.index[end] < hi:
                needed = closure([end], source)
                if source is None or trace.input not in needed:
                    keep |= needed
                elif may_mutate(end, self._model):  # a check may be skipped, a write may not
                    name = trace.qualnames.get
                    raise ExternalModelError(f"{self.family}: cannot cut at {name(source, source.name)}: the "
                                             f"in-place write {name(end, end.name)} after it needs tensors from "
                                             "before it")
        graph = fx.Graph()
        env: dict[fx.Node, Any] = dict(trace.constants)  # pinned arguments become literals
        if source is not None:
            h = graph.placeholder("h")
            if any(may_mutate(n, self._model) for n in keep):
                h = graph.call_method("clone", (h,))
            env[source] = h
        for n in trace.nodes:
            if n in keep and n not in env:
                env[n] = graph.node_copy(n, env.__getitem__)
        graph.output(fx.node.map_arg(result, env.__getitem__))
        code = graph.python_code(root_module="self")
        namespace = dict(code.globals)
        exec(compile(code.src, f"<{self.family} {label}>", "exec"), namespace)
        return namespace["forward"]  # forward(self, x_or_h), called with the live wrapped model as self

    def _slice(self, start: str | None, end: str | None) -> Callable:
        key = (self.training, start, end)
        fn = self._fns.get(key)
        if fn is None:
            trace = self._trace_for(self.training)
            source = None if start is None else trace.node_of(start)
            result = trace.output.args[0] if end is None else trace.node_of(end)
            if start is not None and end is not None and trace.index[source] >= trace.index[result]:
                raise ValueError(f"layer {end!r} does not come after {start!r} in {self.family}")
            fn = self._fns[key] = self._compile(trace, source, result, f"{start or 'input'} -> {end or 'output'}",
                                                to_output=end is None)
        return fn

    # ------------------------------------------------------------------ interface
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model(x)

    def forward_to(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Representation map R_L: the activation at (after) ``layer``."""
        return self._slice(None, self.check_layer(layer))(self._model, x)

    def forward_between(self, h: torch.Tensor, start: str | None, end: str) -> torch.Tensor:
        """Run from the activation at ``start`` (None: the input) up to ``end``."""
        end = self.check_layer(end)
        start = None if start is None else self.check_layer(start)
        if start == end:
            return h
        return self._slice(start, end)(self._model, h)

    def forward_from(self, h: torch.Tensor, layer: str) -> torch.Tensor:
        """Task map T_L: the logits given the activation at ``layer``."""
        return self._slice(self.check_layer(layer), None)(self._model, h)

    @torch.no_grad()
    def layer_shapes(self, input_shape: tuple[int, ...]) -> "OrderedDict[str, tuple[int, ...]]":
        """Activation shape (without batch dim) of every cut point for ``input_shape`` (C, H, W): one forward."""
        was_training = self.training
        self.eval()
        try:
            fn = self._fns.get("shapes")
            if fn is None:
                trace = self._trace_for(False)
                fn = self._fns["shapes"] = self._compile(trace, None, tuple(trace.node_of(n) for n in self.layers),
                                                         "layer shapes")
            p = next(self._model.parameters(), None)
            x = torch.zeros(1, *input_shape, device=p.device if p is not None else None)
            values = fn(self._model, x)
            return OrderedDict((n, tuple(v.shape[1:])) for n, v in zip(self.layers, values))
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ nn.Module plumbing
    def train(self, mode: bool = True) -> "TracedNetwork":
        super().train(mode)  # this wrapper and the (shared) children
        self._model.training = mode  # the wrapped module's own flag: its forward may read it
        return self

    def __getstate__(self) -> dict:
        # generated code cannot be pickled or deep-copied: it is rebuilt on first use
        state = dict(self.__dict__)
        state["_traces"], state["_fns"] = {}, {}
        return state


# ---------------------------------------------------------------------------------- builders
# torchvision models whose default build returns auxiliary logits in training (and warns
# about its init): the main classifier only, PyTorch's default init.
_TORCHVISION_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
                       "inception_v3": {"aux_logits": False, "init_weights": False}}


def _unknown_arch(library: str, arch: str, known: list[str], how: str) -> ExternalModelError:
    close = difflib.get_close_matches(arch, known, n=5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ExternalModelError(f"unknown {library} architecture {arch!r}{hint}; list the valid names with {how}")


def _as_layers(layers: Any) -> list[str] | None:
    if layers is None:
        return None
    return [layers] if isinstance(layers, str) else [str(n) for n in layers]  # a Hydra ListConfig too


def _build_with_size(build: Callable[..., nn.Module], size_arg: str, img_size: int | None, label: str) -> nn.Module:
    """Pass the image size only to models that take it (a ViT); other models accept any input size."""
    if not img_size:
        return build()
    try:
        return build(**{size_arg: img_size})
    except TypeError as e:
        if size_arg not in str(e):
            raise
        log.warning("%s takes no %s (it accepts any input size it supports); img_size=%s is ignored",
                    label, size_arg, img_size)
        return build()


def torchvision_model(num_classes: int = 1000, in_channels: int = 3, arch: str = "resnet18",
                      layers: Sequence[str] | None = None, img_size: int | None = None) -> TracedNetwork:
    """A torchvision classification model with random weights (``torchvision.models.get_model``)."""
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)  # classification models only
    if arch not in known and arch in tvm.list_models():
        raise ExternalModelError(f"torchvision model {arch!r} is not an image classifier (a detection, "
                                 "segmentation, video or quantized model); only classifiers can be stitched here")
    if arch not in known:
        raise _unknown_arch("torchvision", arch, known, "torchvision.models.list_models(module=torchvision.models)")
    if in_channels != 3:
        raise ExternalModelError(f"torchvision models take 3-channel images, not {in_channels}; "
                                 "use model=timm (its in_chans option) for other inputs")
    family = f"torchvision:{arch}"
    extra = _TORCHVISION_KWARGS.get(arch, {})
    model = _build_with_size(lambda **kw: tvm.get_model(arch, weights=None, num_classes=num_classes, **extra, **kw),
                             "image_size", img_size, family)
    return TracedNetwork(model, layers=_as_layers(layers), family=family)


def timm_model(num_classes: int = 1000, in_channels: int = 3, arch: str = "vit_tiny_patch16_224",
               layers: Sequence[str] | None = None, img_size: int | None = None) -> TracedNetwork:
    """A timm model with random weights (``timm.create_model(..., pretrained=False)``: nothing is downloaded)."""
    import timm

    if not timm.is_model(arch):
        raise _unknown_arch("timm", arch, timm.list_models(),
                            "timm.list_models() (wildcards: timm.list_models('vit*'))")
    family = f"timm:{arch}"
    model = _build_with_size(lambda **kw: timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                                            in_chans=in_channels, **kw), "img_size", img_size, family)
    return TracedNetwork(model, layers=_as_layers(layers), family=family)
