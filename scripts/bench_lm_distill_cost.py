#!/usr/bin/env python
"""Training cost of distilling a causal LM into a layer-dropped student: live teacher vs top-k logit cache.

Packs SST-2 training sentences (end-of-sequence between them) into rows of ``--seq-len`` tokens,
cuts a student of ``--student-layers`` layers from the teacher (first, last and evenly spread), and
trains it ``--steps`` steps at ``--batch-size`` rows two ways, each in its own process so that peak
RSS is its own: with the live teacher, and from a top-k cache (built in a process of its own, timed
separately). The live run goes on while the cache is built and then used. Reports wall and
CPU seconds per step (CPU time, of all the process's threads, is what a busy shared machine distorts
least), peak RSS, cache build time and cache bytes per token.

    nice python scripts/bench_lm_distill_cost.py --teacher ~/.cache/hfcompress/smollm2/teacher \\
        --data ../shared/assets/data/sst2/train.tsv --output benchmarks/results/lm_distill_cost
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.utils.bench import add_output_arg, add_threads_arg, bench_parser, command_line  # noqa: E402
from hfcompress.tasks.text_generation import TEXT_GENERATION  # noqa: E402
from hfcompress.utils.io import write_results  # noqa: E402


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--teacher", required=True, help="Causal-LM teacher checkpoint directory.")
    p.add_argument("--data", required=True, help="SST-2 train.tsv (sentence<TAB>label).")
    p.add_argument("--student-layers", type=int, default=15, help="Layers the student keeps.")
    p.add_argument("--steps", type=int, default=5, help="Optimizer steps per variant.")
    p.add_argument("--batch-size", type=int, default=4, help="Rows per step.")
    p.add_argument("--seq-len", type=int, default=256, help="Tokens per row.")
    p.add_argument("--top-k", type=int, default=64, help="k of the top-k cache.")
    p.add_argument("--temperature", type=float, default=2.0, help="KD temperature (the cache's log-sum-exp is at it).")
    p.add_argument("--variant", choices=["live", "build-cache", "cached"], default=None, help="Internal: run one variant in this process.")
    p.add_argument("--cache-dir", default=None, help="Internal: the cache directory shared by the variants.")
    add_threads_arg(p)
    add_output_arg(p, default="benchmarks/results/lm_distill_cost")
    return p.parse_args(argv)


def packed_rows(tokenizer, path: str, rows: int, seq_len: int):
    """``rows`` rows of exactly ``seq_len`` tokens: sentences joined by end-of-sequence, cut into blocks."""
    import datasets

    ids: list[int] = []
    with open(path, encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            ids += tokenizer(line.split("\t")[0].strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            if len(ids) >= rows * seq_len:
                break
    blocks = [ids[i * seq_len : (i + 1) * seq_len] for i in range(rows)]
    return datasets.Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * seq_len for _ in blocks]})


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def run_variant(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling

    from hfcompress.distillation import DistillationTrainer, DistillationTrainingArguments, TeacherLogitCache, build_student_from_teacher
    from hfcompress.evaluation.training_cost import StepTimer

    class CpuStepTimer(StepTimer):
        """Also the process CPU seconds of every step."""

        def __init__(self):
            super().__init__()
            self.step_cpu_seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            super().on_step_begin(args, state, control, **kwargs)
            self._cpu_start = _cpu_seconds()

        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            self.step_cpu_seconds.append(_cpu_seconds() - self._cpu_start)

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher)
    data = packed_rows(tokenizer, args.data, args.steps * args.batch_size, args.seq_len)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    result = {"variant": args.variant}
    if args.variant == "build-cache":
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        cache = TeacherLogitCache.load_or_build(
            args.cache_dir, teacher, data, collator, TEXT_GENERATION, batch_size=args.batch_size, top_k=args.top_k,
            temperature=args.temperature,
        )
        size = sum(p.stat().st_size for p in cache.directory.iterdir())
        rows = int(cache.offsets[-1])
        result.update(build_s=round(time.perf_counter() - start, 2), build_cpu_s=round(_cpu_seconds() - cpu_start, 2), cache_bytes=size, tokens=rows,
                      bytes_per_token=round(size / rows, 1), full_logits_bytes_per_token=4 * teacher.config.vocab_size)
    else:
        timer = CpuStepTimer()
        training = DistillationTrainingArguments(
            output_dir=f"{args.cache_dir}/out-{args.variant}", max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            learning_rate=1e-4, seed=0, save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True,
            use_cpu=True, temperature=args.temperature, alpha=0.0,
            teacher_cache_dir=args.cache_dir if args.variant == "cached" else None,
            teacher_cache_top_k=args.top_k if args.variant == "cached" else None,
        )
        trainer = DistillationTrainer(
            model=build_student_from_teacher(teacher, args.student_layers), teacher_model=teacher, args=training,
            train_dataset=data, data_collator=collator, processing_class=tokenizer, callbacks=[timer],
        )
        train = trainer.train()
        steps = timer.step_seconds
        result.update(
            step_s=[round(s, 2) for s in steps], step_s_median_after_first=round(statistics.median(steps[1:] or steps), 2),
            step_cpu_s=[round(s, 2) for s in timer.step_cpu_seconds],
            step_cpu_s_median_after_first=round(statistics.median(timer.step_cpu_seconds[1:] or timer.step_cpu_seconds), 2),
            training_loss=round(train.training_loss, 4), teacher_forward_passes=trainer.teacher_forward_passes,
        )
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="hfc-lm-cost-") as cache_dir:

        def start(variant):
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--variant", variant, "--cache-dir", cache_dir]
            return variant, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

        def finish(variant, proc):
            out, _ = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
            results[variant] = json.loads(out.strip().splitlines()[-1])
            print(variant, results[variant], flush=True)

        live = start("live")
        finish(*start("build-cache"))
        cached = start("cached")  # reads the cache the build wrote, while the live run goes on
        finish(*live)
        finish(*cached)
    result = {
        "command": command_line(__file__, argv),
        "setup": {k: getattr(args, k) for k in ("teacher", "student_layers", "steps", "batch_size", "seq_len", "top_k", "temperature", "threads")},
        **results,
    }
    live, cached, build = results["live"], results["cached"], results["build-cache"]
    markdown = "\n".join([
        f"# Distillation cost: {args.student_layers}-layer student of {args.teacher}, {args.steps} steps of {args.batch_size} x {args.seq_len} tokens",
        "",
        "| variant | wall s/step | CPU s/step | peak RSS (MB) |",
        "|---|---|---|---|",
        *(f"| {name} | {r['step_s_median_after_first']} | {r['step_cpu_s_median_after_first']} | {r['peak_rss_mb']} |"
          for name, r in (("live teacher", live), (f"top-{args.top_k} cache", cached))),
        "",
        "Medians over the steps after the first; CPU seconds are the process's, over all its threads.",
        "",
        f"Cache build: {build['build_s']} s wall, {build['build_cpu_s']} s CPU for {build['tokens']} tokens, {build['bytes_per_token']} bytes per token "
        f"(full logits: {build['full_logits_bytes_per_token']}), peak RSS {build['peak_rss_mb']} MB.",
        "",
        f"Command: `{result['command']}`",
    ])
    write_results(args.output, result, markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
