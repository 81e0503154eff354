#!/usr/bin/env python
"""Export the fine-tuned SST-2 teacher and the distilled student to ONNX and compare them with PyTorch.

For each model: PyTorch, then each export backend (Optimum, torch dynamo) as exported and after
graph optimisation (O2, ONNX Runtime's transformer optimizer), every variant checked for parity, evaluated on SST-2 dev and timed at batch 1 and
32 with a fixed thread count on the same sentences. Writes <output>.json, .md and .png.

    flock /tmp/hfc-cpu.lock python scripts/bench_export.py \\
        --teacher outputs/sst2-minilm-full/teacher --student outputs/sst2-minilm-full/student

With --compare-backends (the Optimum stack only: it needs both exporters), each model is exported
by Optimum and by torch dynamo and the two graphs are compared: the same input and output names and
dynamic axes, the largest difference of their logits on the SST-2 dev sentences, and their ONNX
Runtime latency at batch 1 and 32 in alternating rounds. Writes <output>.json and .md.

    flock /tmp/hfc-cpu.lock python scripts/bench_export.py --compare-backends \\
        --teacher outputs/sst2-minilm-full/teacher --output benchmarks/results/export_backends_sst2
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.data import DataConfig, TaskData  # noqa: E402
from hfcompress.evaluation import (  # noqa: E402
    compression_row,
    evaluate_model,
    evaluation_texts,
    measure_latency,
    write_compression_report,
)
from hfcompress.evaluation.latency import cpu_info, latency_batches  # noqa: E402
from hfcompress.evaluation.runtime import OnnxRuntimeModel  # noqa: E402
from hfcompress.export import export_onnx, graph_signature  # noqa: E402
from hfcompress.export.parity import PARITY_FILE  # noqa: E402
from hfcompress.modeling import load_config, load_model, load_tokenizer  # noqa: E402
from hfcompress.tasks import DEFAULT_TASK, task_of  # noqa: E402
from hfcompress.utils.bench import CPU_LOCK, FULL_RUN, add_data_args, add_output_arg, add_threads_arg, bench_parser, command_line, repo_relative  # noqa: E402
from hfcompress.utils.imports import optimum_onnx_missing  # noqa: E402
from hfcompress.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

MAX_LOGIT_DIFF = 1e-4  # issue 15: the two exporters' graphs agree within this on real sentences
MAX_LATENCY_GAP = 0.10  # ... and their ONNX Runtime latency within 10%


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--teacher", default=f"{FULL_RUN}/teacher", help="Fine-tuned teacher: directory or Hub id.")
    p.add_argument("--student", default=f"{FULL_RUN}/student", help="Distilled student: directory or Hub id ('' to skip).")
    add_data_args(p)
    p.add_argument("--split", default="dev", help="Evaluation split.")
    p.add_argument("--max-eval-samples", type=int, default=None, help="Evaluate the first N examples only (default: all).")
    p.add_argument("--backends", nargs="+", default=["optimum", "dynamo"], choices=["optimum", "dynamo"], help="Export backends.")
    p.add_argument("--optimize", default="O2", help="Graph optimisation level (Optimum's O1-O3, applied by ONNX Runtime's transformer optimizer) of the optimised variants ('none' to skip).")
    p.add_argument("--atol", type=float, default=1e-4, help="Parity tolerance.")
    p.add_argument("--latency-samples", type=int, default=256, help="Evaluation sentences the latency batches are made of.")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="Batch sizes to time.")
    add_threads_arg(p)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", default="outputs/bench-export", help="Where the exported models are written.")
    p.add_argument("--compare-backends", action="store_true", help="Compare Optimum's and the dynamo exporter's graphs instead (needs optimum-onnx).")
    p.add_argument("--rounds", type=int, default=5, help="--compare-backends: latency rounds, each timing both graphs in turn.")
    p.add_argument(
        "--add-head", type=int, default=None, metavar="LABELS",
        help="--compare-backends: the models are encoders without a task head (e.g. the shared all-MiniLM-L6-v2): give them a "
        "seeded random classification head of LABELS labels first (the graphs' agreement and speed do not depend on training).",
    )
    add_output_arg(p, "benchmarks/results/export_sst2")
    a = p.parse_args(argv)
    if a.compare_backends and (missing := optimum_onnx_missing()):
        p.error(f"--compare-backends exports with Optimum too, but {missing}")
    return a


def with_head(model_ref: str, labels: int, out: Path) -> Path:
    """``model_ref`` (an encoder) with a seeded random sequence-classification head, saved with its tokenizer to ``out``."""
    import torch

    torch.manual_seed(0)
    load_model(model_ref, DEFAULT_TASK, num_labels=labels).save_pretrained(out)
    load_tokenizer(model_ref).save_pretrained(out)
    return out


def onnx_logits(onnx_path: Path, task, batches: list[dict]):
    """The logits of an exported graph on ``batches``, run through a plain ONNX Runtime session (the same feeding for both exporters)."""
    from transformers import AutoConfig

    model = OnnxRuntimeModel(onnx_path, AutoConfig.from_pretrained(onnx_path.parent), task)
    return [model(**batch).logits for batch in batches]


def compare_backends(a, sentences: list, texts: list, command: str) -> int:
    """Optimum's export against the dynamo export of each model: graph signature, logits on ``sentences``, ONNX Runtime latency on ``texts``."""
    models = [(label, model) for label, model in (("teacher", a.teacher), ("student", a.student)) if model]
    results = []
    for label, model in models:
        if a.add_head:
            model = str(with_head(model, a.add_head, Path(a.work_dir) / f"{label}-with-head"))
        paths = {}
        for backend in ("optimum", "dynamo"):
            print(f"== exporting {label} with {backend}", flush=True)
            paths[backend] = export_onnx(
                model, Path(a.work_dir) / f"{label}-{backend}", backend=backend, atol=a.atol, parity_texts=sentences[-64:], overwrite=True,
                sequence_lengths=[16, 64, 128], batch_sizes=[1, 8, 32],
            )
        signatures = {backend: graph_signature(path) for backend, path in paths.items()}
        tokenizer, task = load_tokenizer(model), task_of(load_config(model))
        batches = latency_batches(tokenizer, sentences, 32)  # every dev sentence (but the last partial batch), padded per batch
        logits = {backend: onnx_logits(path, task, batches) for backend, path in paths.items()}
        diff = max(float((x - y).abs().max()) for x, y in zip(logits["optimum"], logits["dynamo"]))
        rounds = {backend: [] for backend in paths}
        for _ in range(a.rounds):  # alternating, so a slow spell of the machine hits both graphs
            for backend, path in paths.items():
                print(f"== timing {label} {backend}", flush=True)
                rounds[backend].append(measure_latency(
                    path.parent, path.parent, texts, a.batch_sizes, a.threads, backend="onnx", warmup=a.warmup, repeats=a.repeats, onnx_file=path.name,
                ))
        latency = {
            backend: {f"b{size}": statistics.median(r[f"b{size}"]["p50_ms"] for r in runs) for size in a.batch_sizes}
            for backend, runs in rounds.items()
        }
        ratios = {f"b{size}": latency["dynamo"][f"b{size}"] / latency["optimum"][f"b{size}"] for size in a.batch_sizes}
        results.append({
            "model": label, "path": repo_relative(model), "same_signature": signatures["optimum"] == signatures["dynamo"], "signatures": signatures,
            "max_abs_logit_diff": diff, "logit_sentences": sum(len(b["input_ids"]) for b in batches), "latency_p50_ms": latency,
            "latency_rounds": {backend: [{k: r[k]["p50_ms"] for k in latency[backend]} for r in runs] for backend, runs in rounds.items()},
            "dynamo_over_optimum": ratios,
            "within_bounds": diff <= MAX_LOGIT_DIFF and all(abs(r - 1) <= MAX_LATENCY_GAP for r in ratios.values()),
        })
    hardware = cpu_info(a.threads)
    report = {
        "results": results, "hardware": hardware, "bounds": {"max_abs_logit_diff": MAX_LOGIT_DIFF, "latency_gap": MAX_LATENCY_GAP},
        "settings": {"data": repo_relative(a.data), "split": a.split, "latency_sentences": len(texts), "threads": a.threads, "warmup": a.warmup,
                     "repeats": a.repeats, "rounds": a.rounds, "load_average_at_end": os.getloadavg()},
        "command": command,
    }
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), report)
    atomic_write_text(out.with_suffix(".md"), compare_markdown(report, a))
    print(out.with_suffix(".md").read_text())
    return 0


def compare_markdown(report: dict, a) -> str:
    hw, settings = report["hardware"], report["settings"]
    sizes = [f"b{size}" for size in a.batch_sizes]
    lines = [
        f"# Optimum's ONNX exporter against torch.onnx dynamo on SST-2 {a.split} ({hw['threads']} threads)", "",
        f"Bounds (issue 15): logits within {MAX_LOGIT_DIFF:g}, ONNX Runtime p50 latency within {MAX_LATENCY_GAP:.0%}.", "",
        "| model | same input/output names and dynamic axes | max abs logit diff | sentences | "
        + " | ".join(f"p50 {s} ms optimum | p50 {s} ms dynamo | dynamo / optimum {s}" for s in sizes) + " | within bounds |",
        "|---" * (5 + 3 * len(sizes)) + "|",
    ]
    for r in report["results"]:
        timing = " | ".join(
            f"{r['latency_p50_ms']['optimum'][s]:.2f} | {r['latency_p50_ms']['dynamo'][s]:.2f} | {r['dynamo_over_optimum'][s]:.3f}" for s in sizes
        )
        lines.append(
            f"| {r['model']} (`{r['path']}`) | {'yes' if r['same_signature'] else '**no**'} | {r['max_abs_logit_diff']:.2e} | {r['logit_sentences']} | "
            f"{timing} | {'yes' if r['within_bounds'] else '**no**'} |"
        )
    for r in report["results"]:
        lines += ["", f"Graph of the {r['model']} (Optimum's; the dynamo graph's is {'the same' if r['same_signature'] else 'different: see the JSON'}):", ""]
        lines += [f"- {kind}: " + ", ".join(f"`{name}` {dims}" for name, dims in r["signatures"]["optimum"][kind]) for kind in ("inputs", "outputs")]
    lines += [
        "",
        f"Logits: every {a.split} sentence in batches of 32, each padded to its longest sentence, through a plain ONNX Runtime session per graph. "
        f"Latency: p50 per call over {settings['repeats']} passes of {settings['latency_sentences']} {a.split} sentences after {settings['warmup']} "
        f"warm-up calls; the median of {settings['rounds']} rounds, the two graphs timed in turn in each round (every round is in the JSON).",
        "",
        f"Measured on: {hw['cpu']} ({hw['machine']}, {hw['cores']} cores), ISA: {', '.join(hw['isa'])}, {hw['threads']} ONNX Runtime intra-op threads. "
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in settings['load_average_at_end'])} (other jobs share this machine).",
        "", "Reproduce:", "", f"```bash\n{report['command']}\n```", "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    data = TaskData(
        DataConfig(path=a.data, name=a.data_config, eval_split=a.split, max_eval_samples=a.max_eval_samples), splits=[a.split]
    )
    sentences = evaluation_texts(data)
    texts = sentences[: a.latency_samples]
    if a.compare_backends:
        return compare_backends(a, sentences, texts, command_line(__file__, argv, prefix=CPU_LOCK))
    optimize = None if a.optimize.lower() == "none" else a.optimize
    rows, parity_rows = [], []

    def measure(name: str, path, onnx_file=None):
        print(f"== {name}", flush=True)
        result = evaluate_model(path, data, onnx_file=onnx_file)
        latency = measure_latency(
            path, path, texts, a.batch_sizes, a.threads, warmup=a.warmup, repeats=a.repeats, onnx_file=onnx_file
        )
        rows.append(compression_row(name, result, latency, path=repo_relative(path), onnx_file=onnx_file))

    models = [(label, model) for label, model in (("teacher", a.teacher), ("student", a.student)) if model]
    for label, model in models:
        measure(f"{label} PyTorch", model)
        for backend in a.backends:
            out = Path(a.work_dir) / f"{label}-{backend}"
            print(f"== exporting {label} with {backend}", flush=True)
            export_onnx(
                model, out, backend=backend, optimize=optimize, atol=a.atol, parity_texts=sentences[-64:], overwrite=True,
                sequence_lengths=[16, 64, 128], batch_sizes=[1, 8, 32],
            )
            parity = json.loads((out / PARITY_FILE).read_text())
            for file_name, check in parity["files"].items():
                variant = f"{label} ONNX {backend}" + (f" {optimize}" if file_name != "model.onnx" else "")
                parity_rows.append({"variant": variant, **check})
                measure(variant, out, onnx_file=file_name)

    command = command_line(__file__, argv, prefix=CPU_LOCK)
    parity_md = [
        "## Parity (PyTorch vs ONNX Runtime, max abs diff of the logits)", "",
        f"Inputs: the last 64 sentences of SST-2 {a.split}, batch sizes 1/8/32 x lengths 16/64/128 "
        "(one row of running text filling the length, the others single padded sentences).", "",
        "| variant | max abs diff | atol | worst at (batch, length) |", "|---|---|---|---|",
    ]
    for p in parity_rows:
        worst = max(p["checks"], key=lambda c: c["max_abs_diff"])
        parity_md.append(f"| {p['variant']} | {p['max_abs_diff']:.2e} | {p['tolerance']:g} | ({worst['batch_size']}, {worst['sequence_length']}) |")
    settings = {
        "teacher": repo_relative(a.teacher), "student": repo_relative(a.student), "data": repo_relative(a.data), "split": a.split, "eval_examples": len(sentences),
        "latency_sentences": len(texts), "threads": a.threads, "warmup": a.warmup, "repeats": a.repeats,
        "load_average_at_end": os.getloadavg(),
    }
    notes = "\n".join(parity_md) + (
        f"\n\nLoad average at the end of the run: {', '.join(f'{x:.1f}' for x in settings['load_average_at_end'])} "
        "(other jobs share this machine; the variants of one model were timed back to back on identical batches).\n\n"
        f"Reproduce:\n\n```bash\n{command}\n```\n"
    )
    out = Path(a.output)
    write_compression_report(
        rows, out.parent, title=f"ONNX export of the SST-2 MiniLM {' and '.join(label for label, _ in models)} ({a.threads} threads)", file_stem=out.name,
        notes=notes, metadata={"settings": settings, "parity": parity_rows, "command": command},
    )
    print((out.parent / f"{out.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
