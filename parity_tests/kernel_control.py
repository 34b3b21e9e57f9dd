"""Torch against itself (the float32 trajectory's control): how far float32 rounding alone moves a
trajectory when only the convolution kernels change."""

from __future__ import annotations

import copy

import numpy as np
import torch

from cnn_parity.differences import tree_max_abs_diff
from parity_tests.batches import batch_from_uint8
from parity_tests.dropout_masks import inject_torch_dropout_mask, torch_dropout_io, torch_dropout_layer
from parity_tests.pairs import ModelPair
from parity_tests.trajectory import Trajectory, UInt8Batches
from torch_ref import train as torch_train


def torch_kernel_control(pair: ModelPair, batches: UInt8Batches) -> Trajectory:
    """Two copies of the torch model trained by `torch_ref.train.train_step` on the same batches
    with the same optimiser and dropout masks (drawn here, one per step, from numpy seed 0), one copy
    in channels_last memory format, which selects different convolution kernels (a different float32
    summation order, identical mathematics). How far *this* drifts is what float32 rounding alone does
    to a trajectory; the cross-framework drift is judged against it (bounds.check_trajectory).
    The Trajectory's "flax" slot holds the channels_last copy."""
    recipe = pair.recipe
    models = [copy.deepcopy(pair.torch_model), copy.deepcopy(pair.torch_model).to(memory_format=torch.channels_last)]
    opts = [torch_train.make_optimizer(m.parameters(), recipe.optimizer) for m in models]
    dropout = torch_dropout_layer(pair.torch_model)
    mask_rng = np.random.default_rng(0)
    traj = Trajectory()
    for images, labels in batches:
        batch = batch_from_uint8(recipe, images, labels)
        mask = None
        if dropout is not None:
            features = torch_dropout_io(models[0], batch.torch_x, train=False)[0].shape
            mask = mask_rng.random(features) < 1.0 - dropout.p
        losses = []
        for m, opt, x in zip(models, opts, (batch.torch_x, batch.torch_x.contiguous(memory_format=torch.channels_last))):
            m.train()
            with inject_torch_dropout_mask(m, mask):
                loss, _ = torch_train.train_step(m, opt, x, batch.torch_y)
            losses.append(loss.item())
        traj.flax_losses.append(losses[1])
        traj.torch_losses.append(losses[0])
        traj.param_diffs.append(tree_max_abs_diff(*(pair.mapping.torch_to_canonical(m) for m in models)))
    return traj
