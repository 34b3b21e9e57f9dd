"""The checker on pairs written outside it (parity_tests/ports/cases.py): every correct port passes,
every planted porting mistake is localised to its layer with its specific cause, every pair it must
refuse is refused with its reason, and nothing crashes. The same cases make docs/check-cases.md."""

from __future__ import annotations

import pytest

from parity_tests.ports import cases

CASES = cases.cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}: {c.api}: {c.name}" for c in CASES])
def test_the_checker_says_what_each_pair_needs(case):
    outcome = cases.run(case)
    assert outcome.meets(case), (f"expected exit {case.exit} {case.layer} {case.cause} ({case.kind}), got exit "
                                 f"{outcome.exit} {outcome.layer} {outcome.cause} ({outcome.kind}):\n{outcome.message}")


def test_the_catalogue_is_as_large_as_promised():
    groups = {g: [c for c in CASES if c.group == g] for g in cases.GROUPS}
    assert len(groups["correct"]) >= 30 and len(groups["mistake"]) >= 40
    third_party = {c.name for c in groups["correct"] if c.api == "hugging face" or "torchvision" in c.name}
    assert {"Hugging Face bert", "Hugging Face gpt2", "Hugging Face vit", "Hugging Face resnet"} <= third_party
    for cause in ("pool_padding", "pool_stride", "pool_ceil_mode", "count_include_pad", "softmax_axis", "norm_axis",
                  "residual_order", "attention_scale", "attention_heads", "padding_mode", "kernel_reshaped",
                  "bn_var_as_std", "batch_stats_in_eval", "missing_bias", "extra_bias", "activation"):
        assert {c.api for c in groups["mistake"] if c.cause == cause} >= {"linen", "nnx"}, cause
