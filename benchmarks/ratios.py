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

# The Flax tiers each model is read in, against PyTorch eager (the convolution tiers of
# flax_impl/kernels.py, each in the trainer's chunked loop, and stock Flax's per-step loop): stock → the
# pure-JAX tiers is XLA's convolutions and the loop (XLA's convolutions are pathological inside a compiled
# loop on CPU, FINDINGS.md section 2); the pure-JAX tiers → the oneDNN tiers is the kernel library; the
# oneDNN extension vs eager, which runs oneDNN's convolutions too, is what is left to the frameworks.
TIERS = (
    ("stock Flax", "jit-loop", "nn.Conv (XLA's convolutions; YNNPACK's on a CPU), one jitted step per iteration"),
    ("im2col", "gemm-chunked", "pure JAX: im2col + GEMM convolutions, autodiff gradients"),
    ("pure JAX", "canonical-chunked", "pure JAX: XLA's convolution kernel for the forward pass and both "
                                      "gradients (custom VJP), YNNPACK's convolutions off, im2col on small layers"),
    ("jaxlib oneDNN", "jaxlib-onednn-chunked", "jaxlib's own oneDNN convolution (forward, input gradient), "
                                               "weight gradients per layer: the CPU default"),
    ("oneDNN extension", "onednn-chunked", "the opt-in native extension: oneDNN's forward and backward primitives"),
)
TIER_OF_VARIANT = {variant: tier for tier, variant, _ in TIERS}


def default_variant(records: list[dict], model: str) -> str | None:
    """The Flax variant `python -m flax_impl.train` runs for `model` on the machine that made `records`."""
    return next((r["variant"] for r in records if r["model"] == model and r["framework"] == "flax"
                 and r.get("trainer_default")), None)


def headline_tier(records: list[dict], model: str) -> str | None:
    """The tier of the trainer's default: the headline ratio."""
    return TIER_OF_VARIANT.get(default_variant(records, model))


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


def tier_variants(model: str, records: list[dict] | None = None) -> dict[str, str | None]:
    """tier -> the variant measuring it for `model`. A model without convolutions trains alike in every
    convolution tier: only stock Flax and the default's tier (from `records`) measure it, the others
    are None."""
    default = headline_tier(records or [], model)
    return {tier: (variant if has_convolutions(model) or tier in ("stock Flax", default) else None)
            for tier, variant, _ in TIERS}


def annotate(records: list[dict]) -> None:
    """Add to each record its tier (or None) and, for Flax records, its ratio to eager with the
    interval over rounds (`ratio_to_eager`: value, low, high, rounds, paired, wide)."""
    for record in records:
        variant = tier_variants(record["model"], records)
        record["tier"] = next((tier for tier, v in variant.items() if v == record["variant"]), None)
        if record["framework"] == "flax":
            r = ratio_to_baseline(records, record)
            record["ratio_to_eager"] = r and {**dataclasses.asdict(r), "wide": r.wide}
