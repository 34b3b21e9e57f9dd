"""The benchmark's worker processes: each hosts one or more candidates of one model and one framework
in a process of its own, started by `multiprocessing` (spawn: a fresh interpreter that imports only
its own framework) and driven over a `Pipe` by a `Worker` handle (used by benchmarks/rounds.py).

It hosts the candidates it is given (one in a full run, so that its peak RSS, `ru_maxrss`, is that
candidate's alone; all of a framework's in a --quick run, to save start-up time). Requests, each
answered by one dict: ("train", variant, epoch, steps) → seconds, CPU seconds, examples, load;
("eval", variant) → seconds, examples; ("tiny", variant) → seconds per 1-example step; ("quit",) →
peak RSS. What the worker's libraries print goes to its log file.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import time
import traceback
from pathlib import Path

WORKER_TIMEOUT_S = 900
QUIT_TIMEOUT_S = 60


class Worker:
    """A worker process hosting candidates `variants` of `model`."""

    def __init__(self, model, variants, data_dir, log_dir: Path, quick=False, compile_cache: Path | None = None,
                 log_suffix=""):
        """`compile_cache`: the JAX persistent compilation cache folder a Flax worker uses, as the
        training CLI uses its own (None: none)."""
        self.model, self.variants = model, list(variants)
        self.log_path = log_dir / f"{model}-{'+'.join(self.variants)}{log_suffix}.log"
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        cache = str(compile_cache) if compile_cache else "off"
        self.process = context.Process(target=serve, daemon=True,
                                       args=(child_end, model, self.variants, data_dir, quick, str(self.log_path), cache))
        self.process.start()
        child_end.close()
        self.dead = None  # why the process is gone, once it is

    def _tail(self) -> str:
        try:
            lines = [line.strip() for line in self.log_path.read_text().splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def _answer(self, timeout: float) -> dict:
        if not self._connection.poll(timeout):
            self.kill()
            return {"error": f"timed out after {timeout:.0f} s"}
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            self.process.join(5)
            return {"error": f"worker exited with status {self.process.exitcode}: {self._tail()}"}

    def ask(self, request: tuple | None, timeout: float = WORKER_TIMEOUT_S) -> dict:
        """Send `request` (None: only read the set-up answer) and wait for its answer."""
        if self.dead:
            return {"error": self.dead}
        if request is not None:
            try:
                self._connection.send(request)
            except (BrokenPipeError, OSError):
                pass  # the answer says why
        answer = self._answer(timeout)
        if "error" in answer and not self.process.is_alive():
            self.dead = answer["error"]
        return answer

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()

    def close(self) -> float | None:
        """Stop the process; its peak RSS in MB, if it said."""
        answer = self.ask(("quit",), timeout=QUIT_TIMEOUT_S)
        self.kill()
        self._connection.close()
        return answer.get("peak_rss_mb")


class Candidate:
    """One variant in its worker; after its first error, every request answers that error."""

    def __init__(self, worker: Worker, variant: str):
        self.worker, self.variant = worker, variant
        self.info, self.error = {}, None

    def ask(self, request: tuple) -> dict:
        if self.error:
            return {"error": self.error}
        answer = self.worker.ask(request)
        if "error" in answer:
            self.error = answer["error"]
        return answer


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def _build(model, variants, data_dir, quick) -> tuple[dict, dict]:
    """The worker's candidates and its set-up answer: per variant its facts, or why it failed."""
    from benchmarks.candidates import build

    candidates, setup = {}, {}
    for variant in variants:
        tick = time.perf_counter()
        try:
            candidate = candidates[variant] = build(model, variant, data_dir, quick)
            setup[variant] = {"setup_s": time.perf_counter() - tick, "steps_per_epoch": candidate.steps_per_epoch,
                              "batch_size": candidate.batch_size, "device": candidate.device,
                              "num_params": candidate.num_params, "trainer_default": candidate.trainer_default}
        except Exception as e:  # one failed candidate is a row of the table, not the end of the run
            traceback.print_exc()
            setup[variant] = {"error": f"setup failed: {_describe(e)}"}
    return candidates, setup


def _handle(candidate, request: tuple) -> dict:
    kind = request[0]
    if kind == "train":
        epoch, steps = request[2], request[3]
        wall, cpu = time.perf_counter(), time.process_time()
        examples = candidate.train(epoch, steps)
        return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                "examples": examples, "load": os.getloadavg()[0]}
    if kind == "tiny":
        return {"tiny_step_s": candidate.tiny_step_seconds()}
    if kind == "eval":
        tick = time.perf_counter()
        examples = candidate.evaluate()
        return {"seconds": time.perf_counter() - tick, "examples": examples}
    raise ValueError(f"no such request: {kind}")


def serve(connection, model, variants, data_dir, quick, log_path, compile_cache) -> None:
    """The worker process: its output into `log_path`, its compilation cache `compile_cache` ("off":
    none), then one answer per request until ("quit",)."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ["CNN_PARITY_JAX_CACHE"] = compile_cache  # read when the candidate enables it
    candidates, setup = _build(model, variants, data_dir, quick)
    connection.send(setup)
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the benchmark is gone
            return
        if request[0] == "quit":
            connection.send({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            return
        try:
            answer = _handle(candidates[request[1]], request)
        except Exception as e:  # reported as this candidate's error; the others go on
            traceback.print_exc()
            candidates.pop(request[1], None)
            answer = {"error": f"{request[0]} failed: {_describe(e)}"}
        sys.stdout.flush()
        connection.send(answer)
