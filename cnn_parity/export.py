"""`python -m cnn_parity.export --checkpoint PATH --out FILE.safetensors`: a checkpoint's weights as a
framework-neutral safetensors file (canonical names and layouts, see cnn_parity/weights.py), loadable by
both frameworks (`--init-weights`, `evaluate --checkpoint`)."""

from __future__ import annotations

import json
import sys

from cnn_parity import checkpoints
from cnn_parity.cli import OneLineParser, report_errors
from cnn_parity.errors import UsageError
from cnn_parity.weights import save_safetensors


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m cnn_parity.export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint folder or a workdir")
    parser.add_argument("--out", required=True, metavar="FILE", help="the .safetensors file to write")
    args = parser.parse_args(argv)
    return report_errors(parser.prog, lambda: export(args.checkpoint, args.out))


def export(checkpoint: str, out: str) -> int:
    model, arrays, info = checkpoints.load_weights(checkpoint)
    metadata = {"framework": info["framework"], "step": str(info["step"])}
    if info["recipe"]:
        metadata["recipe"] = json.dumps(info["recipe"])
    try:
        save_safetensors(out, model, arrays, metadata)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {model} weights (trained with {info['framework']}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
