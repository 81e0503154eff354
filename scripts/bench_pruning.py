#!/usr/bin/env python
"""Pruning on SST-2: what unstructured sparsity and structured slimming cost in accuracy and buy in size and speed.

Every variant continues the distillation of the same 3-layer student from the same teacher (teacher-logit
cache, same seeded training subset, epochs, learning rate and seed); only the pruning callback differs:
none (the baseline), gradual cubic magnitude pruning to each sparsity, and gradual structured pruning of
heads and FFN neurons (first-order Taylor importance) with the model slimmed at the end. Then, in one
run at a fixed thread count: dev accuracy, size and zipped size, and CPU latency (p50/p95, batch 1 and
32) in PyTorch and ONNX Runtime for the baseline, the 50%-sparse and the slimmed model.

    flock /tmp/hfc-cpu.lock python scripts/bench_pruning.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.data import DataConfig, TaskData  # noqa: E402
from hfcompress.distillation import DistillationTrainer, DistillationTrainingArguments  # noqa: E402
from hfcompress.errors import ConfigError  # noqa: E402
from hfcompress.evaluation import compression_row, evaluate_model, measure_latency  # noqa: E402
from hfcompress.evaluation.latency import cpu_info, set_threads  # noqa: E402
from hfcompress.evaluation.report import add_ratios  # noqa: E402
from hfcompress.export import export_onnx  # noqa: E402
from hfcompress.modeling import load_model, load_tokenizer  # noqa: E402
from hfcompress.pruning import MagnitudePruningCallback, StructuredPruningCallback  # noqa: E402
from hfcompress.utils.bench import CPU_LOCK, FULL_RUN, add_data_args, add_output_arg, add_threads_arg, bench_parser, command_line, repo_relative  # noqa: E402
from hfcompress.utils.io import atomic_output_dir, atomic_write_json, atomic_write_text  # noqa: E402
from hfcompress.utils.transformers_compat import training_kwargs  # noqa: E402


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--teacher", default=f"{FULL_RUN}/teacher", help="Fine-tuned teacher: directory or Hub id.")
    p.add_argument("--student", default=f"{FULL_RUN}/student", help="Distilled student to prune: directory or Hub id.")
    add_data_args(p)
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="dev")
    p.add_argument("--train-samples", type=int, default=10000, help="Seeded random training subset for every variant.")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="Cap optimizer steps per variant (smoke tests).")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--alpha", type=float, default=0.5, help="Weight of the hard-label loss (as in the student's recipe).")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9], help="Unstructured target sparsities.")
    p.add_argument("--end-step", type=float, default=0.7, help="Fraction of training where the cubic schedules end.")
    p.add_argument("--frequency", type=int, default=10, help="Prune every this many steps.")
    p.add_argument("--heads-fraction", type=float, default=1 / 3, help="Structured: fraction of heads removed (same in every layer).")
    p.add_argument("--ffn-fraction", type=float, default=0.5, help="Structured: fraction of FFN neurons removed in every layer.")
    p.add_argument("--cache-dir", default="outputs/cache/teacher-logits", help="Teacher-logit cache directory (shared, fingerprinted).")
    p.add_argument("--work-dir", default="outputs/bench-pruning", help="Where the pruned models and ONNX files go.")
    p.add_argument("--latency-texts", type=int, default=256, help="Dev sentences timed (batch 1: each; batch 32: consecutive groups).")
    p.add_argument("--repeats", type=int, default=3)
    add_threads_arg(p)
    p.add_argument("--seed", type=int, default=42)
    add_output_arg(p, "benchmarks/results/pruning_sst2", help="Output path without extension (.json, .md, .png).")
    p.add_argument("--command", default=None, help="Command line recorded in the report (default: this one).")
    return p.parse_args(argv)


def variants(a) -> list[tuple[str, object]]:
    out = [("student (no pruning)", None)]
    for s in a.sparsities:
        out.append((f"unstructured {s:.0%}", lambda s=s: MagnitudePruningCallback(
            target_sparsity=s, schedule="cubic", start_step=0, end_step=a.end_step, frequency=a.frequency)))
    out.append((f"slimmed ({a.heads_fraction:.0%} heads, {a.ffn_fraction:.0%} FFN)", lambda: StructuredPruningCallback(
        heads_fraction=a.heads_fraction, ffn_fraction=a.ffn_fraction, importance="taylor", schedule="cubic",
        start_step=0, end_step=a.end_step, frequency=a.frequency)))
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.split(" (")[0]).strip("-").lower().replace("--", "-")


def train_variant(a, make_callback, teacher, data, tokenizer, out_dir: Path) -> tuple[Path, dict]:
    model = load_model(a.student, data.cfg.task, data.num_labels)
    callback = make_callback() if make_callback else None
    args = DistillationTrainingArguments(
        output_dir=str(out_dir.parent / f".{out_dir.name}-checkpoints"), num_train_epochs=a.epochs, max_steps=a.max_steps,
        per_device_train_batch_size=a.batch_size, learning_rate=a.learning_rate,
        alpha=a.alpha, temperature=a.temperature, teacher_cache_dir=a.cache_dir, seed=a.seed, save_strategy="no",
        report_to="none", logging_steps=50, use_cpu=True, disable_tqdm=False,
        **training_kwargs({"warmup_ratio": 0.06, "group_by_length": True}),
    )
    trainer = DistillationTrainer(
        model=model, teacher_model=teacher, args=args, train_dataset=data.tokenize(tokenizer, data.cfg.train_split),
        data_collator=data.collator(tokenizer), processing_class=tokenizer, callbacks=[callback] if callback else None,
    )
    result = trainer.train()
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        trainer.save_model(str(tmp))
        if callback:
            callback.write_artifacts(tmp)
    return out_dir, {"train_runtime_s": round(result.metrics["train_runtime"], 1), "steps": trainer.state.global_step,
                     "report": callback.report if callback else None}


def markdown(result: dict) -> str:
    s, hw = result["settings"], result["hardware"]
    lines = [
        "# Pruning the SST-2 student",
        "",
        f"Every variant continues distilling the 3-layer student `{s['student']}` from `{s['teacher']}` on the same seeded "
        f"{s['train_examples']}-sentence subset of SST-2 train ({s['epochs']} epoch(s), lr {s['learning_rate']}, batch {s['batch_size']}, "
        f"alpha {s['alpha']}, T {s['temperature']}, seed {s['seed']}); only the pruning differs. Dev accuracy on all {s['dev_examples']} "
        "sentences. Schedules are cubic (Zhu & Gupta) from step 0 to "
        f"{s['end_step']:.0%} of training, every {s['frequency']} steps.",
        "",
        f"Hardware: {hw['cpu']} ({', '.join(hw['isa'])}), {hw['threads']} threads, shared machine.",
        "",
        "## Accuracy, size and sparsity",
        "",
        "| variant | dev accuracy | vs unpruned | kept | encoder-Linear sparsity | parameters | size (MB) | zipped (MB) | zipped vs unpruned | train wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["accuracy"]:
        lines.append(
            f"| {r['name']} | {r['accuracy']:.4f} | {r['accuracy_delta']:+.4f} | {r['accuracy_kept']:.1%} | {r['pruned_sparsity']:.3f} | "
            f"{r['num_parameters']:,} | {r['size_mb']:.1f} | {r['zipped_size_mb']:.1f} | {r['zipped_size_ratio']:.2f}x smaller | {r['train_runtime_s']:.0f} |"
        )
    lines += [
        "",
        "## CPU latency (ms per call, p50 / p95) and throughput, side by side in one run",
        "",
        f"{s['latency_texts']} dev sentences, each batch padded to its own longest sentence; {s['repeats']} timed passes after warm-up.",
        "",
        "| variant | runtime | b1 p50 | b1 p95 | speed-up b1 | b32 p50 | b32 p95 | throughput b32 (ex/s) | speed-up b32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["latency"]:
        lines.append(
            f"| {r['name']} | {r['latency_backend']} | {r['latency_ms_p50_b1']:.2f} | {r['latency_ms_p95_b1']:.2f} | {r['speedup_b1']:.2f}x | "
            f"{r['latency_ms_p50_b32']:.1f} | {r['latency_ms_p95_b32']:.1f} | {r['throughput_b32']:.0f} | {r['speedup_b32']:.2f}x |"
        )
    lines += ["", "## What this shows", ""] + [f"- {n}" for n in result["findings"]]
    lines += ["", "## Reproduce", "", "```bash", result["command"], "```", ""]
    return "\n".join(lines)


def findings(acc_rows, lat_rows) -> list[str]:
    notes = []
    base = acc_rows[0]
    for r in acc_rows[1:]:
        notes.append(f"{r['name']}: {r['accuracy']:.4f} dev accuracy, {r['accuracy_kept']:.1%} of the unpruned student's "
                     f"{base['accuracy']:.4f}; {r['zipped_size_ratio']:.2f}x smaller zipped.")
    for r in lat_rows:
        if r["name"] == base["name"]:
            continue  # the reference of each runtime
        notes.append(f"{r['name']} in {r['latency_backend']}: {r['speedup_b1']:.2f}x at batch 1, {r['speedup_b32']:.2f}x at batch 32 "
                     "(p50, vs the unpruned student in the same runtime).")
    notes.append("Unstructured zeros are still stored and multiplied by dense kernels: they shrink the zipped download "
                  "(embeddings, which are not pruned, dominate this model's size), not the latency.")
    # The sparse model runs exactly the dense model's kernels, so its deviation from 1.00x is this run's timing noise.
    control = [r for r in lat_rows if r["name"].startswith("unstructured")]
    if control:
        noise = max(abs(1 - r[k]) for r in control for k in ("speedup_b1", "speedup_b32"))
        notes.append(f"Timing noise: the sparse model computes exactly what the dense one does, yet measured up to {noise:.0%} away "
                     "from 1.00x; speed-ups within that margin are not distinguishable from noise on this shared machine.")
    return notes


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = result["accuracy"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sparse = [r for r in acc if r["name"].startswith("unstructured")]
    xs = [0.0] + [r["pruned_sparsity"] for r in sparse]
    left.plot(xs, [acc[0]["accuracy"]] + [r["accuracy"] for r in sparse], "o-", label="dev accuracy")
    left.axhline(0.98 * acc[0]["accuracy"], ls="--", c="grey", label="98% of unpruned")
    left.set_xlabel("encoder-Linear sparsity")
    left.set_ylabel("SST-2 dev accuracy")
    twin = left.twinx()
    twin.plot(xs, [acc[0]["zipped_size_mb"]] + [r["zipped_size_mb"] for r in sparse], "s:", c="tab:orange", label="zipped MB")
    twin.set_ylabel("zipped checkpoint (MB)")
    left.legend(loc="lower left")
    twin.legend(loc="lower right")
    left.set_title("Unstructured pruning: accuracy and zipped size")
    lat = result["latency"]
    labels = [f"{r['name'].split(' (')[0]}\n{r['latency_backend']}" for r in lat]
    width = 0.4
    idx = range(len(lat))
    right.bar([i - width / 2 for i in idx], [r["latency_ms_p50_b1"] for r in lat], width, label="batch 1 p50 (ms)")
    right.bar([i + width / 2 for i in idx], [r["latency_ms_p50_b32"] / 32 for r in lat], width, label="batch 32 p50 / 32 (ms per example)")
    right.set_xticks(list(idx), labels, fontsize=7)
    right.set_ylabel("ms")
    right.legend()
    right.set_title(f"CPU latency, {result['hardware']['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    a = parse_args(argv)
    if not 0 < a.heads_fraction < 1 or not 0 < a.ffn_fraction < 1 or not all(0 < s < 1 for s in a.sparsities):
        raise ConfigError("--sparsities, --heads-fraction and --ffn-fraction must be in (0, 1)")
    set_threads(a.threads)
    data = TaskData(
        DataConfig(path=a.data, name=a.data_config, train_split=a.train_split, eval_split=a.eval_split, max_length=a.max_length,
                   max_train_samples=a.train_samples),
        seed=a.seed,
    )
    tokenizer = load_tokenizer(a.student)
    teacher = load_model(a.teacher, data.cfg.task, data.num_labels)
    work = Path(a.work_dir)
    trained = []
    for name, make in variants(a):
        print(f"== training: {name}", flush=True)
        path, info = train_variant(a, make, teacher, data, tokenizer, work / slug(name))
        trained.append((name, path, info))

    acc_rows = []
    for name, path, info in trained:
        evaluation = evaluate_model(path, data, backend="pytorch")
        report = info["report"] or {}
        acc_rows.append(compression_row(name, evaluation, train_runtime_s=info["train_runtime_s"], steps=info["steps"],
                                        pruned_sparsity=report.get("global_sparsity", 0.0), sparsity_report=report or None))
    acc_rows = add_ratios(acc_rows)
    for r in acc_rows:
        r["accuracy_kept"] = round(r["accuracy"] / acc_rows[0]["accuracy"], 4)

    # Latency: unpruned, the first sparse model and the slimmed model, PyTorch and ONNX Runtime, in one run.
    texts = list(data.raw[data.cfg.eval_split][data.cfg.text_column][: a.latency_texts])
    timed = [trained[0], trained[1], trained[-1]]
    lat_rows = []
    for backend in ("pytorch", "onnx"):
        rows = []
        for name, path, _ in timed:
            target = path
            if backend == "onnx":
                target = work / "onnx" / path.name
                if not (target / "model.onnx").exists():
                    export_onnx(path, target)
                tokenizer.save_pretrained(target)
            print(f"== timing: {name} ({backend})", flush=True)
            latency = measure_latency(str(target), tokenizer, texts, batch_sizes=(1, 32), threads=a.threads, backend=backend,
                                      repeats=a.repeats)
            rows.append(compression_row(name, None, latency))
        rows = add_ratios(rows)
        for r in rows:
            r["speedup_b32"] = round(rows[0]["latency_ms_p50_b32"] / r["latency_ms_p50_b32"], 3)
        lat_rows += rows

    options = {k: repo_relative(v) if isinstance(v, str) else v for k, v in vars(a).items() if k != "command"}
    result = {
        "settings": {**options, "train_examples": len(data.raw[data.cfg.train_split]),
                     "dev_examples": len(data.raw[data.cfg.eval_split])},
        "hardware": cpu_info(a.threads),
        "accuracy": acc_rows,
        "latency": lat_rows,
        "findings": findings(acc_rows, lat_rows),
        "command": a.command or command_line(__file__, argv, prefix=CPU_LOCK),
    }
    out = Path(a.output)
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
