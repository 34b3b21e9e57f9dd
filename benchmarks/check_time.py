"""How long a check takes.

    python -m benchmarks.check_time [--repeats N] [--grads]
        check_pair in process on the example ResNet widened to 120 channels (about a million
        parameters), torch against NNX, batch 8 of 3x32x32, eval mode, calibrated bounds (with --grads
        also the gradient comparison): the first check (compiling JAX's operations) and the median of
        the next ones.
    python -m benchmarks.check_time --cli [--before CHECKOUT] [--repeats N]
        the command, as a user runs it, on torchvision's ResNet-18 against its Linen port
        (parity_tests/ports/torchvision_ports.py) at 2,3,32,32: wall seconds of the whole command, and of
        the refusal of a bad argument (what is imported before arguments are checked); with --before,
        the same command from another checkout (a git worktree at an older commit), interleaved with
        this one's runs, so that both see the same load.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cnn_parity.commands import OneLineParser

REPO = Path(__file__).resolve().parents[1]
WIDTH = 120
INPUT = (8, 3, 32, 32)
PORTS = REPO / "parity_tests" / "ports"  # torchvision_ports imports nothing of the project: any checkout can load it
CLI_CHECK = ["--torch", "torchvision_ports:torch_resnet18", "--flax", "torchvision_ports:linen_resnet18"]


def in_process(repeats: int, grads: bool) -> None:
    import torch  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from parity_check import check_pair  # noqa: PLC0415
    from parity_check.examples import NNXResNet, TorchResNet, example_input, randomise_norms  # noqa: PLC0415
    from parity_tests import precision  # noqa: PLC0415

    precision.configure()
    torch.manual_seed(0)
    torch_model = randomise_norms(TorchResNet(width=WIDTH))
    flax_model = NNXResNet(width=WIDTH, rngs=nnx.Rngs(0))
    x = example_input(INPUT)
    params = sum(p.numel() for p in torch_model.parameters())
    seconds = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        report = check_pair(torch_model, flax_model, x, grads=grads)
        seconds.append(time.perf_counter() - start)
        assert report.passed, report.summary()
    print(f"check_pair, ResNet width {WIDTH} ({params:,} parameters, {len(report.layers)} layers), input {INPUT}"
          f"{', with gradients' if grads else ''}: first {seconds[0]:.2f} s, then median "
          f"{statistics.median(seconds[1:]):.2f} s over {repeats}")


def command(checkout: Path) -> list[str]:
    """The checker's command in a checkout: `parity_check`, or, before it was a package, `parity_tests.check`."""
    module = "parity_check" if (checkout / "parity_check" / "__main__.py").exists() else "parity_tests.check"
    return [sys.executable, "-m", module]


def timed(checkout: Path, arguments: list[str]) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{PORTS}"}
    start = time.perf_counter()
    result = subprocess.run(command(checkout) + arguments, cwd=checkout, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, result.returncode


def cli(repeats: int, before: Path | None) -> None:
    from cnn_parity.provenance import machine_info  # noqa: PLC0415

    checkouts = ([("before", before)] if before else []) + [("this checkout", REPO)]
    runs = {label: {"check": [], "refusal": [], "codes": set()} for label, _ in checkouts}
    load_before = os.getloadavg()
    for _ in range(repeats):
        for label, checkout in checkouts:
            seconds, code = timed(checkout, CLI_CHECK + ["--input-shape", "2,3,32,32"])
            runs[label]["check"].append(seconds)
            runs[label]["codes"].add(code)
            runs[label]["refusal"].append(timed(checkout, CLI_CHECK + ["--input-shape", "2,3,0,32"])[0])
    load_after = os.getloadavg()
    info = machine_info(with_versions=False)
    print(f"machine: {info.get('cpu_model', '?')}, {info.get('cpu_count')} CPUs; load average (1, 5, 15 min) before "
          f"{', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}")
    print("ResNet-18 (torchvision) against its Linen port, input 2,3,32,32, the whole command; "
          f"{repeats} runs each, interleaved")
    for label, checkout in checkouts:
        r = runs[label]
        print(f"  {label} ({' '.join(command(checkout)[1:])}, exit {sorted(r['codes'])}): check median "
              f"{statistics.median(r['check']):.1f} s (min {min(r['check']):.1f}); a bad argument refused in median "
              f"{statistics.median(r['refusal']):.1f} s")


def main() -> None:
    parser = OneLineParser(prog="python -m benchmarks.check_time", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grads", action="store_true")
    parser.add_argument("--cli", action="store_true", help="time the command on ResNet-18 instead")
    parser.add_argument("--before", type=Path, help="with --cli: another checkout to time the same way")
    args = parser.parse_args()
    if args.cli:
        cli(args.repeats, args.before)
    else:
        in_process(args.repeats, args.grads)


if __name__ == "__main__":
    main()
