#!/usr/bin/env python
"""Cost of distillation with the teacher-logit cache, without it, and of plain student fine-tuning.

Trains the same 3-layer student (same data, seed, epochs and thread count) three ways, repeated with
the order rotated, and reports medians: epoch times, median step time, cache build time, teacher
forward passes. Writes JSON and Markdown.

    python scripts/bench_distill_cache.py --teacher outputs/sst2-minilm-full/teacher \\
        --data ../shared/assets/data/sst2 --max-train-samples 4000 --repeats 3
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.data import DataConfig, TaskData  # noqa: E402
from hfcompress.evaluation.latency import cpu_info, set_threads  # noqa: E402
from hfcompress.evaluation.training_cost import TrainingVariant, median_timings, time_training  # noqa: E402
from hfcompress.modeling import load_model, load_tokenizer  # noqa: E402
from hfcompress.utils.bench import add_data_args, add_output_arg, add_threads_arg, bench_parser, command_line, repo_relative  # noqa: E402
from hfcompress.utils.io import write_results  # noqa: E402

VARIANTS = [
    TrainingVariant("finetune (hard labels)", distill=False),
    TrainingVariant("distill, no cache", distill=True, teacher_cache=False),
    TrainingVariant("distill, cached teacher logits", distill=True, teacher_cache=True),
]


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--teacher", required=True, help="Fine-tuned teacher: directory or Hub id.")
    add_data_args(p, default=None)
    p.add_argument("--train-split", default="train")
    p.add_argument("--max-train-samples", type=int, default=4000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--student-layers", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    add_threads_arg(p, help="Intra-op threads of PyTorch (training and teacher forward passes).")
    p.add_argument("--max-steps", type=int, default=-1, help="Cap steps per run (smoke tests).")
    add_output_arg(p, "benchmarks/results/distill_cache_sst2")
    return p.parse_args(argv)


def markdown(result: dict) -> str:
    rows = result["variants"]
    base = rows[0]["step_ms_p50"]
    lines = [
        f"Distillation cost on {result['settings']['train_examples']} SST-2 sentences (max_length {result['settings']['max_length']}, "
        f"batch {result['settings']['batch_size']}), median of {result['settings']['repeats']} runs, "
        f"{result['hardware']['threads']} threads on {result['hardware']['cpu']}.",
        "",
        "| variant | epoch 1 (s) | last epoch (s) | step p50 (ms) | vs fine-tuning | cache build (s) | teacher forward passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cache = "" if r["cache_build_s"] is None else f"{r['cache_build_s']:.1f}"
        lines.append(
            f"| {r['name']} | {r['epoch_s'][0]:.1f} | {r['epoch_s'][-1]:.1f} | {r['step_ms_p50']:.1f} | "
            f"{r['step_ms_p50'] / base:.2f}x | {cache} | "
            f"{r['teacher_forward_passes']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    set_threads(a.threads)
    data = TaskData(
        DataConfig(path=a.data, name=a.data_config, train_split=a.train_split, max_length=a.max_length,
                   max_train_samples=a.max_train_samples),
        splits=[a.train_split],
    )
    teacher = load_model(a.teacher, data.cfg.task, data.num_labels, data.label_display_names())
    tokenizer = load_tokenizer(a.teacher)
    train = data.tokenize(tokenizer, a.train_split)
    collator = data.collator(tokenizer)
    run = lambda v: time_training(  # noqa: E731
        v, teacher, tokenizer, train, collator, a.student_layers, a.epochs, a.batch_size, max_steps=a.max_steps
    )
    run(VARIANTS[1])  # warm-up: allocator, kernels, tokenizer caches
    runs = {v.name: [] for v in VARIANTS}
    with tqdm(total=a.repeats * len(VARIANTS), desc="training runs") as bar:
        for r in range(a.repeats):
            for i in range(len(VARIANTS)):
                variant = VARIANTS[(i + r) % len(VARIANTS)]  # rotate the order so drift does not favour one variant
                runs[variant.name].append(run(variant))
                bar.update()
    result = {
        "hardware": cpu_info(a.threads),
        "settings": {
            "teacher": repo_relative(a.teacher), "train_examples": len(train), "max_length": a.max_length, "batch_size": a.batch_size,
            "epochs": a.epochs, "repeats": a.repeats, "student_layers": a.student_layers,
        },
        "variants": [median_timings(runs[v.name]) for v in VARIANTS],
        "command": command_line(__file__, argv),
    }
    write_results(a.output, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
