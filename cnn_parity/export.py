"""`python -m cnn_parity.export --checkpoint PATH --out FILE.safetensors`: a checkpoint's weights as a
framework-neutral safetensors file (canonical names and layouts, see cnn_parity/weights.py), loadable by
both frameworks (`--init-weights`, `evaluate --checkpoint`)."""

from __future__ import annotations

import argparse
import json
import sys

from cnn_parity import checkpoints
from cnn_parity.errors import CnnParityError, UsageError
from cnn_parity.weights import save_safetensors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnn_parity.export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint folder or a workdir")
    parser.add_argument("--out", required=True, metavar="FILE", help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        model, arrays, info = checkpoints.load_weights(args.checkpoint)
        metadata = {"framework": info["framework"], "step": str(info["step"])}
        if info["recipe"]:
            metadata["recipe"] = json.dumps(info["recipe"])
        try:
            save_safetensors(args.out, model, arrays, metadata)
        except OSError as e:
            raise UsageError(f"cannot write {args.out}: {e.strerror or e}") from None
    except CnnParityError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {model} weights (trained with {info['framework']}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
