"""Every seed a recipe accepts (0 .. 2**32 - 1) is a run of its own in both frameworks: their generators
keep only a seed's low 32 bits, which is why the recipes refuse larger seeds."""

from __future__ import annotations

import jax
import pytest
import torch

from cnn_parity.errors import UsageError
from cnn_parity.recipes import load_recipe

EDGES = (0, 1, 2**31 - 1, 2**31, 2**32 - 1)


def _jax_draw(seed: int) -> float:
    return float(jax.random.uniform(jax.random.key(seed)))


def _torch_draw(seed: int) -> float:
    return float(torch.rand(1, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("draw", [_jax_draw, _torch_draw], ids=["jax", "torch"])
def test_accepted_seeds_draw_differently(draw):
    values = [draw(seed) for seed in EDGES]
    assert len(set(values)) == len(EDGES)


@pytest.mark.parametrize("draw", [_jax_draw, _torch_draw], ids=["jax", "torch"])
def test_a_seed_past_32_bits_repeats_a_smaller_one(draw):
    assert draw(2**32) == draw(0) and draw(2**32 + 7) == draw(7)


def test_the_recipes_refuse_what_the_generators_cannot_tell_apart():
    assert load_recipe("mlp", overrides={"seed": 2**32 - 1}).seed == 2**32 - 1
    with pytest.raises(UsageError, match=r"0 \.\. 2\*\*32 - 1"):
        load_recipe("mlp", overrides={"seed": 2**32})
