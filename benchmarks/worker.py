"""One benchmark candidate in its own process, driven by benchmarks.run over stdin/stdout.

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
import sys
import time
import traceback


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
