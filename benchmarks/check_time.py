"""How long `check_pair` takes on a model of about a million parameters: the example ResNet
(parity_check/examples.py) widened to 120 channels, torch against NNX, batch 8 of 3x32x32,
eval mode, calibrated bounds; with --grads also the gradient comparison. Prints seconds: the first
check (compiling JAX's operations) and the median of the next ones.

    python -m benchmarks.check_time [--repeats N] [--grads]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from flax import nnx

from parity_tests import precision
from parity_check import check_pair
from parity_check.examples import NNXResNet, TorchResNet, example_input, randomise_norms

WIDTH = 120
INPUT = (8, 3, 32, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grads", action="store_true")
    args = parser.parse_args()
    precision.configure()
    torch.manual_seed(0)
    torch_model = randomise_norms(TorchResNet(width=WIDTH))
    flax_model = NNXResNet(width=WIDTH, rngs=nnx.Rngs(0))
    x = example_input(INPUT)
    params = sum(p.numel() for p in torch_model.parameters())
    seconds = []
    for _ in range(1 + args.repeats):
        start = time.perf_counter()
        report = check_pair(torch_model, flax_model, x, grads=args.grads)
        seconds.append(time.perf_counter() - start)
        assert report.passed, report.summary()
    print(f"check_pair, ResNet width {WIDTH} ({params:,} parameters, {len(report.layers)} layers), input {INPUT}"
          f"{', with gradients' if args.grads else ''}: first {seconds[0]:.2f} s, then median "
          f"{statistics.median(seconds[1:]):.2f} s over {args.repeats}")


if __name__ == "__main__":
    main()
