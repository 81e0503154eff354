#!/usr/bin/env python
"""Export the fine-tuned SST-2 teacher and the distilled student to ONNX and compare them with PyTorch.

For each model: PyTorch, then each export backend (Optimum, torch dynamo) as exported and after
ORTOptimizer (O2), every variant checked for parity, evaluated on SST-2 dev and timed at batch 1 and
32 with a fixed thread count on the same sentences. Writes <output>.json, .md and .png.

    flock /tmp/hfc-cpu.lock python scripts/bench_export.py \\
        --teacher outputs/sst2-minilm-full/teacher --student outputs/sst2-minilm-full/student
"""

from __future__ import annotations

import json
import os
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
from hfcompress.export import export_onnx  # noqa: E402
from hfcompress.export.parity import PARITY_FILE  # noqa: E402
from hfcompress.utils.bench import CPU_LOCK, FULL_RUN, add_data_args, add_output_arg, add_threads_arg, bench_parser, command_line, repo_relative  # noqa: E402


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--teacher", default=f"{FULL_RUN}/teacher", help="Fine-tuned teacher: directory or Hub id.")
    p.add_argument("--student", default=f"{FULL_RUN}/student", help="Distilled student: directory or Hub id ('' to skip).")
    add_data_args(p)
    p.add_argument("--split", default="dev", help="Evaluation split.")
    p.add_argument("--max-eval-samples", type=int, default=None, help="Evaluate the first N examples only (default: all).")
    p.add_argument("--backends", nargs="+", default=["optimum", "dynamo"], choices=["optimum", "dynamo"], help="Export backends.")
    p.add_argument("--optimize", default="O2", help="ORTOptimizer level for the optimised variants ('none' to skip).")
    p.add_argument("--atol", type=float, default=1e-4, help="Parity tolerance.")
    p.add_argument("--latency-samples", type=int, default=256, help="Evaluation sentences the latency batches are made of.")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="Batch sizes to time.")
    add_threads_arg(p)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", default="outputs/bench-export", help="Where the exported models are written.")
    add_output_arg(p, "benchmarks/results/export_sst2")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    data = TaskData(
        DataConfig(path=a.data, name=a.data_config, eval_split=a.split, max_eval_samples=a.max_eval_samples), splits=[a.split]
    )
    sentences = evaluation_texts(data)
    texts = sentences[: a.latency_samples]
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
