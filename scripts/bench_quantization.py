#!/usr/bin/env python
"""int8 and 4/8-bit variants of the distilled SST-2 student, side by side: accuracy, size on disk, latency.

Variants, all measured in one run on the same dev sentences and batches at a fixed thread count:
fp32 (PyTorch and ONNX Runtime); ONNX Runtime dynamic int8 (embeddings fp32 or int8); static int8
(QDQ, MinMax / Percentile / Entropy calibration on a seeded train subset); the TensorRT QDQ graph run
on ONNX Runtime's CPU provider; bitsandbytes 8-bit and 4-bit NF4. Then QAT against PTQ over several
training seeds: a short distillation from the teacher with QAT (simulating dynamic, and static int8)
against the same continued distillation without QAT, each quantized the way it was trained for; the
first seed's models also get table rows with latency.

    flock /tmp/hfc-cpu.lock python scripts/bench_quantization.py \\
        --student outputs/sst2-minilm-full/student --teacher outputs/sst2-minilm-full/teacher \\
        --data ../shared/assets/data/sst2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.data import DataConfig, TaskData  # noqa: E402
from hfcompress.distillation import DistillationTrainer, DistillationTrainingArguments  # noqa: E402
from hfcompress.evaluation import compression_row, cpu_info, evaluate_model, measure_latency  # noqa: E402
from hfcompress.evaluation.latency import set_threads  # noqa: E402
from hfcompress.export import export_onnx  # noqa: E402
from hfcompress.modeling import load_model, load_tokenizer  # noqa: E402
from hfcompress.quantization import BnbConfig, PTQConfig, QATCallback, QATConfig, load_bnb, quantize_bnb, quantize_onnx  # noqa: E402
from hfcompress.utils.bench import CPU_LOCK, FULL_RUN, add_data_args, add_output_arg, add_threads_arg, bench_parser, command_line, repo_relative  # noqa: E402
from hfcompress.utils.io import atomic_write_json, atomic_write_text  # noqa: E402
from hfcompress.utils.transformers_compat import training_kwargs  # noqa: E402


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--student", default=f"{FULL_RUN}/student", help="Distilled student: directory or Hub id.")
    p.add_argument("--teacher", default=f"{FULL_RUN}/teacher", help="Teacher for the QAT / continued distillation runs.")
    add_data_args(p)
    p.add_argument("--eval-split", default="dev")
    p.add_argument("--max-eval-samples", type=int, default=None, help="Evaluate on the first N dev sentences (default: all).")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--qat-train-samples", type=int, default=6000, help="Seeded training subset for QAT and its baseline.")
    p.add_argument("--qat-epochs", type=float, default=1.0)
    p.add_argument("--qat-learning-rate", type=float, default=2e-5)
    p.add_argument("--qat-max-steps", type=int, default=-1, help="Cap the QAT/baseline steps (smoke tests).")
    p.add_argument("--qat-seeds", type=int, nargs="+", default=[42, 43, 44], help="Training seeds of the QAT and continued-distillation runs.")
    p.add_argument("--preset", default="avx2", help="ONNX Runtime preset for the int8 variants and the QAT simulation.")
    p.add_argument("--calibration-samples", type=int, default=256)
    p.add_argument("--calibration-methods", nargs="+", default=["minmax", "percentile", "entropy"])
    p.add_argument("--teacher-cache-dir", default="outputs/cache/teacher-logits")
    p.add_argument("--skip-bnb", action="store_true", help="Leave out the bitsandbytes variants.")
    p.add_argument("--skip-qat", action="store_true", help="Leave out the QAT and continued-distillation variants.")
    add_threads_arg(p)
    p.add_argument("--latency-sentences", type=int, default=256, help="Dev sentences timed one at a time (b1) and in batches of 32.")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work-dir", default="outputs/bench-quantization", help="Where the exported and quantized models are written.")
    add_output_arg(p, "benchmarks/results/quantization_sst2")
    return p.parse_args(argv)


def measure(name: str, model, data: TaskData, tokenizer, texts: list[str], args, onnx_file=None, **extra) -> dict:
    """Accuracy and footprint (evaluate_model) and latency (measure_latency) of one variant, as one report row."""
    evaluation = evaluate_model(model, data, batch_size=64, onnx_file=onnx_file, tokenizer=tokenizer)
    latency = measure_latency(
        model, tokenizer, texts, batch_sizes=(1, 32), threads=args.threads, warmup=5, repeats=args.repeats,
        onnx_file=onnx_file, max_length=args.max_length,
    )
    row = compression_row(name, evaluation, latency, **extra)
    print(f"  {name}: acc {row['accuracy']:.4f}  size {row['size_mb']} MB  b1 p50 {row['latency_ms_p50_b1']} ms  "
          f"b32 {row['throughput_b32']} /s", flush=True)
    return row


def weights_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.suffix in (".safetensors", ".bin"))


def continue_distillation(student_dir, teacher_dir, data: TaskData, out_dir: Path, args, seed: int, qat_mode=None) -> tuple[Path, dict]:
    """Distil the student further from the teacher on the seeded subset, with QAT for ``qat_mode`` or without; same seed and budget either way."""
    from hfcompress.quantization.qat import QUANTIZATION_FILE

    tokenizer = load_tokenizer(str(student_dir))
    student = load_model(str(student_dir))
    teacher = load_model(str(teacher_dir))
    callbacks = [QATCallback(QATConfig(preset=args.preset, mode=qat_mode))] if qat_mode else []
    training = DistillationTrainingArguments(
        output_dir=str(out_dir / "checkpoints"), num_train_epochs=args.qat_epochs, max_steps=args.qat_max_steps,
        per_device_train_batch_size=32, learning_rate=args.qat_learning_rate, seed=seed,
        alpha=0.5, temperature=2.0, teacher_cache_dir=args.teacher_cache_dir, save_strategy="no", report_to="none",
        logging_steps=50, disable_tqdm=False, use_cpu=True, **training_kwargs({"warmup_ratio": 0.06, "group_by_length": True}),
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=training, train_dataset=data.tokenize(tokenizer, data.cfg.train_split),
        data_collator=data.collator(tokenizer), processing_class=tokenizer, callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out_dir / "model"))
    for cb in callbacks:
        cb.write_artifacts(out_dir / "model")
    assert not qat_mode or (out_dir / "model" / QUANTIZATION_FILE).exists()
    return out_dir / "model", {"train_seconds": round(seconds, 1), "steps": trainer.state.global_step}


QAT_RUNS = (("continued distillation", None), ("QAT dynamic", "dynamic"), ("QAT static", "static"))


def qat_vs_ptq_run(seed: int, with_rows: bool, args, data, tokenizer, work: Path, ptq, onnx_row) -> dict:
    """One training seed: continued distillation (then dynamic and static PTQ) against QAT for each mode (then that mode's int8).

    Accuracies land in the returned dict; ``with_rows`` also adds table rows with latency.
    """
    schemes = {
        "dynamic": PTQConfig(preset=args.preset),
        "static": PTQConfig(mode="static", preset=args.preset, calibration_samples=args.calibration_samples),
    }
    run = {"seed": seed}
    for label, qat_mode in QAT_RUNS:
        key = label.lower().replace(" ", "_")
        model_dir, info = continue_distillation(args.student, args.teacher, data, work / f"seed{seed}-{key}", args, seed, qat_mode)
        run[f"{key}_train_seconds"], run["steps"] = info["train_seconds"], info["steps"]
        onnx_file = export_onnx(model_dir, work / f"seed{seed}-{key}-onnx", overwrite=True)
        variants = {"fp32": onnx_file}
        for mode in [qat_mode] if qat_mode else list(schemes):
            variants[f"{mode} int8"] = ptq(onnx_file.parent, f"seed{seed}-{key}-{mode}", schemes[mode])
        for variant, path in variants.items():
            if with_rows:
                accuracy = onnx_row(f"{label} (seed {seed}) -> {variant}", path)["accuracy"]
            else:
                accuracy = evaluate_model(path.parent, data, batch_size=64, onnx_file=path.name, tokenizer=tokenizer)["accuracy"]
            run[f"{key} {variant}"] = accuracy
    return run


def add_summary(result: dict) -> None:
    """Mean accuracy over seeds of QAT -> int8 and continued distillation -> PTQ int8, per mode, and the PTQ of the student itself."""
    runs = result["qat"]["runs"]
    mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
    student_ptq = result.get("student_ptq", {})
    result["qat"]["summary"] = {
        mode: {
            "qat_int8": mean(f"qat_{mode} {mode} int8"),
            "continued_ptq_int8": mean(f"continued_distillation {mode} int8"),
            "continued_fp32": mean("continued_distillation fp32"),
            "qat_fp32": mean(f"qat_{mode} fp32"),
            "student_ptq_int8": student_ptq.get(mode),
        }
        for mode in ("dynamic", "static")
    }


def markdown(result: dict, command: str) -> str:
    rows = result["variants"]
    base = next((r for r in rows if r["name"] == "fp32 ONNX Runtime"), rows[0])
    s = result["settings"]
    lines = [
        "# int8 quantization of the distilled 3-layer SST-2 student\n",
        *([] if result.get("complete") else ["**Partial results: the run was stopped before every variant was measured.**\n"]),
        f"SST-2 dev ({s['eval_examples']} sentences; accuracy through `hfcompress.evaluation.evaluate_model`). Latency "
        f"(`measure_latency`): p50/p95 per call of {s['repeats']} timed passes over the first {s['latency_sentences']} dev sentences, "
        f"one at a time (b1) and in batches of 32 (throughput), after warm-up; each batch padded to its own longest sentence; {result['hardware']['threads']} threads on {result['hardware']['cpu']} (ISA: {', '.join(result['hardware']['isa'])}). "
        f"The machine is shared with other jobs, so latencies carry some noise; all variants ran in the same process, one after another.\n",
        "| variant | accuracy | Δ vs fp32 ONNX | size MB | p50 b1 ms | p95 b1 ms | throughput b32 /s | speed-up b1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = base["latency_ms_p50_b1"] / r["latency_ms_p50_b1"] if r.get("latency_ms_p50_b1") else float("nan")
        lines.append(
            f"| {r['name']} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - base['accuracy']):+.2f} pt | {r['size_mb']} | "
            f"{r['latency_ms_p50_b1']} | {r['latency_ms_p95_b1']} | {r['throughput_b32']} | {speed:.2f}x |"
        )
    if result.get("qat", {}).get("summary"):
        runs, summary = result["qat"]["runs"], result["qat"]["summary"]
        lines += [
            "",
            f"## QAT against PTQ, {len(runs)} training seed(s)\n",
            f"Each seed starts from the student and distils it further from the teacher for {runs[0]['steps']} steps on the same seeded "
            f"{s['qat_train_samples']}-sentence training subset ({s['qat_epochs']} epoch(s), lr {s['qat_learning_rate']}, batch 32, alpha 0.5, T 2): "
            f"without QAT (then PTQ, dynamic and static), and with QAT simulating ONNX Runtime `{s['preset']}` int8 on every Linear layer "
            "in dynamic mode (ranges per batch) or static mode (moving-average ranges, which the static int8 model then uses). "
            "Static int8 graphs quantize only the Linear layers' inputs and weights (`PTQConfig.linear_inputs_only`, the default).\n",
            "| seed | continued, fp32 | continued -> dynamic int8 | QAT dynamic -> dynamic int8 | continued -> static int8 | QAT static -> static int8 |",
            "|---|---|---|---|---|---|",
        ]
        cells = ("continued_distillation fp32", "continued_distillation dynamic int8", "qat_dynamic dynamic int8",
                 "continued_distillation static int8", "qat_static static int8")
        for r in runs:
            lines.append(f"| {r['seed']} | " + " | ".join(f"{r[c]:.4f}" for c in cells) + " |")
        lines.append("| **mean** | " + " | ".join(f"{sum(r[c] for r in runs) / len(runs):.4f}" for c in cells) + " |")
        lines.append("")
        for mode, m in summary.items():
            verdict = "at least as accurate" if m["qat_int8"] >= m["continued_ptq_int8"] else "less accurate"
            student = f"; PTQ of the student itself: {m['student_ptq_int8']:.4f}" if m["student_ptq_int8"] is not None else ""
            lines.append(f"- {mode}: QAT -> int8 {m['qat_int8']:.4f} against continued distillation -> PTQ int8 "
                         f"{m['continued_ptq_int8']:.4f} (mean over seeds): QAT is **{verdict}** "
                         f"({100 * (m['qat_int8'] - m['continued_ptq_int8']):+.2f} points){student}.")
        seconds = {label: sum(r[f"{label.lower().replace(' ', '_')}_train_seconds"] for r in runs) / len(runs) for label, _ in QAT_RUNS}
        lines.append("- Mean training time per run: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ".")
    if result.get("bnb_memory"):
        lines += ["", "bitsandbytes memory footprint (`get_memory_footprint`, parameters and buffers): "
                  + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in result["bnb_memory"].items())
                  + ". bitsandbytes is for memory, not CPU speed, and its layers do not export to ONNX."]
    lines += ["", "Reproduce:", "", f"    {command}", ""]
    return "\n".join(lines)


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for r in rows:
        ax1.scatter(r["latency_ms_p50_b1"], 100 * r["accuracy"], s=30 + 2 * r["size_mb"], alpha=0.7)
        ax1.annotate(r["name"], (r["latency_ms_p50_b1"], 100 * r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax1.set_xlabel("latency p50, batch 1 (ms)")
    ax1.set_ylabel("SST-2 dev accuracy (%)")
    ax1.set_title("accuracy vs latency (marker area ~ size)")
    ax2.barh([r["name"] for r in rows], [r["size_mb"] for r in rows])
    ax2.set_xlabel("size on disk (MB)")
    ax2.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = TaskData(
        DataConfig(path=args.data, name=args.data_config, eval_split=args.eval_split, max_length=args.max_length,
                   max_train_samples=args.qat_train_samples, max_eval_samples=args.max_eval_samples),
        seed=args.seed,
    )
    tokenizer = load_tokenizer(args.student)
    texts = list(data.raw[args.eval_split][data.cfg.text_column])[: args.latency_sentences]
    rows, result = [], {"hardware": cpu_info(args.threads)}

    command = command_line(__file__, argv, prefix=CPU_LOCK)
    result["settings"] = {
        "student": repo_relative(args.student), "teacher": repo_relative(args.teacher), "eval_examples": len(data.raw[args.eval_split]), "preset": args.preset,
        "calibration_samples": args.calibration_samples, "qat_train_samples": args.qat_train_samples, "qat_epochs": args.qat_epochs,
        "qat_learning_rate": args.qat_learning_rate, "seed": args.seed, "repeats": args.repeats, "latency_sentences": len(texts),
    }
    result["command"] = command
    out = Path(args.output)

    def save() -> None:
        atomic_write_json(out.with_suffix(".json"), result)
        atomic_write_text(out.with_suffix(".md"), markdown(result, command))
        chart(rows, out.with_suffix(".png"))

    def add(row: dict) -> dict:
        """Keep the row and rewrite the results, so an interrupted run still leaves every finished variant."""
        rows.append(row)
        result["variants"] = rows
        save()
        return row

    def onnx_row(name: str, onnx_file: Path, **extra) -> dict:
        return add(measure(name, onnx_file.parent, data, tokenizer, texts, args, onnx_file=onnx_file.name, **extra))

    def ptq(source: Path, out: str, config: PTQConfig) -> Path:
        return quantize_onnx(source, work / out, config, data, seed=args.seed, overwrite=True)

    print("fp32", flush=True)
    add(measure("fp32 PyTorch", args.student, data, tokenizer, texts, args))
    fp32_onnx = export_onnx(args.student, work / "fp32-onnx", overwrite=True)
    onnx_row("fp32 ONNX Runtime", fp32_onnx)

    print("post-training int8", flush=True)
    onnx_row(f"dynamic int8 ({args.preset})", ptq(fp32_onnx.parent, "dynamic", PTQConfig(preset=args.preset)))
    result["student_ptq"] = {"dynamic": rows[-1]["accuracy"]}  # the PTQ the QAT runs are compared with (static: minmax, below)
    onnx_row(f"dynamic int8 ({args.preset}) + int8 embeddings",
             ptq(fp32_onnx.parent, "dynamic-emb", PTQConfig(preset=args.preset, quantize_embeddings=True)))
    onnx_row(f"dynamic int8 ({args.preset}) + int8 attention matmuls",
             ptq(fp32_onnx.parent, "dynamic-att", PTQConfig(preset=args.preset, quantize_attention_matmuls=True)))
    for method in args.calibration_methods:
        config = PTQConfig(mode="static", preset=args.preset, calibration_method=method, calibration_samples=args.calibration_samples)
        onnx_row(f"static int8 ({args.preset}, {method})", ptq(fp32_onnx.parent, f"static-{method}", config))
        if method == "minmax":
            result["student_ptq"]["static"] = rows[-1]["accuracy"]
            config = PTQConfig(mode="static", preset=args.preset, calibration_samples=args.calibration_samples, linear_inputs_only=False)
            onnx_row(f"static int8 ({args.preset}, minmax), ONNX Runtime's untrimmed QDQ graph", ptq(fp32_onnx.parent, "static-untrimmed", config))
    trt = PTQConfig(mode="static", preset="tensorrt", calibration_method="minmax", calibration_samples=args.calibration_samples)
    onnx_row("TensorRT QDQ int8 (run on ORT CPU)", ptq(fp32_onnx.parent, "tensorrt", trt))

    if not args.skip_qat:
        print("QAT vs PTQ over seeds", flush=True)
        result["qat"] = {"runs": []}
        for seed in args.qat_seeds:
            result["qat"]["runs"].append(qat_vs_ptq_run(seed, seed == args.qat_seeds[0], args, data, tokenizer, work, ptq, onnx_row))
            add_summary(result)
            save()

    if not args.skip_bnb:
        print("bitsandbytes", flush=True)
        result["bnb_memory"] = {"fp32": int(load_model(args.student).get_memory_footprint())}
        for label, config in (("bnb 8-bit", BnbConfig(bits=8)), ("bnb 4-bit NF4 double-quant", BnbConfig(bits=4))):
            bnb_dir = quantize_bnb(args.student, work / label.split()[1], config, overwrite=True)
            model = load_bnb(bnb_dir, config)
            result["bnb_memory"][label] = int(model.get_memory_footprint())
            add(measure(label, model, data, tokenizer, texts, args, size_mb=round(weights_bytes(bnb_dir) / 1e6, 2),
                        memory_mb=round(model.get_memory_footprint() / 1e6, 2)))
            del model

    result["complete"] = True
    save()
    print(markdown(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
