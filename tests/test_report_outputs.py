"""What the generators of the README's tables write, from records of the shape they produce: the
benchmark's tables, ratios and chart (benchmarks/tables.py, ratios.py; what `python -m benchmarks.run`
writes) and the parity report's two tables (parity_tests/report.py: the full one in parity.md, the
compact one in the README), from the committed report's measurements. No timing and no speed
threshold: the records are made up or committed; only their rendering is checked."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import ratios, tables

REPO = Path(__file__).resolve().parent.parent


def record(model, variant, rates, framework="flax", others=None):
    """A benchmarks.rounds record with train rates `rates` (one per round) and other processes' share of
    the CPU during each round (default: none)."""
    return {"model": model, "framework": framework, "variant": variant, "batch_size": 64,
            "trainer_default": variant in ("jaxlib-onednn-chunked", "eager"), "train_samples_per_s": ratios.median(rates),
            "train_samples_per_s_all": rates, "eval_samples_per_s": 1e4, "epoch_s": 6e4 / ratios.median(rates),
            "train_ms_per_step": 64e3 / ratios.median(rates), "train_cpu_ms_per_step": 60e3 / ratios.median(rates),
            "others_cpu_fraction_during": others or [0.0] * len(rates), "rounds": len(rates),
            "compile_s": 2.0, "compile_s_second_run": 0.5, "peak_rss_mb": 500.0, "flops_per_sample": 2e6,
            "gemm_peak_fraction": 0.1, "tiny_step_s": None}


def lenet_and_mlp():
    return [record("lenet", "jit-loop", [400.0, 410.0, 390.0]),
            record("lenet", "gemm-chunked", [900.0, 1000.0, 950.0]),
            record("lenet", "canonical-chunked", [1000.0, 1010.0, 1005.0]),
            record("lenet", "jaxlib-onednn-chunked", [1200.0, 1210.0, 1190.0], others=[0.0, 0.3, 0.0]),
            record("lenet", "onednn-chunked", [1500.0, 1520.0, 1490.0]),
            record("lenet", "eager", [1000.0, 1000.0, 1000.0], "torch"),
            record("mlp", "gemm-chunked", [5000.0]),
            record("mlp", "jaxlib-onednn-chunked", [5000.0]),
            record("mlp", "eager", [1000.0, 1100.0], "torch")]


def test_ratios_pair_rounds_and_fall_back_to_the_widest_interval():
    paired = ratios.ratio([900.0, 1000.0, 950.0], [1000.0, 800.0, 1000.0])
    assert (paired.value, paired.low, paired.high, paired.rounds, paired.paired) == (0.95, 0.9, 1.25, 3, True)
    assert paired.wide  # 0.35 / 0.95 > WIDE_INTERVAL
    unpaired = ratios.ratio([5000.0], [1000.0, 1250.0])
    assert (unpaired.low, unpaired.high, unpaired.rounds, unpaired.paired) == (4.0, 5.0, 1, False)
    assert unpaired.wide and unpaired.text() == "4.44 [4.00–5.00] ⚠"
    assert not ratios.ratio([1000.0, 1010.0], [1000.0, 1000.0]).wide
    assert ratios.ratio([], [1.0]) is None


def test_goals_table_shows_every_tier_with_intervals_the_default_in_bold_and_flags_wide_and_busy_ones():
    records = lenet_and_mlp()
    ratios.annotate(records)
    table = tables.goals_table(records)
    lines = table.splitlines()
    assert lines[0].startswith("| model | stock Flax (`jit-loop`) ×eager | im2col (`gemm-chunked`) ×eager | "
                               "pure JAX (`canonical-chunked`) ×eager | jaxlib oneDNN (`jaxlib-onednn-chunked`) ×eager | "
                               "oneDNN extension (`onednn-chunked`) ×eager | default / eager ms per step (wall / CPU) |")
    lenet = next(line for line in lines if line.startswith("| lenet |"))
    assert ("| 0.40 [0.39–0.41] | 0.95 [0.90–1.00] ⚠ | 1.00 [1.00–1.01] | **1.20 [1.19–1.21]** | 1.50 [1.49–1.52] | "
            "53.33 / 50.00 vs 64.00 / 60.00 |") in lenet
    mlp = next(line for line in lines if line.startswith("| mlp |"))
    assert ("| — | — (no convolution) | — (no convolution) | **4.76 [4.55–5.00] ⚠** | — (no convolution) |") in mlp
    assert lines[-3] == ("⚠ Too uncertain to quote (rerun with longer trials or more rounds, idle): "
                         "lenet im2col: 3 round(s), 0.90–1.00; mlp jaxlib oneDNN: 1 round(s), 4.55–5.00.")
    assert lines[-1] == ("⚠ Rounds taken while other processes used more than 10 % of the CPU (not an idle "
                         "machine's figures): lenet `jaxlib-onednn-chunked` 1 of 3.")
    by_variant = {(r["model"], r["variant"]): r for r in records}
    assert by_variant["lenet", "onednn-chunked"]["tier"] == "oneDNN extension"
    assert by_variant["mlp", "gemm-chunked"]["tier"] is None
    assert by_variant["mlp", "jaxlib-onednn-chunked"]["tier"] == "jaxlib oneDNN"
    assert by_variant["lenet", "gemm-chunked"]["ratio_to_eager"]["wide"] is True


def test_every_candidate_row_names_its_tier_its_ratio_interval_its_step_times_and_busy_rounds():
    records = lenet_and_mlp()
    table = tables.markdown_table(records, meta={})
    row = next(line for line in table.splitlines() if "| gemm-chunked (im2col) |" in line and "lenet" in line)
    assert "| 0.95 [0.90–1.00] ⚠ |" in row and "| 67.37 / 63.16 |" in row and row.endswith("| 0 |")
    busy = next(line for line in table.splitlines() if "| jaxlib-onednn-chunked (jaxlib oneDNN) |" in line and "lenet" in line)
    assert busy.endswith("| ⚠ 1 of 3 |")
    assert "| gemm-chunked |" in next(line for line in table.splitlines() if line.startswith("| mlp | flax | gemm"))


def test_the_chart_is_written(tmp_path):
    meta = {"machine": {"cpu_model": "test CPU", "cpu_count": 2}, "gemm": {"peak_gflops": 50.0}}
    tables.write_chart(lenet_and_mlp(), tmp_path / "bench.png", meta)
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def parity_report():
    """The committed parity report's measurements, with the conv_impl record of the current format."""
    from parity_tests import report as parity_report_module

    report = json.loads((REPO / "reports" / "parity" / "parity.json").read_text())
    report["conv_impl"] = {name: "none" if name == "mlp" else "gemm" for name in report["models"]}
    return parity_report_module, report


def test_parity_table_has_a_row_per_model_and_api_and_names_failed_bounds(parity_report):
    module, report = parity_report
    report = copy.deepcopy(report)
    report["models"]["lenet"]["nnx"]["within_bounds"]["forward"] = False
    table = module.markdown(report)
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split(" | ")[:2] for row in rows] == [[f"| {m}", api] for m in report["models"] for api in ("linen", "nnx")]
    assert rows[-3].endswith("| NO: forward |") and rows[-1].endswith("| yes |")
    assert ("Flax convolutions: conv_impl gemm (mlp: none), what the trainer's default `auto` chooses here "
            "(flax_impl/kernels.py).") in table


def test_parity_report_with_an_unknown_model_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "parity_tests.report", "--models", "resnet", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m parity_tests.report: error: argument --models: invalid choice: 'resnet' (choose from 'mlp', "
        "'cnn_base', 'cnn_2layer', 'lenet', 'fashion_cnn')"]


def test_parity_report_takes_models_as_a_space_separated_list_like_every_other_command(capsys):
    from parity_tests import report
    with pytest.raises(SystemExit) as stopped:  # only the bad flag is refused: both models were taken
        report.main(["--models", "mlp", "lenet", "--out", "unused", "--bogus"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: unrecognized arguments: --bogus")


def table_rows(table: str) -> list[list[str]]:
    """The body rows of the first Markdown table in `table`, as lists of cells."""
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def test_full_parity_table_names_its_columns_in_plain_words(parity_report):
    module, report = parity_report
    header = module.markdown(report).splitlines()[0]
    assert header.count(" | ") == 16  # 17 columns: every measurement
    for jargon in ("fp32", "fp64", "grads", "torch vs torch", "params"):
        assert jargon not in header, jargon


def test_readme_parity_table_is_compact_and_links_its_legend(parity_report):
    module, report = parity_report
    report = copy.deepcopy(report)
    report["models"]["lenet"]["nnx"]["within_bounds"]["forward"] = False
    report["models"]["fashion_cnn"]["linen"]["trajectory_steps"] = 91  # a near-tie ended the compared steps
    table = module.readme_table(report)
    lines = table.splitlines()
    assert lines[0] == ("| model | Flax API | parameters | outputs: max \\|Δ\\| | gradients: max \\|Δ\\| "
                        "| 100 training steps: loss max \\|Δ\\| (bound) | within every bound |")
    rows = table_rows(table)
    assert [row[:2] for row in rows] == [[m, api] for m in report["models"] for api in ("linen", "nnx")]
    assert all(len(row) == 7 for row in rows)
    by_key = {(row[0], row[1]): row for row in rows}
    cnn_base, fashion_cnn = report["models"]["cnn_base"]["linen"], report["models"]["fashion_cnn"]["linen"]
    assert by_key["cnn_base", "linen"][2:6] == [
        "123,222", f"{cnn_base['forward_max_abs_diff']:.1e}", f"{cnn_base['grad_max_abs_diff']:.1e}",
        f"{cnn_base['trajectory_max_loss_diff']:.1e} ({cnn_base['trajectory_loss_bound']:.1e})"]
    assert by_key["lenet", "nnx"][6] == "NO: forward" and by_key["lenet", "linen"][6] == "yes"
    assert by_key["fashion_cnn", "linen"][5] == (f"{fashion_cnn['trajectory_max_loss_diff']:.1e} "
                                                 f"({fashion_cnn['trajectory_loss_bound']:.1e}), first 91 steps")
    legend = next(line for line in lines if line.startswith("max |Δ|:"))
    assert "[docs/parity.md](docs/parity.md)" in legend
    assert lines[-1].startswith("Measured on cpu (cpu) / torch cpu (2 CPUs), float32")


def test_committed_parity_tables_are_what_the_committed_report_renders(tmp_path, capsys):
    """The README's block and reports/parity/parity.md come from reports/parity/parity.json (rendered
    again, nothing measured): no figure is typed."""
    from parity_tests import report

    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- parity-report:begin -->\nold\n<!-- parity-report:end -->\nafter\n")
    out = tmp_path / "parity"
    assert report.main(["--from-json", str(REPO / "reports" / "parity" / "parity.json"), "--out", str(out),
                        "--update-readme", str(readme)]) == 0
    assert not (out / "parity.json").exists()
    assert (out / "parity.md").read_text() == (REPO / "reports" / "parity" / "parity.md").read_text()

    def block(text: str) -> str:
        return text.split("<!-- parity-report:begin -->\n")[1].split("<!-- parity-report:end -->")[0]

    assert block(readme.read_text()) == block((REPO / "README.md").read_text())
    assert readme.read_text().startswith("before\n") and readme.read_text().endswith("after\n")
    assert capsys.readouterr().out.startswith("| model | Flax API | parameters |")


def test_parity_report_from_json_refuses_measuring_flags_and_unreadable_reports(tmp_path, capsys):
    from parity_tests import report

    with pytest.raises(SystemExit) as stopped:
        report.main(["--from-json", "parity.json", "--models", "mlp", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == ("python -m parity_tests.report: error: --from-json renders a report "
                                               "written earlier and measures nothing: leave out --models")
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text('{"models": {"mlp": {"linen": {}}}}')
    assert report.main(["--from-json", str(not_a_report), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"python -m parity_tests.report: error: {not_a_report} is not a parity report")
    assert "\n" not in error


def test_readme_reproduction_table_is_what_the_committed_report_renders(tmp_path):
    """The README's reproduction block is what `python -m parity_studies.reproduce ... --update-readme
    README.md` writes from reports/reproduction/report.json: no figure is typed."""
    from parity_studies import reproduction_report
    from cnn_parity.markdown import replace_marked_block

    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    report = json.loads((REPO / "reports" / "reproduction" / "report.json").read_text())
    replace_marked_block(readme, reproduction_report.README_MARKER, reproduction_report.readme_table(report))
    assert readme.read_text() == (REPO / "README.md").read_text()


def test_the_readme_table_is_refused_from_a_busy_machine_before_the_run(tmp_path, monkeypatch, capsys):
    from benchmarks import run as benchmarks_run

    readme = tmp_path / "README.md"
    readme.write_text("<!-- benchmark-goals:begin -->\nold\n<!-- benchmark-goals:end -->\n")
    monkeypatch.setattr(benchmarks_run, "busy_cpu_fraction", lambda: 0.5)
    monkeypatch.setattr(benchmarks_run, "measure", lambda *args: pytest.fail("a busy machine's run was measured"))
    assert benchmarks_run.main(["--models", "lenet", "--update-readme", str(readme), "--out", str(tmp_path / "out")]) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "the machine is not idle (50 % of its CPU busy before the run)" in said[0]
    assert "old" in readme.read_text()
