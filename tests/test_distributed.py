"""Training on N devices / processes computes what one does, through the CLIs as users run them.

Flax: N simulated CPU devices (`--xla_force_host_platform_device_count`), `--devices 1` vs `--devices N`
in the same setting, both with conv_impl gemm (the oneDNN tiers train on one device only; the
default on several CPU devices is canonical). PyTorch: `torchrun --nproc_per_node N` (DDP, gloo) vs one process. The per-step
losses of a whole epoch come from the epoch-end checkpoint's metadata; the test loss and accuracy from
metrics.jsonl (an example dropped or counted twice by the split evaluation would move them).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import assert_one_line_error

pytestmark = pytest.mark.slow  # multi-process and multi-device runs

# Largest |Δ| between 1 and 2 devices measured on this machine, per-step training loss over the run:
#   Flax  lenet 1 epoch (469 steps, last batch 96)  1.2e-6;  fashion_cnn 60 steps (dropout)  4.8e-7
#   torch lenet 1 epoch, tensor pipeline            4.8e-7;  torchvision pipeline (DistributedSampler) 60 steps  3.6e-7
# All float32 summation-order effects (the global batch's gradient is summed in two halves, then
# all-reduced); a real difference in data, dropout masks or averaging moves the loss by 1e-2 or more
# within a few steps. Bound: 10x the worst measured. fashion_cnn is compared over 60 steps: its
# max-pool-before-ReLU near-ties (parity_tests/bounds.py) turn the rounding into a real divergence after
# step ~100 (steps 1-98 within 1e-6, step 120 1.5e-3), as any two summation orders would.
STEP_LOSS_TOLERANCE = 1.2e-5
TEST_LOSS_TOLERANCE = 1.2e-5  # measured: 1.5e-7 (Flax lenet), 1.5e-8 (torch lenet)

REPO = Path(__file__).resolve().parents[1]


def _env(data_dir, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "CNN_PARITY_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", **extra}


def _run(command: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _flax(workdir: Path, devices: int, data_dir, *args: str) -> subprocess.CompletedProcess:
    env = _env(data_dir, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return _run([sys.executable, "-m", "flax_impl.train", "--devices", str(devices), "--conv-impl", "gemm",
                 "--workdir", str(workdir), *args], env, workdir.parent)


def _torch(workdir: Path, processes: int | None, data_dir, *args: str) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch_ref.train"] if processes is None else \
        [shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun", "--standalone",
         f"--nproc_per_node={processes}", "-m", "torch_ref.train"]
    return _run([*launch, "--workdir", str(workdir), *args], _env(data_dir), workdir.parent)


def _step_losses(workdir: Path) -> list[float]:
    """Every step's loss (the runs log each: --log-every 1)."""
    return [json.loads(line)["loss"] for line in (workdir / "steps.jsonl").read_text().splitlines()]


def _metrics(workdir: Path) -> dict:
    """The final evaluation: the last epoch's, or that of an epoch --max-steps ended early."""
    return json.loads((workdir / "summary.json").read_text())


def _assert_same_run(one: Path, many: Path) -> None:
    a, b = _step_losses(one), _step_losses(many)
    assert len(a) == len(b) > 0
    worst = max(abs(x - y) for x, y in zip(a, b))
    print(f"max |Δ| per-step loss over {len(a)} steps: {worst:.2e}")
    assert worst <= STEP_LOSS_TOLERANCE
    ma, mb = _metrics(one), _metrics(many)
    assert abs(ma["test_loss"] - mb["test_loss"]) <= TEST_LOSS_TOLERANCE
    assert abs(ma["test_accuracy"] - mb["test_accuracy"]) <= 2e-4  # at most 2 of 10,000 flip near a tie


# Paired-run generators (shared initial weights and batch order) must shard the same way.
SHARED_RNG = ("--set", "init_rng=shared", "--set", "shuffle_rng=shared")


@pytest.mark.parametrize("model, args", [("lenet", ("--epochs", "1")),
                                         ("fashion_cnn", ("--max-steps", "60")),
                                         ("lenet", ("--max-steps", "60", *SHARED_RNG)),
                                         ("fashion_cnn", ("--max-steps", "60", "--api", "nnx"))])
def test_flax_two_devices_train_as_one(tmp_path, data_dir, model, args):
    common = ("--model", model, *args, "--checkpoint-every", "1000", "--log-every", "1")
    _flax(tmp_path / "one", 1, data_dir, *common)
    result = _flax(tmp_path / "two", 2, data_dir, *common)
    assert "on 2 × cpu" in result.stdout
    _assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("args", [("--epochs", "1"), ("--max-steps", "60", *SHARED_RNG)])
def test_torch_ddp_two_processes_train_as_one(tmp_path, data_dir, args):
    common = ("--model", "lenet", *args, "--checkpoint-every", "1000", "--log-every", "1")
    _torch(tmp_path / "one", None, data_dir, *common)
    result = _torch(tmp_path / "two", 2, data_dir, *common)
    # Only rank 0 prints and writes.
    assert result.stdout.count("test accuracy") == 1 and "2 processes" in result.stdout
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def test_torch_ddp_distributed_sampler_keeps_the_global_batch(tmp_path, data_dir):
    """The `torchvision` pipeline under DDP uses a DistributedSampler: 1 and 2 processes see the same global batches."""
    common = ("--model", "lenet", "--pipeline", "torchvision", "--max-steps", "60", "--checkpoint-every", "60")
    _torch(tmp_path / "one", 1, data_dir, *common)
    _torch(tmp_path / "two", 2, data_dir, *common)
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def test_flax_more_devices_than_exist_is_one_line(tmp_path, data_dir):
    env = _env(data_dir, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run([sys.executable, "-m", "flax_impl.train", "--model", "mlp", "--devices", "3",
                             "--workdir", str(tmp_path / "w")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert_one_line_error(result, 2, "--devices 3", "only 2")


@pytest.mark.parametrize("tier", ["onednn", "jaxlib-onednn"])
def test_flax_onednn_on_two_devices_is_one_line_and_the_default_records_canonical(tier, tmp_path, data_dir):
    env = _env(data_dir, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    command = [sys.executable, "-m", "flax_impl.train", "--model", "lenet", "--devices", "2"]
    result = subprocess.run([*command, "--conv-impl", tier], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert_one_line_error(result, 2, f"conv_impl {tier} trains on one device, not 2", "--devices 1")
    if tier == "onednn":
        _run([*command, "--max-steps", "2", "--workdir", str(tmp_path / "auto")], env, tmp_path)
        assert json.loads((tmp_path / "auto" / "config.json").read_text())["options"]["conv_impl"] == "canonical"


def test_flax_partial_multi_host_flags_are_one_line(tmp_path, data_dir):
    result = subprocess.run([sys.executable, "-m", "flax_impl.train", "--model", "mlp", "--coordinator", "localhost:1234",
                             "--workdir", str(tmp_path / "w")], cwd=tmp_path, env=_env(data_dir),
                            capture_output=True, text=True)
    assert_one_line_error(result, 2, "--num-processes")


def test_cpu_collective_hang_workaround_completes():
    """The minimal reproduction's synchronous mode (what FlaxTrainer does on multi-device CPU) finishes,
    in a fresh process (the device count is set before JAX is imported)."""
    from benchmarks import cpu_collective_hang

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        said = pool.apply_async(cpu_collective_hang.run, (2, 300, True)).get(timeout=120)
    assert said.startswith("300 steps on 2 devices (sync dispatch)")


def _flax_two_processes(workdir: Path, data_dir, *args: str) -> list[subprocess.Popen]:
    """A two-process JAX run on this host (jax.distributed, one CPU device each), started."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [sys.executable, "-m", "flax_impl.train", "--conv-impl", "gemm", "--workdir", str(workdir),
              "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", *args]
    return [subprocess.Popen([*common, "--process-id", str(i)], cwd=workdir.parent, env=_env(data_dir),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(processes: list[subprocess.Popen], codes: list[int]) -> list[tuple[str, str]]:
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == codes, [err[-1000:] for _, err in outputs]
    return outputs


def test_flax_multi_process_launch_trains_as_one_device(tmp_path, data_dir):
    """The multi-host launch (jax.distributed, gloo collectives) with two processes on this host, one
    CPU device each, against one process on one device. Measured: train loss 2.4e-9, test loss 1.0e-7."""
    run = ("--model", "lenet", "--max-steps", "100")
    outputs = _finish(_flax_two_processes(tmp_path / "two", data_dir, *run), [0, 0])
    assert "test accuracy" in outputs[0][0] and "test accuracy" not in outputs[1][0]  # process 0 reports
    _flax(tmp_path / "one", 1, data_dir, *run)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    for key in ("train_loss", "test_loss"):
        assert abs(one[key] - two[key]) <= TEST_LOSS_TOLERANCE, key
    assert abs(one["test_accuracy"] - two["test_accuracy"]) <= 2e-4


def test_flax_multi_process_devices_that_do_not_split_over_the_processes_are_one_line(tmp_path, data_dir):
    """--devices counts every process's devices: 3 over 2 processes is refused by both, before training."""
    outputs = _finish(_flax_two_processes(tmp_path / "w", data_dir, "--model", "mlp", "--devices", "3"), [2, 2])
    for stdout, stderr in outputs:
        assert_one_line_error(subprocess.CompletedProcess([], 2, stdout, stderr), 2,
                              "--devices 3 does not split evenly over 2 processes")


def _wait_for(path: Path, *processes: subprocess.Popen) -> None:
    import time

    while not path.exists():
        assert all(p.poll() is None for p in processes), [p.communicate()[1][-2000:] for p in processes]
        time.sleep(0.01)


@pytest.mark.parametrize("run", [
    ("--model", "mlp", "--set", "batch_size=2000", "--set", "optimizer.momentum=0.9", "--epochs", "3"),
    ("--model", "fashion_cnn", "--max-steps", "120"),  # dropout: each rank's masks, from its own generator
], ids=["mlp", "fashion_cnn-dropout"])
def test_torchrun_sigterm_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path, data_dir, run):
    """SIGTERM to torchrun (as a scheduler sends it) reaches every rank; they agree on the step to stop at,
    rank 0 checkpoints every rank's generators, and the resumed DDP run ends bitwise where an
    uninterrupted one does."""
    import signal

    reference, workdir = tmp_path / "reference", tmp_path / "stopped"
    _torch(reference, 2, data_dir, *run)
    launch = [shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun", "--standalone",
              "--nproc_per_node=2", "-m", "torch_ref.train"]
    proc = subprocess.Popen([*launch, "--workdir", str(workdir), *run], cwd=tmp_path, env=_env(data_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(workdir / "config.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert "stopped by SIGTERM" in stderr and "--resume --workdir" in stderr, stderr[-2000:]
    stopped_at = sorted((workdir / "checkpoints").glob("step_*"))[-1]
    assert (workdir / "model.safetensors").is_file()
    resumed = _torch(workdir, 2, data_dir, "--resume")
    assert f"resuming from {stopped_at}" in resumed.stderr
    from tests.lifecycle import assert_same_run

    assert_same_run(workdir, reference)


def test_flax_multi_process_sigterm_to_one_process_stops_both_and_resumes_exactly(tmp_path, data_dir):
    """A stop signal reaching only one process of a multi-process JAX run stops every process at the
    same step (a rank left behind would wait in the next collective forever); process 0 checkpoints, every
    process restores that checkpoint, and the resumed run ends bitwise where an uninterrupted one does."""
    import signal

    from tests.lifecycle import assert_same_run

    run = ("--model", "lenet", "--max-steps", "150")
    reference, workdir = tmp_path / "reference", tmp_path / "stopped"
    _finish(_flax_two_processes(reference, data_dir, *run), [0, 0])
    processes = _flax_two_processes(workdir, data_dir, *run)
    _wait_for(workdir / "config.json", *processes)
    processes[1].send_signal(signal.SIGTERM)
    outputs = _finish(processes, [128 + signal.SIGTERM] * 2)
    assert "stopped by SIGTERM" in outputs[0][1]
    newest = sorted((workdir / "checkpoints").glob("step_*"))[-1]
    assert 0 < json.loads((newest / "meta.json").read_text())["steps"] < 150
    assert (workdir / "model.safetensors").is_file()
    resumed = _finish(_flax_two_processes(workdir, data_dir, "--resume"), [0, 0])
    assert f"resuming from {newest}" in resumed[0][1]
    assert_same_run(workdir, reference)