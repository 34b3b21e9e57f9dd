"""The weight mapping between a torch model and a Flax one: which torch layer is which Flax layer, and
the transfer rules between their tensors (kinds.py), inferred or read from a TOML file; and the
account of every tensor on both sides.

Inference, for layers that hold weights:
  1. by name, after each side's common prefix is stripped ('model.layer1.0.conv1', Linen's
     'layer1_0/conv1' and NNX's 'layer1/0/conv1' are all layer1 · 0 · conv1), where the tensors fit;
  2. by data flow: a layer whose inputs come from layers already mapped is mapped to the one Flax
     layer whose inputs come from their counterparts (and whose tensors fit): a port that computes a
     block's shortcut before its main path, or its branches in another order, maps the same;
  3. by execution order within their kind, for what is left (only where the counts and every
     shape agree).
Where the data flow leaves a choice (two same-shaped branches from one input), every assignment is
tried and the one under which the outputs agree is kept (compare.resolve). Every tensor is then
accounted for: transferred, or, where it has no counterpart, named (the check stops); a bias on
one side of a mapped pair only is the cause of that layer's divergence.

Mapping file (TOML):
    [layers]            # torch module name = Flax path ("/"-separated)
    "fc1" = "Dense_0"
    [flatten]           # optional: a Linear whose input is a flattened (C, H, W) feature map
    "fc1" = [16, 4, 4]
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from cnn_parity.errors import UsageError
from parity_check.kinds import MATRIX_KINDS, Misfit, Plan, plan


class MappingError(UsageError):
    """Inference failed, or tensors have no counterpart: one line, plus the skeleton mapping file the
    user completes."""

    def __init__(self, message: str, skeleton: str, not_transferred: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.skeleton = skeleton
        self.not_transferred = not_transferred or {"torch": [], "flax": []}


@dataclass
class Layer:
    """One side's layer as the mapping sees it."""

    name: str
    kind: str
    module: Any
    tensors: dict  # name → array (torch: 'weight'; Flax: 'kernel', 'query/kernel')
    order: int  # execution order; uncalled layers after every called one
    called: bool
    parents: frozenset = frozenset()  # the layers and inputs its arguments came from (data flow)
    tied_to: str | None = None  # torch: the layer whose tensors these are (a language model's tied head)


@dataclass
class LayerMap:
    torch_name: str
    flax_path: str
    kind: str  # the torch layer's
    flax_kind: str
    matched_by: str  # "name", "data flow", "order", "file"
    flatten: tuple[int, ...] | None = None  # (C, *spatial) of a Linear's flattened input
    plan: Plan | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"torch_name": self.torch_name, "flax_path": self.flax_path, "kind": self.kind,
                "flax_kind": self.flax_kind, "matched_by": self.matched_by,
                "flatten": list(self.flatten) if self.flatten else None,
                "torch_only": self.plan.torch_only if self.plan else [],
                "flax_only": self.plan.flax_only if self.plan else []}


@dataclass
class Mapping:
    layers: list[LayerMap] = field(default_factory=list)
    # data-flow choices left open: (torch names, Flax paths) matched in execution order, to verify
    ambiguous: list[tuple[list[str], list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def by_torch(self, name: str) -> LayerMap | None:
        return next((m for m in self.layers if m.torch_name == name), None)

    def to_toml(self) -> str:
        lines = ["[layers]"] + [f'"{m.torch_name}" = "{m.flax_path}"' for m in self.layers]
        flat = [m for m in self.layers if m.flatten]
        if flat:
            lines += ["", "[flatten]"] + [f'"{m.torch_name}" = {list(m.flatten)}' for m in flat]
        return "\n".join(lines) + "\n"


def tokens(name: str) -> tuple[str, ...]:
    return tuple(t for t in re.split(r"[./_]+", name.lower()) if t)


def _strip_common_prefix(names: list[str]) -> dict[str, tuple[str, ...]]:
    """Each name's tokens without the prefix every name shares (a wrapper's 'model.')."""
    split = {n: tokens(n) for n in names}
    if len(split) < 2:
        return split
    common = 0
    values = list(split.values())
    while all(len(v) > common + 1 for v in values) and len({v[common] for v in values}) == 1:
        common += 1
    return {n: v[common:] for n, v in split.items()}


class Matcher:
    """Which layers fit which (cached transfer plans), and the layouts generic rules learn from pairs
    of the same classes where the shapes leave no choice."""

    def __init__(self, torch_layers: list[Layer], flax_layers: list[Layer]):
        self.torch = {t.name: t for t in torch_layers}
        self.flax = {f.name: f for f in flax_layers}
        self.learned: dict[tuple[str, str, str], str] = {}
        self._plans: dict[tuple[str, str], Plan | None] = {}
        self.misfits: dict[tuple[str, str], str] = {}  # why a pair did not fit

    def plan(self, t: str, f: str, chw=None) -> Plan | None:
        if (t, f) not in self._plans or chw is not None:
            tl, fl = self.torch[t], self.flax[f]
            key = (type(tl.module).__name__, type(fl.module).__name__)
            try:
                result = plan(tl.kind, fl.kind, tl.module, fl.module, tl.tensors, fl.tensors, chw,
                              lambda name: self.learned.get((*key, name)))
            except Misfit as e:
                self.misfits[(t, f)] = str(e)
                result = None
            if chw is not None:
                return result
            self._plans[(t, f)] = result
        return self._plans[(t, f)]

    def fits(self, t: str, f: str) -> bool:
        return self.plan(t, f) is not None

    def learn(self, mapped: list[LayerMap]) -> None:
        """Layouts of generic tensors where only one fitted, per pair of classes and tensor name;
        square ones of the same classes are then laid out the same way."""
        for m in mapped:
            p = self.plan(m.torch_name, m.flax_path)
            key = (type(self.torch[m.torch_name].module).__name__, type(self.flax[m.flax_path].module).__name__)
            for rule in p.rules if p else []:
                if rule.layout and not rule.ambiguous:
                    self.learned.setdefault((*key, rule.torch_names[0]), rule.layout)
        self._plans = {k: v for k, v in self._plans.items() if v is None or not any(r.ambiguous for r in v.rules)}


def weighted(layers: list[Layer]) -> list[Layer]:
    """The layers the mapping pairs: every one with tensors, and the known kinds (a norm without affine
    weights is still compared); dropout is not."""
    return [layer for layer in layers if layer.kind != "dropout" and layer.tied_to is None
            and (layer.tensors or layer.kind != "generic")]


def contracted_parents(layers: dict[str, Layer], keep: set[str]) -> dict[str, frozenset]:
    """Each layer's parents with the layers outside `keep` (dropout) replaced by their own parents."""
    memo: dict[str, frozenset] = {}

    def resolve(name: str, seen: frozenset) -> frozenset:
        if name in keep or name not in layers or name in seen:
            return frozenset({name}) if name in keep or name.startswith("input:") else frozenset()
        if name not in memo:
            memo[name] = frozenset().union(*(resolve(p, seen | {name}) for p in layers[name].parents))
        return memo[name]
    return {name: frozenset().union(*(resolve(p, frozenset({name})) for p in layer.parents))
            for name, layer in layers.items()}


def infer(torch_layers: list[Layer], flax_layers: list[Layer], forced: dict[str, str] | None = None) -> Mapping:
    """Match the weighted layers (see the module's docstring), `forced` pairs (torch name → Flax
    path: a data-flow choice being tried) first. Raises MappingError with a skeleton when a layer that
    holds weights is left without a counterpart."""
    ts, fs = weighted(torch_layers), weighted(flax_layers)
    matcher = Matcher(ts, fs)
    mapped: dict[str, LayerMap] = {}
    used: set[str] = set()

    def add(t: Layer, f: Layer, how: str) -> None:
        mapped[t.name] = LayerMap(t.name, f.name, t.kind, f.kind, how)
        used.add(f.name)

    by_name = {f.name: f for f in fs}
    for t in ts:
        if t.name in (forced or {}):
            add(t, by_name[forced[t.name]], "data flow")

    # 1. names
    t_tokens = _strip_common_prefix([t.name for t in ts])
    f_tokens = _strip_common_prefix([f.name for f in fs])
    by_tokens: dict[tuple, list[Layer]] = {}
    for f in fs:
        by_tokens.setdefault(f_tokens[f.name], []).append(f)
    misfits = []  # same names, tensors that do not fit: said when the layers stay unmapped
    for t in ts:
        if t.name in mapped:
            continue
        named = [f for f in by_tokens.get(t_tokens[t.name], []) if f.name not in used]
        same = [f for f in named if matcher.fits(t.name, f.name)]
        if len(same) == 1:
            add(t, same[0], "name")
        misfits += [(t.name, f.name, matcher.misfits[(t.name, f.name)]) for f in named
                    if (t.name, f.name) in matcher.misfits]
    # 1b. names where one side's is the other's with more in front (a wrapper's 'layer.'), either way
    left_t = [t for t in ts if t.name not in mapped and t_tokens[t.name]]
    left_f = [f for f in fs if f.name not in used and f_tokens[f.name]]
    for t in left_t:
        ends = [f for f in left_f if f.name not in used and _ends_with(t_tokens[t.name], f_tokens[f.name])
                and matcher.fits(t.name, f.name)]
        if len(ends) == 1 and sum(_ends_with(t_tokens[u.name], f_tokens[ends[0].name]) for u in left_t) == 1:
            add(t, ends[0], "name")
    matcher.learn(list(mapped.values()))

    # 2. data flow
    t_parents = contracted_parents({t.name: t for t in torch_layers}, {t.name for t in ts})
    f_parents = contracted_parents({f.name: f for f in flax_layers}, {f.name for f in fs})
    ambiguous: list[tuple[list[str], list[str]]] = []
    changed = True
    while changed:
        changed = False
        for t in sorted(ts, key=lambda layer: layer.order):
            if t.name in mapped or not t.called:
                continue
            want = _image(t_parents[t.name], mapped)
            if want is None:
                continue
            candidates = [f for f in fs if f.called and f.name not in used and f_parents[f.name] == want
                          and matcher.fits(t.name, f.name)]
            if len(candidates) == 1:
                add(t, candidates[0], "data flow")
                changed = True
            elif candidates:
                peers = [u for u in ts if u.called and u.name not in mapped and _image(t_parents[u.name], mapped) == want
                         and any(matcher.fits(u.name, f.name) for f in candidates)]
                peers.sort(key=lambda layer: layer.order)
                candidates.sort(key=lambda layer: layer.order)
                if len(peers) == len(candidates) and all(matcher.fits(u.name, f.name) for u, f in zip(peers, candidates)):
                    for u, f in zip(peers, candidates):
                        add(u, f, "data flow")
                    ambiguous.append(([u.name for u in peers], [f.name for f in candidates]))
                    changed = True
        matcher.learn(list(mapped.values()))

    # 3. execution order within a kind, where counts and shapes agree
    families = {}
    for side, layers in (("torch", ts), ("flax", fs)):
        for layer in layers:
            if layer.called and layer.name not in (mapped if side == "torch" else used):
                families.setdefault(_family(layer.kind), {"torch": [], "flax": []})[side].append(layer)
    for group in families.values():
        left_t, left_f = (sorted(group[s], key=lambda layer: layer.order) for s in ("torch", "flax"))
        if len(left_t) == len(left_f) and all(matcher.fits(t.name, f.name) for t, f in zip(left_t, left_f)):
            for t, f in zip(left_t, left_f):
                add(t, f, "order")

    for m in mapped.values():
        m.plan = matcher.plan(m.torch_name, m.flax_path)
    order = {t.name: t.order for t in ts}
    result = Mapping(sorted(mapped.values(), key=lambda m: order[m.torch_name]), ambiguous)
    _require_counterparts(result, ts, fs, [why for why in misfits if why[0] not in mapped and why[1] not in used])
    return result


def _ends_with(a: tuple, b: tuple) -> bool:
    """One token sequence is the other with more in front."""
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return short != long and long[len(long) - len(short):] == short


def _family(kind: str) -> str:
    return "dense" if kind in MATRIX_KINDS else kind


def _image(parents: frozenset, mapped: dict[str, LayerMap]) -> frozenset | None:
    """The Flax counterparts of a torch layer's parents (model inputs as they are), if all are mapped."""
    out = set()
    for p in parents:
        if p.startswith("input:"):
            out.add(p)
        elif p in mapped:
            out.add(mapped[p].flax_path)
        else:
            return None
    return frozenset(out)


def _require_counterparts(mapping: Mapping, ts: list[Layer], fs: list[Layer],
                          misfits: list[tuple[str, str, str]] = ()) -> None:
    """Every layer that holds weights has its counterpart, or MappingError names each tensor left
    without one, per side."""
    mapped_t = {m.torch_name for m in mapping.layers}
    mapped_f = {m.flax_path for m in mapping.layers}
    torch_left = [t for t in ts if t.name not in mapped_t and t.tensors]
    flax_left = [f for f in fs if f.name not in mapped_f and f.tensors]
    if not (torch_left or flax_left):
        return
    parts = []
    if torch_left:
        parts.append("torch " + _names([f"{t.name}.{n}" if t.name else n for t in torch_left for n in t.tensors]))
    if flax_left:
        parts.append("Flax " + _names([f"{f.name}/{k}" if f.name else k for f in flax_left for k in f.tensors]))
    why = "".join(f"; {t or '(model)'} and {f or '(model)'} have the same name but {reason}" for t, f, reason in misfits[:2])
    raise MappingError(f"weights not transferred (no counterpart found): {'; '.join(parts)}{why}; complete the "
                       "skeleton mapping and pass it with --mapping", skeleton(mapping, ts, flax_left),
                       {"torch": [f"{t.name}.{n}" if t.name else n for t in torch_left for n in t.tensors],
                        "flax": [f"{f.name}/{k}" if f.name else k for f in flax_left for k in f.tensors]})


def _names(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def skeleton(mapping: Mapping, ts: list[Layer], spare_flax: list[Layer]) -> str:
    """The mapping file to complete: the pairs found by name or data flow filled in, the rest empty
    (a pair guessed by order is not written: it may be wrong)."""
    sure = {m.torch_name: m.flax_path for m in mapping.layers if m.matched_by in ("name", "data flow", "file")}
    lines = ["# torch module name = Flax path; fill in the empty ones", "[layers]"]
    for t in sorted(ts, key=lambda layer: layer.order):
        if t.tensors:
            lines.append(f'"{t.name}" = "{sure.get(t.name, "")}"  # {t.kind}')
    lines.append("# Flax layers not yet mapped: " + (", ".join(f"{f.name} ({f.kind})" for f in spare_flax) or "none"))
    return "\n".join(lines) + "\n"


def read_mapping(path: str | os.PathLike, torch_layers: list[Layer], flax_layers: list[Layer]) -> Mapping:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read mapping {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"mapping {path} is not TOML: {e}") from None
    layers, flatten = data.get("layers"), data.get("flatten", {})
    if not isinstance(layers, dict) or not all(isinstance(v, str) for v in layers.values()):
        raise UsageError(f"mapping {path} needs a [layers] table of \"torch name\" = \"flax path\"")
    ts, fs = weighted(torch_layers), weighted(flax_layers)
    torch_by, flax_by = {t.name: t for t in ts}, {f.name: f for f in fs}
    matcher = Matcher(ts, fs)
    result = []
    for torch_name, flax_path in layers.items():
        if torch_name not in torch_by:
            raise UsageError(f"mapping {path}: the torch model has no layer {torch_name!r}")
        if flax_path not in flax_by:
            raise UsageError(f"mapping {path}: the Flax model has no layer {flax_path!r} (for {torch_name})")
        chw = flatten.get(torch_name)
        if chw is not None and not (isinstance(chw, list) and len(chw) >= 2 and all(isinstance(n, int) for n in chw)):
            raise UsageError(f"mapping {path}: flatten of {torch_name} must be [C, H, W] (or [C, L])")
        p = matcher.plan(torch_name, flax_path, tuple(chw) if chw else None)
        if p is None:
            t, f = torch_by[torch_name], flax_by[flax_path]
            raise UsageError(f"mapping {path}: torch {torch_name} ({t.kind}) does not fit Flax {flax_path} ({f.kind})")
        result.append(LayerMap(torch_name, flax_path, torch_by[torch_name].kind, flax_by[flax_path].kind, "file",
                               tuple(chw) if chw else None, p))
    order = {t.name: t.order for t in ts}
    mapping = Mapping(sorted(result, key=lambda m: order[m.torch_name]))
    _require_counterparts(mapping, ts, fs)
    return mapping
