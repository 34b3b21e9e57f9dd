"""`python -m cnn_parity.tfds_prepare --out DIR [--datasets mnist fashion_mnist] [--data-dir IDX_DIR]`:
MNIST and Fashion-MNIST as tensorflow-datasets data sets in the TFDS data dir DIR, prepared offline
from the verified IDX files (see cnn_parity/tfds_data.py), for `tfds.data_source(..., data_dir=DIR)`
and `--pipeline tfds --data-dir DIR`. A data set DIR already holds is left as it is."""

from __future__ import annotations

import sys

from cnn_parity import tfds_data
from cnn_parity.commands import OneLineParser, report_errors
from cnn_parity.data import IDX_DATASETS as DATASETS


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m cnn_parity.tfds_prepare", description=__doc__)
    parser.add_argument("--out", required=True, metavar="DIR", help="the TFDS data dir to write into")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), metavar="NAME",
                        help=f"which data sets (default: {' '.join(DATASETS)})")
    parser.add_argument("--data-dir", metavar="DIR", help="where the IDX files are, if not where cnn_parity.data "
                        "finds them by default (see docs/data.md)")
    args = parser.parse_args(argv)
    return report_errors(parser.prog, lambda: prepare_all(args.out, args.datasets, args.data_dir))


def prepare_all(out: str, datasets: list[str], idx_data_dir: str | None) -> int:
    for dataset in datasets:
        prepared_now = tfds_data.ensure_prepared(dataset, out, idx_data_dir)
        print(f"{dataset}: {'prepared' if prepared_now else 'already prepared'} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
