"""What the benchmark's interleaved rounds say: medians, and each ratio to PyTorch eager with its
interval over rounds; the three Flax tiers the ratios are read in.

Every round times each candidate once, in rotated order, so round r of a Flax variant and round r of
eager ran close together under the same conditions (load, clock, caches). A ratio is computed per
round (paired) and reported as the median of the per-round ratios with their min-max over the rounds:
the spread the rounds showed, not a confidence interval (three rounds cannot give one). Where the two
sides have different numbers of rounds (a candidate too slow to time more than once) nothing pairs, and
the interval is the widest the rounds allow, min(a)/max(b) .. max(a)/min(b). An interval wider than
WIDE_INTERVAL of its ratio, or from one round, is flagged: rerun with longer trials (--steps) or more
rounds (--repeats) on an idle machine before quoting it.
"""

from __future__ import annotations

import dataclasses
import statistics

from cnn_parity.weights import CONV_GEOMETRY

WIDE_INTERVAL = 0.10  # (high - low) / ratio above which a ratio is flagged as uncertain
BASELINE = "eager"  # PyTorch eager: what every ratio is a multiple of

# The three Flax tiers each model is read in, against PyTorch eager: with them the gap splits into
# XLA's convolutions and the per-step loop (stock -> pure JAX; XLA's convolutions are pathological inside
# a compiled loop on CPU, FINDINGS.md section 2), the kernel library (pure JAX -> same kernels) and what
# is left to the frameworks themselves (same kernels vs eager: dispatch, fusion, data pipeline).
TIERS = (
    ("stock Flax", "jit-loop", "nn.Conv (XLA's convolutions), one jitted step per iteration"),
    ("pure JAX", "gemm-chunked", "the default: GEMM convolutions, the trainer's loop"),
    ("same kernels", "onednn-chunked", "the opt-in: oneDNN's convolutions, as PyTorch eager's, same loop"),
)
HEADLINE_TIER = "pure JAX"  # the default against PyTorch eager
TIER_OF_VARIANT = {variant: tier for tier, variant, _ in TIERS}


def median(xs):
    return statistics.median(xs) if xs else None


@dataclasses.dataclass(frozen=True)
class Ratio:
    """a / b: the median of the per-round ratios and their min-max over `rounds` rounds (`paired`
    False: the widest interval unpaired rounds allow)."""

    value: float
    low: float
    high: float
    rounds: int
    paired: bool

    @property
    def wide(self) -> bool:
        return self.rounds < 2 or (self.high - self.low) / self.value > WIDE_INTERVAL

    def text(self) -> str:
        flag = " ⚠" if self.wide else ""
        return f"{self.value:.2f} [{self.low:.2f}–{self.high:.2f}]{flag}"


def ratio(a: list[float], b: list[float]) -> Ratio | None:
    """The ratio of rates `a` to rates `b`, each listed by round (None if either is empty)."""
    if not a or not b:
        return None
    if len(a) == len(b):
        per_round = [x / y for x, y in zip(a, b)]
        return Ratio(median(per_round), min(per_round), max(per_round), len(a), True)
    return Ratio(median(a) / median(b), min(a) / max(b), max(a) / min(b), min(len(a), len(b)), False)


def ratio_to_baseline(records: list[dict], record: dict, key: str = "train_samples_per_s_all") -> Ratio | None:
    """`record`'s train throughput over its model's PyTorch eager, round by round."""
    eager = next((r for r in records if r["model"] == record["model"] and r["variant"] == BASELINE), None)
    return eager and ratio(record.get(key) or [], eager.get(key) or [])


def has_convolutions(model: str) -> bool:
    return bool(CONV_GEOMETRY[model])


def tier_variants(model: str) -> dict[str, str | None]:
    """tier -> the variant measuring it for `model`; None for "same kernels" on a model without
    convolutions, where it would time the pure-JAX tier again."""
    return {tier: (variant if has_convolutions(model) or tier != "same kernels" else None) for tier, variant, _ in TIERS}


def annotate(records: list[dict]) -> None:
    """Add to each record its tier (or None) and, for Flax records, its ratio to eager with the
    interval over rounds (`ratio_to_eager`: value, low, high, rounds, paired, wide)."""
    for record in records:
        variant = tier_variants(record["model"])
        record["tier"] = next((tier for tier, v in variant.items() if v == record["variant"]), None)
        if record["framework"] == "flax":
            r = ratio_to_baseline(records, record)
            record["ratio_to_eager"] = r and {**dataclasses.asdict(r), "wide": r.wide}
