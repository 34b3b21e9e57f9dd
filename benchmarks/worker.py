"""One benchmark candidate in its own process, driven over stdin/stdout by a `Worker` handle (below,
used by benchmarks/rounds.py).

It hosts the candidates named by --variants (one in a full run, so that its peak RSS, `ru_maxrss`, is
that candidate's alone; all of a framework's in a --quick run, to save start-up time). Commands, one
per line on stdin: `train VARIANT EPOCH STEPS`, `eval VARIANT`, `tiny VARIANT` (seconds per
1-example step), `quit`. Each answer is one line on
stdout: `@@ ` and JSON. The process imports only its own framework.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
WORKER_TIMEOUT_S = 900


class Worker:
    """A worker process hosting one or more candidates of one model and one framework."""

    def __init__(self, model, variants, data_dir, log_dir: Path, quick=False, compile_cache: Path | None = None,
                 log_suffix=""):
        """`compile_cache`: the JAX persistent compilation cache folder a Flax worker uses, as the
        training CLI uses its own."""
        self.model, self.variants = model, list(variants)
        self.log_path = log_dir / f"{model}-{'+'.join(self.variants)}{log_suffix}.log"
        cmd = [sys.executable, "-m", "benchmarks.worker", "--model", model, "--variants", *self.variants]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        if quick:
            cmd.append("--quick")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        env["CNN_PARITY_JAX_CACHE"] = str(compile_cache) if compile_cache else "off"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        self.dead = None  # why the process is gone, once it is

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return {"error": f"timed out after {timeout:.0f} s"}
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                return {"error": f"worker exited with status {self.proc.returncode}: {self._tail()}"}
            if line.startswith("@@ "):
                return json.loads(line[3:])

    def _tail(self):
        self._log.flush()
        try:
            lines = [l.strip() for l in self.log_path.read_text().splitlines() if l.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def ask(self, command, timeout=WORKER_TIMEOUT_S):
        if self.dead:
            return {"error": self.dead}
        if command is not None:
            try:
                self.proc.stdin.write(command + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        answer = self._read(timeout)
        if "error" in answer and self.proc.poll() is not None:
            self.dead = answer["error"]
        return answer

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        answer = self.ask("quit", timeout=60)
        self.kill()
        self._log.close()
        return answer.get("peak_rss_mb")


class Candidate:
    def __init__(self, worker: Worker, variant: str):
        self.worker, self.variant = worker, variant
        self.info, self.error = {}, None

    def ask(self, command):
        if self.error:
            return {"error": self.error}
        answer = self.worker.ask(command)
        if "error" in answer:
            self.error = answer["error"]
        return answer


def _reply(out, obj) -> None:
    out.write("@@ " + json.dumps(obj) + "\n")
    out.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    # Answers go to the real stdout; anything the libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from benchmarks.candidates import build

    candidates, setup = {}, {}
    for variant in args.variants:
        tick = time.perf_counter()
        try:
            cand = candidates[variant] = build(args.model, variant, args.data_dir, args.quick)
            setup[variant] = {"setup_s": time.perf_counter() - tick, "steps_per_epoch": cand.steps_per_epoch,
                               "batch_size": cand.batch_size, "device": cand.device, "num_params": cand.num_params,
                               "trainer_default": cand.trainer_default}
        except Exception as e:
            traceback.print_exc()
            setup[variant] = {"error": f"setup failed: {_describe(e)}"}
    _reply(out, setup)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            _reply(out, {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            return 0
        try:
            cand = candidates[words[1]]
            if words[0] == "train":
                epoch, steps = int(words[2]), int(words[3])
                tick = time.perf_counter()
                examples = cand.train(epoch, steps)
                _reply(out, {"seconds": time.perf_counter() - tick, "examples": examples, "load": os.getloadavg()[0]})
            elif words[0] == "tiny":
                _reply(out, {"tiny_step_s": cand.tiny_step_seconds()})
            elif words[0] == "eval":
                tick = time.perf_counter()
                examples = cand.evaluate()
                _reply(out, {"seconds": time.perf_counter() - tick, "examples": examples})
        except Exception as e:
            traceback.print_exc()
            candidates.pop(words[1], None)
            _reply(out, {"error": f"{words[0]} failed: {_describe(e)}"})
    return 0


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:500]


if __name__ == "__main__":
    sys.exit(main())
