"""A check's report: what the command line prints (a table whose columns fit the longest names) and the
JSON it writes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity_check.compare import LayerResult
from parity_check.mapping import Mapping


@dataclass
class Report:
    passed: bool
    first_divergence: dict | None
    layers: list[LayerResult]
    mapping: Mapping
    findings: list[dict] = field(default_factory=list)
    output: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    gradients: list[dict] | None = None
    training: dict | None = None
    notes: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    # per side, the tensors not transferred: a bias on one side of a mapped pair only, and torch's
    # BatchNorm counters (num_batches_tracked: Flax has none, and it only matters with momentum=None)
    not_transferred: dict = field(default_factory=dict)
    # the weights both sides computed with, in canonical form (torch state_dict names and layouts)
    canonical_weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # the checked torch → Flax transfer as a gather table, when asked for (transfer_table.gather_table)
    transfer_table: tuple | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "first_divergence": self.first_divergence,
                "layers": [r.to_dict() for r in self.layers], "mapping": [m.to_dict() for m in self.mapping.layers],
                "output": {k: finite(v) for k, v in self.output.items()}, "findings": self.findings,
                "notes": self.notes, "not_transferred": self.not_transferred, "settings": self.settings,
                "versions": self.versions,
                "gradients": self.gradients, "training": self.training}

    def summary(self) -> str:
        """What the CLI prints."""
        s = self.settings
        lines = [f"mapped {len(self.mapping.layers)} layers ({_counts(self.mapping)}); weights {s['direction']}; "
                 f"bounds: {s['bounds']}"]
        tw = max([len("torch layer"), len("(output)")] + [len(r.torch_name) for r in self.layers])
        fw = max([len("flax layer")] + [len(r.flax_path) for r in self.layers])
        lines.append(f"  {'torch layer':<{tw}}  {'flax layer':<{fw}}  {'max|Δ|':>9} {'bound':>9} {'alone':>9} {'bound':>9}")
        d = self.first_divergence
        for r in self.layers:
            mark = "  <-- " + r.status if d and d["kind"] == "forward" and r.torch_name == d["torch_name"] else ""
            mark = mark if r.compared else "  (after a train-mode dropout: not compared)"
            mark += "  (broadcast)" if r.broadcast else ""
            lines.append(f"  {r.torch_name:<{tw}}  {r.flax_path:<{fw}}  {_fmt(r.max_abs_diff)} {_fmt(r.bound)} "
                         f"{_fmt(r.isolated_max_abs_diff)} {_fmt(r.isolated_bound)}{mark}")
        if self.output:
            out = self.output
            lines.append(f"  {'(output)':<{tw}}  {'':<{fw}}  {_fmt(out['max_abs_diff'])} {_fmt(out['bound'])}")
        if self.gradients:
            worst = max(self.gradients, key=lambda g: g["max_abs_diff"] / max(g["bound"], 1e-300))
            lines.append(f"gradients: {len(self.gradients)} (layer outputs and parameters), worst {worst['torch_name']} "
                         f"{_fmt(worst['max_abs_diff']).strip()} (bound {_fmt(worst['bound']).strip()})")
        if self.training and self.training.get("comparable", True):
            t = self.training
            lines.append(f"training, in float64: {t['steps']} steps, max loss |Δ| {_fmt(t['max_loss_diff']).strip()}, "
                         f"final param |Δ| {_fmt(t['param_diffs'][-1]).strip()} (bound "
                         f"{_fmt(t['param_bound']).strip()}); optimizers alone: max |Δ| "
                         f"{_fmt(t['optimizer_only_max_abs_diff']).strip()} (bound {_fmt(t['optimizer_only_bound']).strip()})")
        for note in self.notes:
            lines.append(f"note: {note}")
        for (cause, hint), names in _grouped(self.findings).items():
            lines.append(f"note [{cause}] {', '.join(names)}: {hint}")
        if d is None:
            skipped = [r for r in self.layers if not r.compared]
            lines.append("PASS: the two models agree within the bounds" + (
                f" ({len(skipped)} layers after a train-mode dropout not compared)" if skipped else ""))
        else:
            where = d["torch_name"] + (f" / {d['flax_path']}" if d["flax_path"] else "")
            size = "" if d["kind"] == "parameters" else f": max|Δ| {_fmt(_infinite(d['max_abs_diff'])).strip()}"
            lines.append(f"FAIL: first divergence ({d['kind']}) at {where}{size}"
                         f"{' (' + d['status'] + ')' if d.get('status') else ''}; cause: {d['cause'] or 'unknown'}")
            lines.append(f"  hint: {d['hint']}")
            if d.get("evidence"):
                lines.append(f"  evidence: {d['evidence']}")
            if d.get("ruled_out"):
                lines.append(f"  ruled out: {d['ruled_out']}")
        return "\n".join(lines)


def _grouped(findings: list[dict]) -> dict[tuple[str, str], list[str]]:
    """Findings with one hint, their layers together (a setting repeated in every block is one note)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for f in findings:
        groups.setdefault((f["cause"], f["hint"]), []).append(f["torch_name"] or "model")
    return groups


def _counts(mapping: Mapping) -> str:
    by: dict[str, int] = {}
    for m in mapping.layers:
        by[m.matched_by] = by.get(m.matched_by, 0) + 1
    return ", ".join(f"{n} by {k}" for k, n in by.items()) or "none"


def _fmt(x: float) -> str:
    if x is None:
        return f"{'-':>9}"
    return f"{x:9.2e}" if math.isfinite(x) else f"{'differ':>9}" if x == math.inf else f"{'-':>9}"


def _infinite(v):
    return math.inf if v is None else v


def finite(v):
    """A number for JSON: inf and nan (a shape or non-finite difference) as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v
