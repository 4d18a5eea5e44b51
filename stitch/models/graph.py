"""The graph side of wrapping any ``nn.Module``: tracing it with ``torch.fx`` (modules of ``torch.nn`` and the
model's own blocks kept whole), the traced graph with its node order, the dominators of the output (the
only nodes a network may be cut at: see ``external.py``'s "Why dominators"), which nodes may mutate a
tensor in place, and the closure of the nodes a slice of the graph needs. ``TracedNetwork``
(``external.py``) builds its cut points and generated forward slices on these."""
from __future__ import annotations

import inspect
import logging
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from torch import fx, nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

class ExternalModelError(ConfigError, ValueError):
    """A model that cannot be wrapped as asked (a ``ValueError``, and a ``ConfigError`` for the CLI)."""


# pure containers: no forward logic of their own, so their elements are the natural units
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
# the identity at inference: a cut point after one only repeats the previous one
INFERENCE_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                         nn.FeatureAlphaDropout)
# Python operators that write into their first operand
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.imatmul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
                      operator.ilshift, operator.irshift, operator.setitem}
_INPLACE_DUNDERS = {f"__i{op}__" for op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow",
                                            "and", "or", "xor", "lshift", "rshift")} | {"__setitem__"}
_TORCH_NN = ("torch.nn.", "torch.ao.nn.")


# ---------------------------------------------------------------------------------- tracing
class _Tracer(fx.Tracer):
    """An fx tracer that records every module call's output node, a readable name for every
    node, and where a failure happened.

    ``leaves`` are extra module types kept as opaque calls (timm registers the ones its
    layers need); ``opaque`` are module paths whose own forward could not be traced.
    Node names are qualified by the module whose forward created them (``layer1.0.add``,
    not fx's graph-wide ``add_3``); a repeat in the same module gets ``_1``, ``_2``, ...
    """

    def __init__(self, leaves: tuple[type, ...], autowrap: tuple[Callable, ...], opaque: frozenset[str]):
        super().__init__(autowrap_functions=autowrap)
        self.leaves = leaves
        self.opaque = opaque
        self.outputs: dict[str, list[fx.Node | None]] = {}
        self.qualnames: dict[fx.Node, str] = {}
        self.failed_in: str | None = None  # innermost module whose forward raised ("" = the root's)
        self._scope = ""
        self._used: set[str] = set()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.opaque or isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        name = self.path_of_module(m)
        outer, self._scope = self._scope, name
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost call sees the exception first
                self.failed_in = name
            raise
        finally:
            self._scope = outer
        self.outputs.setdefault(name, []).append(out.node if isinstance(out, fx.Proxy) else None)
        return out

    def create_proxy(self, *args: Any, **kwargs: Any) -> fx.Proxy:
        proxy = super().create_proxy(*args, **kwargs)
        node = proxy.node
        if node.op == "call_module":
            base = str(node.target)
        else:
            local = re.sub(r"_\d+$", "", node.name)  # drop fx's graph-wide counter
            base = f"{self._scope}.{local}" if self._scope else local
        name, k = base, 0
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        self.qualnames[node] = name
        return proxy

    def trace(self, root: nn.Module, concrete_args: dict | None = None) -> fx.Graph:
        try:
            return super().trace(root, concrete_args)
        except Exception:
            if self.failed_in is None:
                self.failed_in = ""  # raised by the root's own forward
            raise


def _leaf_types_and_autowraps() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """timm's registry of modules/functions that fx must not trace into (empty without timm)."""
    try:
        from timm.models import _features_fx as timm_fx  # the same registry in timm 0.9 and 1.x
    except ImportError:
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(f for f in timm_fx.get_notrace_functions() if callable(f))


def _concrete_args(model: nn.Module) -> dict[str, Any]:
    """Pin every forward argument after the input to its default (``attn_mask=None``, ...).

    Otherwise fx would trace them as proxies and take Python branches on them blindly.
    """
    params = list(inspect.signature(model.forward).parameters.values())
    if not params:
        raise ExternalModelError(f"{type(model).__name__}.forward takes no input")
    out = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise ExternalModelError(f"{type(model).__name__}.forward needs more than one input ({p.name}); "
                                     "a stitchable network takes a single tensor")
        out[p.name] = p.default
    return out


@dataclass
class Trace:
    """One traced graph of the wrapped model (in train or eval mode) and its cut-point analysis."""

    graph: fx.Graph
    nodes: list[fx.Node]                    # execution (topological) order
    index: dict[fx.Node, int]
    input: fx.Node                          # the image placeholder
    output: fx.Node
    constants: dict[fx.Node, Any]           # pinned forward arguments -> their values
    module_outputs: dict[str, fx.Node]      # module path -> its output, for modules called exactly once
    dominators: set[fx.Node]                # nodes every input-to-output path goes through
    dead_ends: list[fx.Node]                # nodes nobody uses (asserts, in-place writes): see _compile
    qualnames: dict[fx.Node, str]           # node -> module-qualified name (``layer1.0.add``)
    opaque: set[str] = field(default_factory=set)
    by_name: dict[str, fx.Node] = field(init=False)

    def __post_init__(self) -> None:
        # fx's own names, then qualified names, then module paths: the later ones win a clash
        self.by_name = {n.name: n for n in self.nodes if n.op != "output"}
        self.by_name.update((q, n) for n, q in self.qualnames.items())
        self.by_name.update(self.module_outputs)

    def node_of(self, name: str) -> fx.Node | None:
        """A module path (``layer1.0``), a qualified node name (``layer1.0.add``) or fx's own node name."""
        return self.by_name.get(name)

    def valid_names(self) -> list[str]:
        """Every name that denotes a cut point: module paths first, else the qualified node name."""
        named = [(self.index[n], k) for k, n in self.module_outputs.items() if n in self.dominators]
        covered = {self.module_outputs[k] for _, k in named}
        named += [(self.index[n], self.qualnames.get(n, n.name)) for n in self.dominators if n not in covered]
        return [k for _, k in sorted(named, key=lambda t: t[0])]


def trace_module(model: nn.Module, label: str) -> Trace:
    """Trace ``model`` in its current train/eval mode.

    A submodule whose own forward cannot be traced (Python control flow on tensor values,
    ...) is retried as one opaque call: it stays exact, it just cannot be cut inside.
    Only a failure in the model's own forward is fatal.
    """
    leaves, autowrap = _leaf_types_and_autowraps()
    concrete = _concrete_args(model)
    opaque: set[str] = set()
    while True:
        tracer = _Tracer(leaves, autowrap, frozenset(opaque))
        try:
            graph = tracer.trace(model, concrete_args=concrete)
            break
        except ExternalModelError:
            raise
        except Exception as e:  # fx raises TraceError, TypeError, AttributeError, ... depending on the code
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = tracer.failed_in
            if where and where not in opaque:
                log.warning("%s: %s.forward cannot be traced by torch.fx (%s); calling it as one opaque module",
                            label, where, first)
                opaque.add(where)
                continue
            made_opaque = f" (already called as opaque modules: {', '.join(sorted(opaque))})" if opaque else ""
            raise ExternalModelError(
                f"{label} could not be traced by torch.fx: {type(e).__name__}: {first}. The failure is in the "
                f"model's own forward(){made_opaque}, which fx must trace to find any cut point, so passing "
                f"model.options.layers=[...] with module names cannot help for this model either; wrap it in a "
                f"module whose forward is traceable (tensor-valued control flow moved into a submodule)") from e
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output = next(n for n in nodes if n.op == "output")
    source = placeholders[0]
    constants = dict(zip(placeholders[1:], concrete.values()))
    dead_ends = [n for n in nodes if not n.users and n.op not in ("output", "placeholder")]
    # An unused in-place write (``y.mul_(2)``) still has an effect: whoever reads the written
    # tensor after it depends on it. An unused check (``torch._assert`` on the input's shape)
    # has none, and must not count as a path (it would bypass every cut point).
    after: dict[fx.Node, list[fx.Node]] = {}
    for n in dead_ends:
        target = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        if target is not None and may_mutate(n, model):
            for user in target.users:
                if index[user] > index[n]:
                    after.setdefault(user, []).append(n)
    dominators = _dominators(nodes, index, source, output, after)
    if dominators is None:
        raise ExternalModelError(f"{label}: the traced output does not depend on the input")
    module_outputs = {k: v[0] for k, v in tracer.outputs.items() if len(v) == 1 and v[0] is not None}
    return Trace(graph, nodes, index, source, output, constants, module_outputs, dominators, dead_ends,
                  tracer.qualnames, opaque)


def _dominators(nodes: list[fx.Node], index: dict[fx.Node, int], source: fx.Node, output: fx.Node,
                after: dict[fx.Node, list[fx.Node]]) -> set[fx.Node] | None:
    """The nodes (other than input and output) on every path from ``source`` to ``output``.

    Immediate dominators in one pass over the topological order (the graph is a DAG, so
    every predecessor is final when a node is reached): a node's immediate dominator is
    the nearest common dominator of its input-dependent predecessors. ``after[n]``: extra
    predecessors of ``n`` (unused in-place writes to a tensor ``n`` reads).
    """
    idom: dict[fx.Node, fx.Node] = {source: source}

    def common(a: fx.Node, b: fx.Node) -> fx.Node:
        while a is not b:  # a dominator always comes earlier in the order: walk the later one up
            if index[a] > index[b]:
                a = idom[a]
            else:
                b = idom[b]
        return a

    for n in nodes[index[source] + 1:]:
        preds = list(n.all_input_nodes) + after.get(n, [])
        preds = [p for p in preds if p in idom]  # only input-dependent nodes are in idom
        if not preds:
            continue
        d = preds[0]
        for p in preds[1:]:
            d = common(d, p)
        idom[n] = d
    if output not in idom:
        return None
    chain, d = set(), idom[output]
    while d is not source:
        chain.add(d)
        d = idom[d]
    return chain


def may_mutate(node: fx.Node, model: nn.Module) -> bool:
    """Whether ``node`` may write into one of its inputs (conservative for opaque modules)."""
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if any(getattr(s, "inplace", False) is True for s in m.modules()):
            return True
        # torch.nn modules only write in place through their ``inplace`` flag; other leaves are opaque
        return not type(m).__module__.startswith(_TORCH_NN)
    if node.op == "call_method":
        name = node.target
    elif node.op == "call_function":
        if node.target in _INPLACE_OPERATORS:
            return True
        name = getattr(node.target, "__name__", "")
    else:
        return False
    if (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS:
        return True  # relu_, add_, masked_fill_, ...
    if node.kwargs.get("inplace") is True or "out" in node.kwargs:
        return True
    if node.op == "call_function":  # a positional flag, e.g. F.relu(x, True)
        try:
            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):  # builtins without a signature
            return False
        return bound.arguments.get("inplace") is True
    return False


def closure(roots: Iterable[fx.Node], stop: fx.Node | None) -> set[fx.Node]:
    """``roots`` and every node they depend on, not looking past ``stop``."""
    seen: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in seen or n is stop:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


