"""Measure Flax-vs-PyTorch parity for all five models, with the Flax side in each API (Linen, NNX),
and NNX against Linen, and write DIR/parity.json and DIR/parity.md.

    python -m parity_tests.report --out DIR [--models mlp lenet] [--data-dir PATH] [--no-accuracy]
                                  [--update-readme README.md]
    python -m parity_tests.report --from-json DIR/parity.json --out DIR [--update-readme README.md]

The numbers are the parity tests' own measurements (parity_tests/measurements.py), judged by the
tests' bounds and verdicts (parity_tests/bounds.py). DIR/parity.md holds the full table (every
measurement); --update-readme replaces the text between the lines `<!-- parity-report:begin -->` and
`<!-- parity-report:end -->` of that file with the compact table (outputs, gradients, the training
trajectory, the verdict), so the README's table is regenerated, never typed. --from-json measures
nothing: it renders both tables again from a report written earlier. Exit status 1 when a model is
outside a bound. What every column means: docs/parity.md.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from cnn_parity.commands import OneLineParser, report_errors
from cnn_parity.errors import CnnParityError, UsageError
from cnn_parity.files import read_json
from cnn_parity.provenance import versions
from cnn_parity.recipes import MODELS, load_recipe
from cnn_parity.markdown import replace_marked_block
from parity_tests import accuracy, batches, bounds, precision
from parity_tests.apis import measure_apis
from parity_tests.gradients import grad_cases
from parity_tests.measurements import Measurements
from parity_tests.outputs import forward_cases
from parity_tests.pairs import APIS, default_conv_impl
from parity_tests.trajectory import FLOAT64_BATCH, TRAJECTORY_BATCH, TRAJECTORY_STEPS
from parity_tests.updates import OPTIMIZER_STEPS

README_MARKER = "parity-report"  # the README block --update-readme regenerates


def measure_model(m: Measurements, name: str, with_accuracy: bool) -> dict[str, Any]:
    recipe = load_recipe(name)
    num_flax, num_torch = m.num_params(name)
    forward = {f"{d}/{k}/{n}": m.forward(name, d, k, n) for d, k, n in forward_cases()}
    grads = {f"{kind}/{'train' if train else 'eval'}": m.grads(name, kind, train) for kind, train in grad_cases(name)}
    traj, traj64, control = m.trajectory(name), m.trajectory(name, "float64"), m.control(name)
    trajectory_check = bounds.check_trajectory(traj, lambda: control)
    o = recipe.optimizer
    first_step = bounds.check_first_step(traj.param_diffs[0], o.name, lambda: m.first_update_excess(name))
    result = {
        "num_params_flax": num_flax,
        "num_params_torch": num_torch,
        "forward_max_abs_diff": max(forward.values()),
        "grad_max_abs_diff": max(g.max_abs_diff for g in grads.values()),
        "update_max_abs_diff": traj.param_diffs[0],
        "trajectory_steps": traj.steps,
        "trajectory_max_loss_diff": traj.max_loss_diff,
        "trajectory_max_param_diff": traj.final_param_diff,
        # Beyond the required keys: how, and against what.
        "optimizer": {"name": o.name, "lr": o.lr, "momentum": o.momentum, "b1": o.b1, "b2": o.b2, "eps": o.eps},
        "forward_cases": forward,
        "grad_max_rel_diff": max(g.max_rel_diff for g in grads.values()),
        "grad_cases": {k: {"max_abs_diff": g.max_abs_diff, "max_rel_diff": g.max_rel_diff, "loss_diff": g.loss_diff}
                       for k, g in grads.items()},
        "update_same_gradients_max_abs_diff": max(m.same_gradient_updates(name)),
        "update_first_step": first_step,
        "trajectory_batch_size": TRAJECTORY_BATCH,
        "trajectory_max_param_diff_any_step": max(traj.param_diffs),
        "trajectory_loss_bound": trajectory_check.loss_bound,
        "trajectory_param_bound": trajectory_check.param_bound,
        "trajectory_float64": {"batch_size": FLOAT64_BATCH, "steps": traj64.steps,
                               "max_loss_diff": traj64.max_loss_diff, "max_param_diff": traj64.final_param_diff},
        "torch_kernel_control": {"what": "torch vs torch channels_last, same weights/batches/masks",
                                 "max_loss_diff": control.max_loss_diff, "max_param_diff": control.final_param_diff},
        "trajectory_curves": {"float32": traj.to_dict(), "float64": traj64.to_dict(), "control": control.to_dict()},
    }
    result["within_bounds"] = {
        "num_params": num_flax == num_torch,
        "forward": result["forward_max_abs_diff"] <= bounds.FORWARD_ABS,
        "grad": result["grad_max_abs_diff"] <= bounds.GRAD_ABS,
        "update": first_step["ok"] and result["update_same_gradients_max_abs_diff"] <= bounds.UPDATE_ABS,
        "trajectory": trajectory_check.ok,
        "trajectory_float64": bounds.float64_trajectory_ok(traj64),
    }
    if with_accuracy:
        budget = bounds.ACCURACY[name]
        flax_acc = accuracy.independent_accuracy("flax", name, 0, budget.steps, api=m.api)
        torch_acc = accuracy.independent_accuracy("torch", name, 0, budget.steps)
        result["accuracy"] = {
            "steps": budget.steps, "batch_size": TRAJECTORY_BATCH, "test_images": accuracy.ACCURACY_TEST_IMAGES,
            "seed": 0, "bound": budget.bound, "floor": budget.floor, "flax": flax_acc, "torch": torch_acc,
        }
        result["within_bounds"]["accuracy"] = budget.learned(flax_acc, torch_acc) and budget.agree(flax_acc, torch_acc)
    return result


def _e(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def _optimiser(o: dict[str, Any]) -> str:
    return f"{o['name']} {o['lr']:g}" + (f", momentum {o['momentum']:g}" if o["momentum"] else "")


def _rows(report: dict[str, Any]):
    return ((name, api, r) for name, by_api in report["models"].items() for api, r in by_api.items())


def _verdict(r: dict[str, Any]) -> str:
    failed = [k for k, v in r["within_bounds"].items() if not v]
    return "yes" if not failed else "NO: " + ", ".join(failed)


def _bound(report: dict[str, Any], name: str) -> Any:
    """A bound as the report recorded it (a report renders with its own bounds), else bounds.py's."""
    return report.get("bounds", {}).get(name, getattr(bounds, name))


def markdown(report: dict[str, Any]) -> str:
    """The full table, every measurement of every model and Flax API, with the bounds, the Flax
    convolutions and the machine: DIR/parity.md."""
    lines = [
        "| model | Flax API | optimiser | parameters (Flax / PyTorch) | outputs max \\|Δ\\| | gradients max \\|Δ\\| "
        "| optimiser update from the same gradients, max \\|Δ\\| | one full train step, parameters max \\|Δ\\| "
        "| trajectory steps | trajectory loss max \\|Δ\\| (float32) | trajectory final parameters max \\|Δ\\| (float32) "
        "| trajectory bound, float32 (loss / parameters) | trajectory in float64, max \\|Δ\\| (loss / parameters) "
        "| PyTorch against itself, channels_last kernels (loss / parameters) "
        "| test accuracy, independent inits (Flax / PyTorch) | NNX vs Linen max \\|Δ\\| | within bounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, api, r in _rows(report):
        f64, ctl, step = r["trajectory_float64"], r["torch_kernel_control"], r["update_first_step"]
        step_text = _e(step["max_abs_diff"])
        if step["excess_over_gradient_rounding"] is not None:
            step_text += f" ({_e(max(step['excess_over_gradient_rounding'], 0.0))} beyond Adam's rounding)"
        acc = f"{r['accuracy']['flax']:.3f} / {r['accuracy']['torch']:.3f}" if "accuracy" in r else "—"
        versus_linen = _e(r["nnx_vs_linen"]["worst"]) if "nnx_vs_linen" in r else "—"
        lines.append(
            f"| {name} | {api} | {_optimiser(r['optimizer'])} | {r['num_params_flax']:,} / {r['num_params_torch']:,} "
            f"| {_e(r['forward_max_abs_diff'])} "
            f"| {_e(r['grad_max_abs_diff'])} | {_e(r['update_same_gradients_max_abs_diff'])} | {step_text} "
            f"| {r['trajectory_steps']} | {_e(r['trajectory_max_loss_diff'])} | {_e(r['trajectory_max_param_diff'])} "
            f"| {_e(r['trajectory_loss_bound'])} / {_e(r['trajectory_param_bound'])} "
            f"| {_e(f64['max_loss_diff'])} / {_e(f64['max_param_diff'])} | {_e(ctl['max_loss_diff'])} / {_e(ctl['max_param_diff'])} "
            f"| {acc} | {versus_linen} | {_verdict(r)} |")
    lines += [
        "",
        f"Bounds (parity_tests/bounds.py): forward ≤ {_bound(report, 'FORWARD_ABS'):g}; gradients ≤ {_bound(report, 'GRAD_ABS'):g}; "
        f"optimiser update ≤ {_bound(report, 'UPDATE_ABS'):g} (same gradients into both, {OPTIMIZER_STEPS} steps; and one "
        f"full train step, where for Adam only the part not explained by its 1/(|g| + eps) amplification of gradient "
        f"rounding counts); trajectory per-step loss and final parameters ≤ {_bound(report, 'TRAJECTORY_LOSS'):g}, in float32 "
        f"the larger of that and {_bound(report, 'CONTROL_FACTOR'):g}x torch's own drift against itself with channels_last "
        f"convolution kernels. Trajectory: {TRAJECTORY_STEPS} steps of real data, batch {TRAJECTORY_BATCH} "
        f"(float64 run: batch {FLOAT64_BATCH}), the recipe's optimiser, identical start weights, batch order "
        f"and dropout masks. Accuracy: independent inits (seed 0 in each framework's own RNG), short budget, "
        f"first {accuracy.ACCURACY_TEST_IMAGES} test images. NNX vs Linen: the largest |Δ| between the two Flax "
        f"APIs' eval and train-mode outputs, dropout masks, losses, gradients and {TRAJECTORY_STEPS}-step "
        f"trajectories from the same weights, batches and dropout keys (bound: {_bound(report, 'NNX_VS_LINEN_ABS'):g}, bitwise).",
        "",
        f"Flax convolutions: {conv_impls(report['conv_impl'])}, what the trainer's default `auto` chooses here "
        f"(flax_impl/kernels.py).",
        "",
        _measured_on(report),
    ]
    return "\n".join(lines) + "\n"


def readme_table(report: dict[str, Any]) -> str:
    """The compact table for the README: per model and Flax API, the parameter count, the largest
    output and gradient differences, the training trajectory's largest loss difference against its
    bound, and the verdict over every check; a legend pointing to docs/parity.md."""
    steps = max((r["trajectory_steps"] for _, _, r in _rows(report)), default=TRAJECTORY_STEPS)
    lines = [
        f"| model | Flax API | parameters | outputs: max \\|Δ\\| | gradients: max \\|Δ\\| "
        f"| {steps} training steps: loss max \\|Δ\\| (bound) | within every bound |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, api, r in _rows(report):
        flax_n, torch_n = r["num_params_flax"], r["num_params_torch"]
        params = f"{flax_n:,}" if flax_n == torch_n else f"{flax_n:,} / {torch_n:,}"
        trajectory = f"{_e(r['trajectory_max_loss_diff'])} ({_e(r['trajectory_loss_bound'])})"
        if r["trajectory_steps"] != steps:
            trajectory += f", first {r['trajectory_steps']} steps"
        lines.append(f"| {name} | {api} | {params} | {_e(r['forward_max_abs_diff'])} | {_e(r['grad_max_abs_diff'])} "
                     f"| {trajectory} | {_verdict(r)} |")
    lines += [
        "",
        "max |Δ|: the largest absolute difference between the Flax and the PyTorch side, from the same weights and "
        "batches; the bounds, the other checks (optimiser updates, float64, accuracy, NNX vs Linen) and the full "
        "table: [docs/parity.md](docs/parity.md).",
        "",
        _measured_on(report),
    ]
    return "\n".join(lines) + "\n"


def _measured_on(report: dict[str, Any]) -> str:
    d, v = report["device"], report["versions"]
    return (f"Measured on {d['jax']} / torch {d['torch']} ({d['cpu_count']} CPUs), float32, "
            f"jax_default_matmul_precision={d['jax_default_matmul_precision']}, TF32 "
            f"{'on' if d['torch_tf32'] == 'True' else 'off'}; "
            + ", ".join(f"{k} {v[k]}" for k in ("jax", "flax", "optax", "torch") if k in v) + ".")


def conv_impls(by_model: dict[str, str]) -> str:
    """"conv_impl gemm (mlp: none)": the conv_impl of each model, grouped."""
    groups: dict[str, list[str]] = {}
    for model, impl in by_model.items():
        groups.setdefault(impl, []).append(model)
    common = max(groups, key=lambda impl: len(groups[impl]))
    others = "; ".join(f"{', '.join(ms)}: {impl}" for impl, ms in groups.items() if impl != common)
    return f"conv_impl {common}" + (f" ({others})" if others else "")


PARITY_MD_HEADER = (
    "# Flax ↔ PyTorch parity\n\n"
    "Generated by `python -m parity_tests.report`; every figure comes from parity.json beside this file. What "
    "each column measures, and the bounds: docs/parity.md.\n\n")


def load_report(path: str | Path) -> dict[str, Any]:
    """A report written earlier (DIR/parity.json), checked to render."""
    report = read_json(path)
    try:
        markdown(report), readme_table(report)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise UsageError(f"{path} is not a parity report written by python -m parity_tests.report "
                         f"({type(e).__name__}: {e})") from None
    return report


def write_tables(report: dict[str, Any], out: Path, update_readme: str | None) -> str:
    """DIR/parity.md (the full table) and, with `update_readme`, that file's marked block (the
    compact table); returns the compact table."""
    (out / "parity.md").write_text(PARITY_MD_HEADER + markdown(report))
    compact = readme_table(report)
    if update_readme:
        try:
            replace_marked_block(update_readme, README_MARKER, compact)
        except CnnParityError as e:  # parity.md (and parity.json) are written: say so, in one line
            raise type(e)(f"{e} (the report is in {out})") from None
    return compact


def measure(models: list[str], with_accuracy: bool) -> dict[str, Any]:
    """Every measurement of `models`, with both Flax APIs, and what they ran on: parity.json."""
    by_api = {api: Measurements(api) for api in APIS}
    report: dict[str, Any] = {"models": {}}
    for name in models:
        start = time.time()
        report["models"][name] = {api: measure_model(m, name, with_accuracy=with_accuracy)
                                  for api, m in by_api.items()}
        versus_linen = measure_apis(name)
        nnx = report["models"][name]["nnx"]
        nnx["nnx_vs_linen"] = {**dataclasses.asdict(versus_linen), "worst": versus_linen.worst}
        nnx["within_bounds"]["nnx_vs_linen"] = versus_linen.worst <= bounds.NNX_VS_LINEN_ABS
        print(f"{name}: measured in {time.time() - start:.0f}s", file=sys.stderr, flush=True)
    report["conv_impl"] = {name: default_conv_impl(name) for name in models}
    report["versions"] = versions()
    report["device"] = precision.device_description()
    report["bounds"] = {k: getattr(bounds, k) for k in dir(bounds) if k.isupper() and k != "ACCURACY"}
    report["bounds"]["ACCURACY"] = {k: dataclasses.asdict(v) for k, v in bounds.ACCURACY.items()}
    return report


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m parity_tests.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for parity.json and parity.md")
    p.add_argument("--models", nargs="+", choices=MODELS, default=None, metavar="MODEL",
                   help=f"models to measure (default: all; {', '.join(MODELS)})")
    p.add_argument("--data-dir", default=None,
                   help="folder holding mnist/ (default $CNN_PARITY_DATA_DIR, else the cache)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the independent-init accuracy runs (test 8)")
    p.add_argument("--update-readme", metavar="PATH",
                   help="replace the marked table block in this file with the compact table")
    p.add_argument("--from-json", metavar="PARITY_JSON",
                   help="measure nothing: render parity.md (and --update-readme's table) again from this report")
    args = p.parse_args(argv)
    if args.from_json is not None:
        given = [flag for flag, value in (("--models", args.models), ("--data-dir", args.data_dir),
                                          ("--no-accuracy", args.no_accuracy or None)) if value is not None]
        if given:
            p.error(f"--from-json renders a report written earlier and measures nothing: leave out {', '.join(given)}")
    out = Path(args.out)

    def body() -> int:
        if args.from_json is not None:
            report = load_report(args.from_json)
            out.mkdir(parents=True, exist_ok=True)
        else:
            precision.configure()
            batches.set_data_dir(batches.default_data_dir() if args.data_dir is None else args.data_dir)
            out.mkdir(parents=True, exist_ok=True)
            report = measure(list(dict.fromkeys(args.models or MODELS)), not args.no_accuracy)
            (out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
        print(write_tables(report, out, args.update_readme))
        print(f"Full table: {out / 'parity.md'}")
        ok = all(all(r["within_bounds"].values()) for by_api in report["models"].values() for r in by_api.values())
        return 0 if ok else 1

    return report_errors(p.prog, body)

if __name__ == "__main__":
    sys.exit(main())
