"""`python -m cnn_parity.export --checkpoint PATH --out FILE.safetensors`: a checkpoint's weights as a
framework-neutral safetensors file (canonical names and layouts, see cnn_parity/weights.py), loadable by
both frameworks (`--init-weights`, `evaluate --checkpoint`)."""

from __future__ import annotations

import json
import sys

from cnn_parity import checkpoints
from cnn_parity.commands import OneLineParser, report_errors
from cnn_parity.errors import UsageError
from cnn_parity.weights import load_safetensors, save_safetensors
from cnn_parity.workdir import check_new_output


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m cnn_parity.export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint folder, a workdir or a .safetensors export (either framework)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the .safetensors file to write (not inside a run's workdir; an existing file only if "
                             "it is an export of this project, or with --force)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file whatever it holds")
    args = parser.parse_args(argv)
    return report_errors(parser.prog, lambda: export(args.checkpoint, args.out, args.force))


def _is_export(path) -> bool:
    try:
        return load_safetensors(path)[2].get("format") == "cnn_parity"
    except UsageError:
        return False


def export(checkpoint: str, out: str, force: bool = False) -> int:
    real = check_new_output(out, _is_export, force)
    model, arrays, info = checkpoints.load_weights(checkpoint)
    metadata = {"framework": info["framework"], "step": str(info["step"])}
    if info["recipe"]:
        metadata["recipe"] = json.dumps(info["recipe"])
    try:
        save_safetensors(real, model, arrays, metadata)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {model} weights (trained with {info['framework']}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
