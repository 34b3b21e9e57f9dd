"""One benchmark candidate in its own process, driven by benchmarks.run over stdin/stdout.

Commands (one per line on stdin): `train EPOCH STEPS`, `eval`, `quit`. Each answer is one line on
stdout starting with `@@ ` followed by JSON. The process imports only its own framework, so its peak
RSS (`ru_maxrss`) is that candidate's alone.
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
    p.add_argument("--pipeline", required=True)
    p.add_argument("--data-dir")
    args = p.parse_args()
    # Answers go to the real stdout; anything the libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from benchmarks.candidates import build

    tick = time.perf_counter()
    try:
        cand = build(args.model, args.pipeline, args.data_dir)
    except Exception as e:
        traceback.print_exc()
        _reply(out, {"error": f"setup failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"})
        return 1
    _reply(out, {"setup_s": time.perf_counter() - tick, "steps_per_epoch": cand.steps_per_epoch,
                 "batch_size": cand.batch_size, "device": cand.device, "num_params": cand.num_params})
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "train":
                epoch, steps = int(words[1]), int(words[2])
                tick = time.perf_counter()
                examples = cand.train(epoch, steps)
                _reply(out, {"seconds": time.perf_counter() - tick, "examples": examples, "load": os.getloadavg()[0]})
            elif words[0] == "eval":
                tick = time.perf_counter()
                examples = cand.evaluate()
                _reply(out, {"seconds": time.perf_counter() - tick, "examples": examples})
            elif words[0] == "quit":
                _reply(out, {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
                return 0
        except Exception as e:
            traceback.print_exc()
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            _reply(out, {"error": f"{words[0]} failed: {type(e).__name__}: {msg}"[:500]})
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
