"""The benchmark's records as tables (bench.md, the README's goals block) and a PNG: every candidate's
row, the Flax tiers against PyTorch eager with their intervals over rounds (benchmarks/ratios.py), and
the summary lines. A timed round in which other processes used more than
machine.IDLE_BUSY_FRACTION of the CPU is flagged (busy_rounds)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import ratios
from benchmarks.candidates import framework_of
from benchmarks.machine import IDLE_BUSY_FRACTION


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def ratio_text(ratio: ratios.Ratio | None) -> str:
    return "—" if ratio is None else ratio.text()


def variant_label(record, records) -> str:
    """The variant, with the tier it measures (benchmarks/ratios.py), if any."""
    tier = ratios.TIER_OF_VARIANT.get(record["variant"])
    tier = tier if tier and ratios.tier_variants(record["model"], records)[tier] == record["variant"] else None
    return f"{record['variant']} ({tier})" if tier else record["variant"]


def busy_rounds(record) -> int:
    """Timed rounds of `record` during which other processes used more than IDLE_BUSY_FRACTION of the CPU."""
    return sum(share > IDLE_BUSY_FRACTION for share in record.get("others_cpu_fraction_during") or [])


def busy_text(record) -> str:
    busy = busy_rounds(record)
    return f"⚠ {busy} of {record['rounds']}" if busy else "0"


def step_text(record) -> str:
    """"wall / CPU" milliseconds per training step (median over rounds), CPU being the worker process's."""
    if record.get("train_ms_per_step") is None:
        return "—"
    return f"{record['train_ms_per_step']:.2f} / {record['train_cpu_ms_per_step']:.2f}"


def markdown_table(records, meta) -> str:
    lines = ["| model | framework | variant | batch | train samples/s (min–max) | ms/step wall / CPU | eval samples/s | "
             "epoch s | compile s (first run / cached) | 1-example step ms | peak RSS MB | MFLOP/sample | % GEMM peak | "
             "×eager [min–max over rounds] | ×torchvision-dataloader epoch | busy rounds |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["model"], r["variant"]): r for r in records}
    for r in records:
        seed = by.get((r["model"], "torchvision-dataloader"), {}).get("epoch_s")
        rate = r["train_samples_per_s"]
        if r.get("error") and rate is None:
            lines.append(f"| {r['model']} | {r['framework']} | {variant_label(r, records)} | {r['batch_size'] or '—'} | "
                         f"error: {r['error'][:120].replace('|', '/')} | | | | | | | | | | | |")
            continue
        spread = f"{rate:,.0f} ({min(r['train_samples_per_s_all']):,.0f}–{max(r['train_samples_per_s_all']):,.0f})"
        lines.append(
            f"| {r['model']} | {r['framework']} | {variant_label(r, records)} | {r['batch_size']} | {spread} | "
            f"{step_text(r)} | {r['eval_samples_per_s']:,.0f} | {r['epoch_s']:.2f} | {r['compile_s']:.2f}"
            f"{' / ' + fmt(r['compile_s_second_run'], '.2f') if r.get('compile_s_second_run') is not None else ''} | "
            f"{fmt(r.get('tiny_step_s') and 1e3 * r['tiny_step_s'], '.2f')} | {fmt(r['peak_rss_mb'], '.0f')} | "
            f"{r['flops_per_sample'] / 1e6:.2f} | {fmt(r['gemm_peak_fraction'] and 100 * r['gemm_peak_fraction'], '.1f')} | "
            f"{ratio_text(ratios.ratio_to_baseline(records, r))} | {fmt(seed and seed / r['epoch_s'], '.2f')} | "
            f"{busy_text(r)} |")
    return "\n".join(lines)


# NNX variant against its Linen / NNX counterpart: the same loop, or the same step another way.
NNX_COMPARISONS = (("nnx-chunked", "gemm-chunked"), ("nnx-split-loop", "gemm-loop"), ("nnx-jit-loop", "nnx-split-loop"),
                   ("nnx-cached-loop", "nnx-split-loop"))


def _ratio(records, a, b, key):
    values = {r["variant"]: r.get(key) for r in records}
    return values[a] / values[b] if values.get(a) and values.get(b) else None


def summary_lines(records) -> list[str]:
    out = []
    models = list(dict.fromkeys(r["model"] for r in records))
    for m in models:
        rs = [r for r in records if r["model"] == m and r["train_samples_per_s"]]
        flax = [r for r in rs if r["framework"] == "flax"]
        eager = next((r for r in rs if r["variant"] == "eager"), None)
        seed = next((r for r in rs if r["variant"] == "torchvision-dataloader"), None)
        torch_best = max((r for r in rs if r["framework"] == "torch"), key=lambda r: r["train_samples_per_s"], default=None)
        if not flax:
            continue
        best = max(flax, key=lambda r: r["train_samples_per_s"])
        fastest_epoch = min(flax, key=lambda r: r["epoch_s"])
        parts = [f"{m}: best Flax `{best['variant']}`"]
        if eager:
            parts.append(f"train throughput ×torch eager {ratio_text(ratios.ratio_to_baseline(records, best))}")
        if torch_best:
            parts.append(f"{best['train_samples_per_s'] / torch_best['train_samples_per_s']:.2f}× best torch (`{torch_best['variant']}`)")
        if seed:
            parts.append(f"epoch {seed['epoch_s'] / fastest_epoch['epoch_s']:.2f}× faster than torchvision-dataloader "
                         f"(`{fastest_epoch['variant']}` {fastest_epoch['epoch_s']:.2f} s vs {seed['epoch_s']:.2f} s)")
        if best.get("gemm_peak_fraction") is not None:
            parts.append(f"{100 * best['gemm_peak_fraction']:.1f} % of the GEMM peak")
        out.append("; ".join(parts))
        nnx_parts = [f"`{a}` {_ratio(rs, a, b, 'train_samples_per_s'):.2f}× `{b}` train throughput"
                     for a, b in NNX_COMPARISONS if _ratio(rs, a, b, "train_samples_per_s")]
        nnx_parts += [f"1-example step `{a}` {_ratio(rs, a, b, 'tiny_step_s'):.2f}× `{b}`"
                      for a, b in NNX_COMPARISONS if _ratio(rs, a, b, "tiny_step_s")]
        if nnx_parts:
            out.append(f"{m} NNX: " + "; ".join(nnx_parts))
    return out


def goals_table(records) -> str:
    """Per model, the figures the performance goals are stated in: every Flax tier's train throughput
    over PyTorch eager, each with its interval over rounds (in bold the trainer's default, what
    `python -m flax_impl.train` runs here), the default's and eager's milliseconds per step (wall /
    the process's CPU), the fastest Flax epoch against the sources' torchvision DataLoader epoch, the
    default's fraction of the GEMM peak and compile seconds; then one line per ratio whose interval is
    too wide to quote, and one per model with rounds taken while the machine was busy."""
    tier_headers = " | ".join(f"{tier} (`{variant}`) ×eager" for tier, variant, _ in ratios.TIERS)
    lines = [f"| model | {tier_headers} | default / eager ms per step (wall / CPU) | "
             "Flax epoch ×faster than torchvision-dataloader | % GEMM peak (default) | first / cached compile s (default) |",
             "|---|" + "---:|" * (len(ratios.TIERS) + 4)]
    wide, busy = [], []
    for m in dict.fromkeys(r["model"] for r in records):
        rs = {r["variant"]: r for r in records if r["model"] == m and r["train_samples_per_s"]}
        flax = [r for r in rs.values() if r["framework"] == "flax"]
        if not flax or ratios.BASELINE not in rs:
            continue
        headline = ratios.headline_tier(records, m)
        cells = []
        for tier, variant in ratios.tier_variants(m, records).items():
            ratio = ratios.ratio_to_baseline(records, rs[variant]) if variant in rs else None
            text = ratio_text(ratio) if variant else "— (no convolution)"
            cells.append(f"**{text}**" if tier == headline and ratio else text)
            if ratio and ratio.wide:
                wide.append(f"{m} {tier}: {ratio.rounds} round(s), {ratio.low:.2f}–{ratio.high:.2f}")
        busy += [f"{m} `{r['variant']}` {busy_rounds(r)} of {r['rounds']}" for r in rs.values() if busy_rounds(r)]
        lines.append(f"| {m} | {' | '.join(cells)} | {_default_cells(rs, ratios.default_variant(records, m), flax)} |")
    lines += ["", "Ratios: median of the per-round ratios [min–max over the interleaved rounds]; ⚠: wider than "
              f"{100 * ratios.WIDE_INTERVAL:.0f} % of the ratio, or one round (benchmarks/ratios.py). CPU: the "
              "training process's CPU seconds per step, which a busy machine inflates less than wall time."]
    if wide:
        lines += ["", "⚠ Too uncertain to quote (rerun with longer trials or more rounds, idle): " + "; ".join(wide) + "."]
    if busy:
        lines += ["", f"⚠ Rounds taken while other processes used more than {100 * IDLE_BUSY_FRACTION:.0f} % of the "
                  "CPU (not an idle machine's figures): " + "; ".join(busy) + "."]
    return "\n".join(lines)


def _default_cells(rs: dict, default_variant: str | None, flax: list) -> str:
    """The goals table's cells after the tiers: ms per step, epoch ratio, % GEMM peak, compile s."""
    default, eager, loader = rs.get(default_variant), rs[ratios.BASELINE], rs.get("torchvision-dataloader")
    epoch = min(r["epoch_s"] for r in flax)
    compile_s = default and f"{default['compile_s']:.1f} / {fmt(default.get('compile_s_second_run'), '.1f')}"
    peak = default and default["gemm_peak_fraction"] and 100 * default["gemm_peak_fraction"]
    return (f"{step_text(default) if default else '—'} vs {step_text(eager)} | "
            f"{fmt(loader and loader['epoch_s'] / epoch, '.2f')} | {fmt(peak, '.1f')} | {compile_s or '—'}")


def write_chart(records, path: Path, meta) -> None:
    """Three panels: the tiers' train throughput over PyTorch eager (bars: min–max over rounds), every
    variant's train samples/s, every variant's epoch seconds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in records))
    variants = list(dict.fromkeys(r["variant"] for r in records))
    fig, axes = plt.subplots(1, 3, figsize=(20, 5.5))
    colors = plt.get_cmap("tab10")
    by = {(r["model"], r["variant"]): r for r in records}

    tier_ax, width = axes[0], 0.8 / len(ratios.TIERS)
    for j, (tier, variant, _) in enumerate(ratios.TIERS):
        xs, ys, lo, hi = [], [], [], []
        for i, m in enumerate(models):
            record = by.get((m, variant)) if ratios.tier_variants(m, records)[tier] else None
            ratio = record and record.get("train_samples_per_s_all") and ratios.ratio_to_baseline(records, record)
            if ratio:
                xs.append(i + (j - (len(ratios.TIERS) - 1) / 2) * width)
                ys.append(ratio.value)
                lo.append(ratio.value - ratio.low)
                hi.append(ratio.high - ratio.value)
        default = {ratios.headline_tier(records, m) for m in models}
        label = f"{tier} ({variant})" + (": the default" if tier in default else "")
        if xs:
            tier_ax.bar(xs, ys, width, yerr=[lo, hi], label=label, color=colors(j), capsize=3)
    tier_ax.axhline(1.0, color="black", linewidth=0.8)
    tier_ax.set_xticks(range(len(models)), models)
    tier_ax.set_xlim(-0.5, len(models) - 0.5)
    tier_ax.set_title("Flax train throughput × PyTorch eager, by tier (bars: min–max over rounds)")
    tier_ax.grid(axis="y", alpha=0.3)
    tier_ax.legend(fontsize=8)

    width = 0.8 / max(1, len(variants))
    for ax, key, title in ((axes[1], "train_samples_per_s", "train samples/s (log; bars: min–max)"),
                           (axes[2], "epoch_s", "end-to-end epoch s (log; lower is better)")):
        for j, p in enumerate(variants):
            xs, ys, lo, hi = [], [], [], []
            for i, m in enumerate(models):
                r = by.get((m, p))
                if r and r.get(key):
                    xs.append(i + (j - (len(variants) - 1) / 2) * width)
                    ys.append(r[key])
                    allv = r.get("train_samples_per_s_all") if key == "train_samples_per_s" else None
                    lo.append(r[key] - min(allv) if allv else 0)
                    hi.append(max(allv) - r[key] if allv else 0)
            tier = ratios.TIER_OF_VARIANT.get(p)
            ax.bar(xs, ys, width, yerr=[lo, hi], label=f"{framework_of(p)} {p}" + (f" ({tier})" if tier else ""),
                   color=colors(j % 10), capsize=2)
        ax.set_xticks(range(len(models)), models)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{meta['machine'].get('cpu_model', '')} ({meta['machine'].get('cpu_count')} cores); "
                 f"peak f32 GEMM {fmt(meta['gemm']['peak_gflops'], '.0f')} GFLOP/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
