"""The compression report: every variant of a run side by side, with ratios to the first (baseline) row.

Writes ``compression_report.json`` (the rows and the hardware), ``compression_report.md`` (a table)
and ``compression_report.png`` (accuracy against latency and against size).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

from ..artifacts import COMPRESSION_REPORT_NAME
from ..errors import ConfigError
from ..utils.io import atomic_write_json, atomic_write_text
from .paired import describe_gate

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("name", "accuracy", "size_mb", "latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_b32")
# metric used as "accuracy" when a task has no accuracy (text generation reports perplexity)
_QUALITY_KEYS = ("accuracy", "f1", "matthews_correlation", "perplexity")
# what a row takes from :func:`~hfcompress.evaluation.generation.measure_variant` (text generation)
GENERATION_KEYS = ("perplexity", "perplexity_protocol", "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_rss_mb")


def compression_row(name: str, evaluation: Optional[dict] = None, latency: Optional[dict] = None, generation: Optional[dict] = None, **extra) -> dict:
    """One report row from :func:`evaluate_model`, :func:`measure_latency` and generation results (any may be missing).

    With ``generation``, its strided perplexity is the row's quality and the evaluation's own
    perplexity (over the split's rows, one row per sequence) is kept as ``split_perplexity``.
    """
    row: dict = {"name": name}
    evaluation = evaluation or {}
    quality = next((k for k in _QUALITY_KEYS if k in evaluation), None)
    row["accuracy"] = evaluation.get(quality) if quality else None
    row["quality_metric"] = quality
    for key, value in evaluation.items():
        if key not in row and key not in ("path",):
            row[key] = value
    row.setdefault("size_mb", None)
    for key, timing in (latency or {}).items():
        if key.startswith("b") and key[1:].isdigit():
            row[f"latency_ms_p50_{key}"] = timing["p50_ms"]
            row[f"latency_ms_p95_{key}"] = timing["p95_ms"]
            row[f"throughput_{key}"] = timing["throughput"]
    for key in REQUIRED_KEYS:
        row.setdefault(key, None)
    if latency:
        row["latency_backend"] = latency.get("backend")
        row["hardware"] = latency.get("hardware")
    if generation:
        if "perplexity" in row:
            row["split_perplexity"] = row.pop("perplexity")
        row.update({key: generation.get(key) for key in GENERATION_KEYS})
        row["accuracy"], row["quality_metric"] = generation["perplexity"], "perplexity"
        row["hardware"] = row.get("hardware") or generation.get("hardware")
    row.update(extra)
    return row


def _ratio(numerator, denominator) -> Optional[float]:
    return round(numerator / denominator, 3) if numerator is not None and denominator else None


def add_ratios(rows: list[dict]) -> list[dict]:
    """Copies of ``rows`` with ratios to the first row: how many times smaller, faster, higher throughput; accuracy change."""
    base = rows[0]
    out = []
    for row in rows:
        row = dict(row)
        row["size_ratio"] = _ratio(base.get("size_mb"), row.get("size_mb"))
        row["zipped_size_ratio"] = _ratio(base.get("zipped_size_mb"), row.get("zipped_size_mb"))
        row["parameter_ratio"] = _ratio(base.get("num_parameters"), row.get("num_parameters"))
        row["speedup_b1"] = _ratio(base.get("latency_ms_p50_b1"), row.get("latency_ms_p50_b1"))
        row["throughput_ratio_b32"] = _ratio(row.get("throughput_b32"), base.get("throughput_b32"))
        row["decode_speedup"] = _ratio(row.get("decode_tokens_per_s"), base.get("decode_tokens_per_s"))
        acc, base_acc = row.get("accuracy"), base.get("accuracy")
        row["accuracy_delta"] = round(acc - base_acc, 6) if acc is not None and base_acc is not None else None
        out.append(row)
    return out


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value:,}{suffix}" if isinstance(value, int) else f"{value}{suffix}"


def _hardware_line(hw: dict) -> str:
    return f"{hw.get('cpu')} ({hw.get('machine')}, {hw.get('cores')} cores), ISA: {', '.join(hw.get('isa') or []) or 'none'}, {hw.get('threads')} threads"


def has_generation(rows: list[dict]) -> bool:
    return any(r.get("decode_tokens_per_s") is not None for r in rows)


def _generation_table(rows: list[dict]) -> list[str]:
    header = ["variant", "perplexity", "size MB", "prefill tok/s", "decode tok/s", "× decode", "TTFT ms", "peak RSS MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["name"], _fmt(r.get("perplexity"), 3), _fmt(r.get("size_mb"), 1), _fmt(r.get("prefill_tokens_per_s"), 1),
            _fmt(r.get("decode_tokens_per_s"), 1), _fmt(r.get("decode_speedup"), 2, "×"), _fmt(r.get("ttft_ms"), 1), _fmt(r.get("peak_rss_mb"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    protocols = list(dict.fromkeys(r["perplexity_protocol"] for r in rows if r.get("perplexity_protocol")))
    lines += ["", "Perplexity: " + "; ".join(protocols) + "." if protocols else "Perplexity: not measured."]
    lines.append(
        "Batch 1, greedy. TTFT: a one-token generate; prefill tok/s: prompt tokens over TTFT; decode tok/s: the tokens after "
        "the first over the rest of the generation; medians after warm-up. Peak RSS: each variant in its own process."
    )
    return lines


def render_markdown(report: dict) -> str:
    rows, metric = report["rows"], report["quality_metric"] or "accuracy"
    lines = [f"# {report['title']}", ""]
    if has_generation(rows) and not any(r.get("latency_ms_p50_b1") is not None for r in rows):
        lines += [f"Baseline for the ratios: **{report['baseline']}**.", "", *_generation_table(rows), ""]
        hardware = report["hardware"]
        lines.append("Measured on: " + "; ".join(_hardware_line(hw) for hw in hardware) + "." if hardware else "No speed was measured.")
        return "\n".join(lines) + "\n"
    lines.append(
        f"Baseline for the ratios: **{report['baseline']}**. Latency: median (p50) and p95 per call of "
        "timed runs after warm-up, batch 1 and 32; throughput in examples/s."
    )
    lines.append("")
    header = [
        "variant", metric, f"Δ {metric}", "size MB", "× smaller", "zipped MB", "× smaller (zip)", "parameters",
        "sparsity", "p50 b1 ms", "p95 b1 ms", "speed-up b1", "throughput b32", "× b32",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["name"], _fmt(r.get("accuracy"), 4), _fmt(r.get("accuracy_delta"), 4), _fmt(r.get("size_mb")),
            _fmt(r.get("size_ratio"), 2, "×"), _fmt(r.get("zipped_size_mb")), _fmt(r.get("zipped_size_ratio"), 2, "×"),
            _fmt(r.get("num_parameters")), _fmt(r.get("sparsity"), 3), _fmt(r.get("latency_ms_p50_b1")),
            _fmt(r.get("latency_ms_p95_b1")), _fmt(r.get("speedup_b1"), 2, "×"), _fmt(r.get("throughput_b32"), 1),
            _fmt(r.get("throughput_ratio_b32"), 2, "×"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    gated = [r for r in rows if r.get("gate")]
    if gated:
        lines.append(f"Accuracy gate against **{report['baseline']}** (paired bootstrap interval of the difference, McNemar's exact test):")
        lines += [""] + [f"- {describe_gate(r['name'], r['gate'])}" for r in gated] + [""]
    if has_generation(rows):
        lines += ["## Text generation", "", *_generation_table(rows), ""]
    hardware = report["hardware"]
    if hardware:
        lines.append("Measured on: " + "; ".join(_hardware_line(hw) for hw in hardware) + ".")
    else:
        lines.append("No latency was measured.")
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> bool:
    """Accuracy against p50 latency (batch 1) and against size; False when matplotlib is not installed."""
    plt = pyplot_or_warn(path)
    if plt is None:
        return False
    metric = report["quality_metric"] or "accuracy"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    markers = "osD^v<>pXP*h"
    speed = ("decode_tokens_per_s", "decode tokens/s, batch 1") if has_generation(report["rows"]) else ("latency_ms_p50_b1", "p50 latency, batch 1 (ms)")
    for ax, key, label in ((axes[0], *speed), (axes[1], "size_mb", "size on disk (MB)")):
        # colour and marker per variant, named in one legend: variants often share an accuracy, so labels would overlap
        points = [(i, r[key], r["accuracy"]) for i, r in enumerate(report["rows"]) if r.get(key) is not None and r.get("accuracy") is not None]
        for i, x, y in points:
            ax.scatter(x, y, s=50, color=f"C{i % 10}", marker=markers[i % len(markers)], label=report["rows"][i]["name"], alpha=0.85)
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        values = [y for _, _, y in points]
        if metric == "perplexity" and values and max(values) > 10 * min(values):  # one broken variant would flatten the others
            ax.set_yscale("log")
            ax.set_ylabel(f"{metric} (log scale)")
        ax.grid(alpha=0.3)
        if not points:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    handles = {h.get_label(): h for ax in axes for h in ax.collections}
    # long variant names get fewer legend columns, so that no name runs off the figure
    ncol = max(1, min(len(handles), 4, 110 // max((len(name) for name in handles), default=1)))
    legend_rows = -(-len(handles) // ncol) if handles else 0
    fig.set_size_inches(11, 4.8 + 0.22 * legend_rows)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    hardware = report["hardware"]
    fig.suptitle(report["title"] + (f"\n{_hardware_line(hardware[0])}" if len(hardware) == 1 else ""), fontsize=10)
    fig.tight_layout(rect=(0, (0.22 * legend_rows + 0.2) / (4.8 + 0.22 * legend_rows), 1, 1))
    save_figure(fig, path, dpi=120)
    return True


def pyplot_or_warn(path: Path):
    """matplotlib.pyplot on the Agg backend, or None (with a warning naming the chart not drawn) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed, so %s is not drawn: pip install 'hfcompress[plots]'", path.name)
        return None
    return plt


def save_figure(fig, path: Path, dpi: int) -> None:
    """Save a PNG atomically (a reader never sees half a chart) and close the figure."""
    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_compression_report(
    rows: list[dict],
    out_dir,
    title: str = "Compression report",
    *,
    file_stem: str = COMPRESSION_REPORT_NAME,
    notes: str = "",
    metadata: Optional[dict] = None,
) -> dict:
    """Write ``<file_stem>.{json,md,png}`` (default compression_report) to ``out_dir`` and return the report.

    Each row needs at least ``name`` and may carry ``accuracy``, ``size_mb``, ``latency_ms_p50_b1``,
    ``latency_ms_p95_b1``, ``throughput_b32`` and ``hardware`` (as :func:`compression_row` builds
    them); the first row is the baseline of the ratios. ``notes`` (Markdown) is appended to the
    table, ``metadata`` is stored in the JSON (e.g. settings, the command that reproduces it).
    """
    if not rows:
        raise ConfigError("write_compression_report needs at least one row: evaluate the baseline model first")
    missing = [i for i, r in enumerate(rows) if not r.get("name")]
    if missing:
        raise ConfigError(f"report rows {missing} have no 'name': give every variant a name (e.g. teacher, student, int8)")
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"report rows have repeated names {names}: give every variant a distinct name")
    rows = add_ratios([{**{k: None for k in REQUIRED_KEYS}, **r} for r in rows])
    hardware = []
    for r in rows:
        if r.get("hardware") and r["hardware"] not in hardware:
            hardware.append(r["hardware"])
    metrics = {r.get("quality_metric") for r in rows if r.get("quality_metric")}
    report = {
        "title": title,
        "baseline": rows[0]["name"],
        "quality_metric": metrics.pop() if len(metrics) == 1 else None,
        "hardware": hardware,
        "rows": rows,
        **(metadata or {}),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / f"{file_stem}.json", report)
    atomic_write_text(out_dir / f"{file_stem}.md", render_markdown(report) + (f"\n{notes.strip()}\n" if notes else ""))
    report["chart"] = str(out_dir / f"{file_stem}.png") if _plot(report, out_dir / f"{file_stem}.png") else None
    return report
