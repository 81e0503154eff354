#!/usr/bin/env python
"""Size reductions on SST-2: vocabulary trimming and low-rank factorisation, side by side.

Trims the vocabulary of the fine-tuned teacher and of the distilled student to the tokens of the
training split, and factorises the student by truncated SVD at several retained-energy levels, each
with and without a short recovery distillation from the teacher on a seeded training subset. Every
variant gets dev accuracy, parameter count, size on disk and ONNX Runtime latency (p50/p95 at batch 1
and 32, fixed thread count, the same dev sentences for all). Writes JSON, Markdown and a chart.

    flock /tmp/hfc-cpu.lock python scripts/bench_size_reduction.py
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.data import DataConfig, TaskData  # noqa: E402
from hfcompress.distillation import DistillationTrainer, DistillationTrainingArguments  # noqa: E402
from hfcompress.errors import ConfigError  # noqa: E402
from hfcompress.evaluation import compression_row, cpu_info, evaluate_model, measure_latency, write_compression_report  # noqa: E402
from hfcompress.export import export_onnx  # noqa: E402
from hfcompress.lowrank import LowRankConfig, factorize_checkpoint  # noqa: E402
from hfcompress.modeling import load_model, load_tokenizer  # noqa: E402
from hfcompress.recipes.context import check_model_ref  # noqa: E402
from hfcompress.utils.bench import FULL_RUN, add_data_args, add_output_arg, add_threads_arg, bench_parser, command_line, repo_relative  # noqa: E402
from hfcompress.utils.io import atomic_write_json, atomic_write_text, check_output_dir  # noqa: E402
from hfcompress.utils.transformers_compat import training_kwargs  # noqa: E402
from hfcompress.vocab import dev_token_changes, trim_checkpoint  # noqa: E402


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--teacher", default=f"{FULL_RUN}/teacher", help="Fine-tuned teacher: directory or Hub id.")
    p.add_argument("--student", default=f"{FULL_RUN}/student", help="Distilled student: directory or Hub id.")
    add_data_args(p)
    p.add_argument("--train-split", default="train", help="Split whose tokens the trimmed vocabulary keeps; recovery data.")
    p.add_argument("--eval-split", default="dev")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-eval-samples", type=int, default=None, help="Evaluate on the first N dev examples (smoke tests).")
    p.add_argument("--energies", type=float, nargs="+", default=[0.9, 0.8, 0.7], help="Retained-energy levels of the factorisation.")
    p.add_argument("--min-rank", type=int, default=8)
    p.add_argument("--recovery-samples", type=int, default=8000, help="Seeded training subset for the recovery distillation.")
    p.add_argument("--recovery-epochs", type=float, default=1.0)
    p.add_argument("--recovery-lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=-1, help="Cap recovery steps (smoke tests).")
    p.add_argument("--teacher-cache-dir", default="outputs/cache/teacher-logits", help="Teacher-logit cache shared across runs.")
    add_threads_arg(p)
    p.add_argument("--latency-sentences", type=int, default=256, help="Dev sentences timed per variant (batches of 1 and 32).")
    p.add_argument("--latency-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work-dir", default="outputs/bench-size-reduction", help="Where the trimmed/factorised models and ONNX files go.")
    add_output_arg(p, "benchmarks/results/size_reduction_sst2")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing --work-dir.")
    return p.parse_args(argv)


class Bench:
    """Measures each variant the same way: PyTorch dev accuracy and size, ONNX Runtime latency."""

    def __init__(self, a, data: TaskData):
        self.a, self.data, self.work = a, data, Path(a.work_dir)
        self.latency_texts = list(data.raw[a.eval_split][data.cfg.text_column][: a.latency_sentences])

    def measure(self, name: str, model_dir: Path | str, **extra) -> dict:
        evaluation = evaluate_model(str(model_dir), self.data, backend="pytorch")
        onnx_dir = self.work / "onnx" / re.sub(r"[^\w.-]+", "-", name)
        export_onnx(model_dir, onnx_dir)
        latency = measure_latency(
            onnx_dir, str(model_dir), self.latency_texts, batch_sizes=(1, 32), threads=self.a.threads, backend="onnx",
            repeats=self.a.latency_repeats, max_length=self.a.max_length,
        )
        onnx_mb = round(sum(p.stat().st_size for p in onnx_dir.glob("*.onnx*")) / 1e6, 2)
        return compression_row(name, evaluation, latency, onnx_size_mb=onnx_mb, **extra)


def trim_rows(bench: Bench, name: str, model: str) -> tuple[list[dict], dict]:
    a, data = bench.a, bench.data
    before = bench.measure(name, model)
    out = bench.work / f"{name}-vocab-trimmed"
    report = trim_checkpoint(model, out, data, overwrite=True)
    after = bench.measure(f"{name} vocab-trimmed", out)
    dev_texts = data.raw[a.eval_split][data.cfg.text_column]
    changes = dev_token_changes(load_tokenizer(model), load_tokenizer(str(out)), dev_texts)
    detail = {
        "model": name, "source": repo_relative(model), "vocab_size_before": report["vocab_size_before"], "vocab_size_after": report["vocab_size_after"],
        "kept_from_corpus": report["kept_from_corpus"], "kept_otherwise": report["kept_otherwise"],
        "num_parameters_before": before["num_parameters"], "num_parameters_after": after["num_parameters"],
        "size_mb_before": before["size_mb"], "size_mb_after": after["size_mb"],
        "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"], "dev": changes,
    }
    return [before, after], detail


def recover(bench: Bench, teacher, tokenizer, train, factorized: Path, out: Path) -> float:
    """Short distillation of a factorised student from the teacher; returns its wall time in seconds."""
    a = bench.a
    args = DistillationTrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=a.recovery_epochs, max_steps=a.max_steps,
        learning_rate=a.recovery_lr, per_device_train_batch_size=a.batch_size, alpha=0.5, temperature=2.0,
        teacher_cache_dir=a.teacher_cache_dir, save_strategy="no", report_to="none", logging_steps=50, seed=a.seed, use_cpu=True,
        **training_kwargs({"warmup_ratio": 0.06}),
    )
    student = load_model(str(factorized), bench.data.cfg.task)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train, data_collator=bench.data.collator(tokenizer),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out))
    return seconds


def lowrank_variants(bench: Bench):
    """Yield (rows, detail) per energy level: the factorised student without and with recovery distillation."""
    a = bench.a
    subset = TaskData(
        DataConfig(path=a.data, name=a.data_config, train_split=a.train_split, eval_split=a.eval_split, max_length=a.max_length,
                   max_train_samples=a.recovery_samples),
        splits=[a.train_split], seed=a.seed,
    )
    tokenizer = load_tokenizer(a.student)
    train = subset.tokenize(tokenizer, a.train_split)
    teacher = load_model(a.teacher, bench.data.cfg.task)
    for energy in tqdm(a.energies, desc="energy levels"):
        name = f"student lowrank e={energy}"
        factorized = bench.work / f"student-lowrank-e{energy}"
        report = factorize_checkpoint(a.student, factorized, LowRankConfig(energy=energy, min_rank=a.min_rank), overwrite=True)
        ranks = list(report["ranks"].values())
        plain = bench.measure(name, factorized, recovery="none")
        recovered = bench.work / f"student-lowrank-e{energy}-recovered"
        seconds = recover(bench, teacher, tokenizer, train, factorized, recovered)
        tuned = bench.measure(f"{name} + recovery", recovered, recovery=f"{len(train)} sentences, {a.recovery_epochs:g} epoch(s)")
        yield [plain, tuned], {
            "energy": energy, "factorized_layers": len(ranks), "dense_layers": len(report["layers"]) - len(ranks),
            "rank_min": min(ranks, default=None), "rank_median": statistics.median(ranks) if ranks else None,
            "rank_max": max(ranks, default=None), "num_parameters": report["num_parameters_after"],
            "accuracy_no_recovery": plain["accuracy"], "accuracy_recovered": tuned["accuracy"],
            "recovery_seconds": round(seconds, 1), "recovery_examples": len(train), "ranks": report["ranks"],
        }


def _mb(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def markdown(result: dict, report_md: str) -> str:
    s, hw = result["settings"], result["hardware"]
    lines = [
        "# Size reductions on SST-2: vocabulary trimming and low-rank factorisation", "",
        *(["**Partial results: the run was still going when this was written.**", ""] if result["status"] != "complete" else []),
        f"Teacher `{s['teacher']}`, student `{s['student']}`; accuracy on {s['eval_examples']} {s['eval_split']} sentences "
        f"(PyTorch); latency through ONNX Runtime (Optimum export, fp32) on the first {s['latency_sentences']} dev sentences, "
        f"p50/p95 of {s['latency_repeats']} timed passes after warm-up, {hw['threads']} threads on {hw['cpu']} "
        f"(ISA: {', '.join(hw['isa'])}).", "",
        "Reproduce: `" + result["command"] + "`", "",
        "## All variants", "", report_md.split("\n", 2)[2].strip(), "",
        "![accuracy vs latency and size](size_reduction_sst2/compression_report.png)", "",
        "## Vocabulary trimming", "",
        f"Kept: every token of the {s['train_split']} split, the special tokens and every single-character token "
        "(and `##x` continuation), so every word still tokenises. Dev words that never occur in the training split are "
        "spelled with shorter sub-words or characters instead of their own token, which is what the 'dev sentences tokenised "
        "differently' column counts; predictions can change only for those sentences.", "",
        "| model | vocab | parameters | size MB | accuracy | dev tokens → [UNK] (before → after) | dev sentences tokenised differently | tokens per sentence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in result["vocab_trimming"]:
        dev = d["dev"]
        lines.append(
            f"| {d['model']} | {d['vocab_size_before']:,} → {d['vocab_size_after']:,} | {d['num_parameters_before']:,} → "
            f"{d['num_parameters_after']:,} | {_mb(d['size_mb_before'])} → {_mb(d['size_mb_after'])} | "
            f"{d['accuracy_before']:.4f} → {d['accuracy_after']:.4f} | {dev['unk_share_before']:.4%} → {dev['unk_share_after']:.4%} | "
            f"{dev['sentences_tokenized_differently']:.1%} | {dev['tokens_per_sentence_before']:.2f} → {dev['tokens_per_sentence_after']:.2f} |"
        )
    lines += [
        "", "## Low-rank factorisation of the student", "",
        f"Truncated SVD of every encoder Linear layer (task head and pooler excluded), rank = smallest keeping the given share "
        f"of the squared singular values, at least {s['min_rank']}, rounded up to a multiple of 8; a layer whose factors would "
        f"not be smaller stays dense. Recovery: distillation from the teacher (alpha 0.5, T 2, lr {s['recovery_lr']}) on a "
        f"seeded subset of {s['recovery_samples']} training sentences for {s['recovery_epochs']:g} epoch(s).", "",
        "| energy | layers factorised / dense | rank min / median / max | parameters | accuracy, no recovery | accuracy, recovered | recovery time |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in result["low_rank"]:
        lines.append(
            f"| {d['energy']} | {d['factorized_layers']} / {d['dense_layers']} | {d['rank_min']} / {d['rank_median']} / {d['rank_max']} | "
            f"{d['num_parameters']:,} | {d['accuracy_no_recovery']:.4f} | {d['accuracy_recovered']:.4f} | {d['recovery_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    for flag, ref in (("--teacher", a.teacher), ("--student", a.student)):
        check_model_ref(ref, [], flag)
    if not a.energies or any(not 0 < e <= 1 for e in a.energies):
        raise ConfigError(f"--energies {a.energies} must be shares of the spectral energy in (0, 1], e.g. 0.9 0.8")
    check_output_dir(a.work_dir, a.overwrite)
    data = TaskData(
        DataConfig(path=a.data, name=a.data_config, train_split=a.train_split, eval_split=a.eval_split, max_length=a.max_length,
                   max_eval_samples=a.max_eval_samples),
        seed=a.seed,
    )
    bench = Bench(a, data)
    result = {
        "status": "running",
        "hardware": cpu_info(a.threads),
        "settings": {
            "teacher": repo_relative(a.teacher), "student": repo_relative(a.student), "data": repo_relative(a.data), "train_split": a.train_split, "eval_split": a.eval_split,
            "eval_examples": len(data.raw[a.eval_split]), "max_length": a.max_length, "latency_sentences": len(bench.latency_texts),
            "latency_repeats": a.latency_repeats, "energies": a.energies, "min_rank": a.min_rank, "recovery_samples": a.recovery_samples,
            "recovery_epochs": a.recovery_epochs, "recovery_lr": a.recovery_lr, "batch_size": a.batch_size, "seed": a.seed,
        },
        "rows": [],
        "vocab_trimming": [],
        "low_rank": [],
        "command": command_line(__file__, argv),
    }
    rows: list[dict] = []  # the student first: the baseline of the ratios
    out = Path(a.output)
    # results are written after every part, so an interrupted run still leaves what it measured
    for part_rows, detail, key in _parts(bench):
        rows += part_rows
        result[key].append(detail)
        _write(result, rows, out)
    result["status"] = "complete"
    print(_write(result, rows, out))
    return 0


def _parts(bench: Bench):
    a = bench.a
    yield (*trim_rows(bench, "student", a.student), "vocab_trimming")
    for part_rows, detail in lowrank_variants(bench):
        yield part_rows, detail, "low_rank"
    yield (*trim_rows(bench, "teacher", a.teacher), "vocab_trimming")


def _write(result: dict, rows: list[dict], out: Path) -> str:
    report = write_compression_report(rows, out.parent / out.name, title="Size reductions of the SST-2 student (baseline) and teacher")
    result["rows"] = report["rows"]
    atomic_write_json(out.with_suffix(".json"), result)
    text = markdown(result, (out.parent / out.name / "compression_report.md").read_text())
    atomic_write_text(out.with_suffix(".md"), text)
    return text


if __name__ == "__main__":
    sys.exit(main())
