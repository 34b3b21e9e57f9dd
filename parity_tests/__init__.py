"""Cross-framework parity suite: Flax (flax_impl; Linen and NNX models) against PyTorch (torch_ref),
all five models, and the NNX models against the Linen ones, bit for bit.

`pytest parity_tests` runs it; `python -m parity_tests.report --out DIR` writes the numbers.
The only place besides benchmarks/ that imports both frameworks. The library the tests and the
report share (every measurement runs the products' own models, converters, normalisers, optimisers
and training steps; none computes a loss or a gradient itself):

  precision       configure(): full float32, both frameworks on CPU (called by conftest and report)
  batches         real and random inputs, as each framework's own normaliser sees them
  pairs           ModelPair: a model in both frameworks with the same weights, and its WeightMapping
  product_steps   the products' training steps, jitted for Flax
  outputs         eval-mode outputs and layer shapes
  dropout_masks   one dropout mask for both frameworks; each framework's own dropout read back
  gradients       both sides' loss and gradients (product loss_and_gradients)
  updates         one optimiser update: same gradients into both; the first step's excess over rounding
  trajectory      both sides trained side by side (product train_step)
  kernel_control  torch against itself with other convolution kernels: float32's own drift
  accuracy        accuracy after short runs from independent initialisations
  measurements    Measurements: every per-model measurement, computed once (per Flax API)
  apis            Linen against NNX: the same weights, batches and dropout keys, compared bitwise
  bounds          every bound and verdict, with what justifies it
  onednn          where the tests of the opt-in oneDNN convolutions run, skip, or (CI) must run

To check another model pair: the `parity_check` package (weight mapping inferred, every layer
compared, the first divergence localised with its cause; `python -m parity_check`), tested here. With a
recipe and hand-written converters, a `pairs.ModelPair` (torch module, Flax module and params,
recipe, and a `pairs.WeightMapping` to and from canonical arrays) runs the suite's own measurements:
outputs.measure_forward, gradients.measure_grads, updates.same_gradient_updates,
trajectory.run_training and kernel_control.torch_kernel_control; judge with bounds.
"""
