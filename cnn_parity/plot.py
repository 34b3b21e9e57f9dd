"""`python -m cnn_parity.plot WORKDIR [WORKDIR ...] --out curves.png`: learning curves of one or more runs
(e.g. a Flax and a PyTorch run) overlaid: train loss and test accuracy per epoch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cnn_parity.commands import OneLineParser, report_errors, require_extra
from cnn_parity.errors import UsageError
from cnn_parity.workdir import check_new_output, read_metrics




def pairing(recipe: dict) -> str:
    """What a run shares with its twin in the other framework: its initial weights, its batch order."""
    shared = [what for key, what in (("init_rng", "init"), ("shuffle_rng", "order"))
              if recipe.get(key) == "shared"]
    return f"shared {' + '.join(shared)}" if shared else "own init and order"


def _label(workdir: Path) -> str:
    config = workdir / "config.json"
    if not config.is_file():
        return workdir.name
    try:
        info = json.loads(config.read_text())
        recipe = info["recipe"]
        return f"{info['framework']} {recipe['model']} (seed {recipe['seed']}; {pairing(recipe)})"
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{config} is not a run's config ({type(e).__name__}: {e})") from None


def _records(workdir: Path) -> list[dict]:
    records = read_metrics(workdir)
    if not records:
        raise UsageError(f"{workdir} has no complete epoch to plot yet")
    return records


# Recorded in every image this command writes, so that it replaces its own images and nothing else.
_SOFTWARE = "cnn_parity.plot"


def _is_plot(path: Path) -> bool:
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            return image.info.get("Software") == _SOFTWARE
    except (OSError, ValueError):
        return False


def check_output(out: Path, force: bool = False) -> Path:
    """The real path to draw to, after refusing an output path matplotlib cannot write, or one this
    command must not replace, before anything is drawn."""
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name the image file, e.g. {out / 'curves.png'}")
    real = check_new_output(out, _is_plot, force)
    if out.suffix.lstrip(".").lower() not in supported:
        raise UsageError(f"--out {out}: unknown image format {out.suffix or '(none)'!r}; "
                         f"use one of: {', '.join('.' + s for s in sorted(supported))}")
    return real


def plot_runs(workdirs: list[Path], out: Path, title: str | None = None, force: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = check_output(out, force)
    runs = [(_records(workdir), _label(workdir)) for workdir in workdirs]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for records, label in runs:
        epochs = [r["epoch"] for r in records]
        loss_ax.plot(epochs, [r["train_loss"] for r in records], marker="o", label=label)
        acc_ax.plot(epochs, [100 * r["test_accuracy"] for r in records], marker="o", label=label)
    loss_ax.set(xlabel="epoch", ylabel="train loss (mean over the epoch)", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(real, dpi=120, metadata={"Software": _SOFTWARE} if out.suffix.lower() == ".png" else None)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m cnn_parity.plot", description=__doc__)
    parser.add_argument("workdirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("curves.png"))
    parser.add_argument("--title")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file whatever it holds")
    args = parser.parse_args(argv)

    def body() -> int:
        require_extra("matplotlib", "plots")
        plot_runs(args.workdirs, args.out, args.title, args.force)
        print(f"wrote {args.out}")
        return 0

    return report_errors(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
