#!/usr/bin/env python
"""The headline SST-2 benchmark: hfcompress's pipeline against plain transformers and Optimum, side by side.

1. Runs the recipe (default recipes/sst2_minilm.yaml) with --resume: finished stages are skipped, so
   a second run only measures.
2. Builds the baselines a user without hfcompress would build from the same teacher: an ONNX export
   by Optimum (ORTModelForSequenceClassification, export=True) and its dynamic int8 quantization by
   ORTQuantizer with AutoQuantizationConfig.avx2(is_static=False), both with Optimum's defaults.
   Without optimum-onnx (transformers 5) the same graph and the same onnxruntime quantizer call are
   made without it (see optimum_baselines); the report says which.
3. Measures every variant in one process at a fixed thread count: dev accuracy, size on disk (and
   zipped), parameters, p50/p95 latency at batch 1 and throughput at batch 32 (dev sentences at their
   own length). Latency is taken in rounds, each timing every variant in turn; a figure is the median
   over the rounds, so slow drift of the machine does not favour one variant.
4. Times the framework's own training cost on a subset: an epoch of plain fine-tuning, of
   distillation with and without the teacher-logit cache, and with the pruning and QAT callbacks.
5. Writes <output>.json/.md/.png and checks the goals of the headline variant against the teacher
   and against Optimum's int8 teacher.

    python scripts/bench_sst2.py                  # the recipe's training (about 1.5 h on 2 cores) + measurement
    python scripts/bench_sst2.py --no-cost        # skip the training-cost section
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.data import TaskData  # noqa: E402
from hfcompress.evaluation import compression_row, evaluate_model, evaluation_texts, measure_latency, write_compression_report  # noqa: E402
from hfcompress.evaluation.latency import set_threads  # noqa: E402
from hfcompress.evaluation.training_cost import TrainingVariant, median_timings, time_training  # noqa: E402
from hfcompress.modeling import load_config, load_model, load_tokenizer  # noqa: E402
from hfcompress.pruning import MagnitudePruningCallback, StructuredPruningCallback  # noqa: E402
from hfcompress.quantization import QATCallback, QATConfig  # noqa: E402
from hfcompress.recipes import load_recipe, run_recipe  # noqa: E402
from hfcompress.utils.bench import REPO, add_output_arg, add_recipe_args, add_threads_arg, bench_parser, command_line, goals_markdown, goals_met, print_report, repo_relative  # noqa: E402
from hfcompress.utils.io import atomic_output_dir  # noqa: E402

OPTIMUM_ONNX, OPTIMUM_INT8 = "optimum_onnx", "optimum_int8"
DEFAULT_VARIANTS = [
    "teacher=teacher fp32 (PyTorch)",
    f"{OPTIMUM_ONNX}=teacher fp32 (ONNX Runtime, Optimum export)",
    f"{OPTIMUM_INT8}=teacher int8 (Optimum avx2 dynamic)",
    "student=student, 3 layers, fp32 (PyTorch)",
    "slim_more_int8=hfcompress: distilled, 1/2 heads + 2/3 FFN removed, int8, int4 embeddings (ONNX)",
    "slim_int8=hfcompress: distilled, 1/3 heads + 1/2 FFN removed, int8, int4 embeddings (ONNX)",
    "slim_trimmed_int8=same + vocabulary trimmed to SST-2 train (ONNX)",
    "student_int8=student, int8 incl. embeddings (ONNX)",
    "slim=student, 1/3 heads + 1/2 FFN removed, fp32 (PyTorch)",
    "slim_onnx=student, 1/3 heads + 1/2 FFN removed, fp32 (ONNX)",
]
# What the headline variant must reach (issue 7), against the teacher (variant 1) and Optimum's int8 teacher (variant 3).
GOALS = {
    "accuracy_vs_teacher": ("share of the teacher's accuracy", ">=", 0.98),
    "smaller_than_teacher": ("times smaller on disk than the teacher", ">=", 10.0),
    "faster_b1_than_teacher": ("times faster at batch 1 than the teacher", ">=", 8.0),
    "smaller_than_optimum_int8": ("times smaller than Optimum int8", ">=", 2.5),
    "faster_b1_than_optimum_int8": ("times faster at batch 1 than Optimum int8", ">=", 2.0),
    "accuracy_points_below_optimum_int8": ("accuracy points below Optimum int8", "<=", 0.5),
}


def parse_args(argv=None):
    p = bench_parser(__doc__)
    add_recipe_args(p, str(REPO / "recipes" / "sst2_minilm.yaml"), help="The hfcompress pipeline (a recipe file).")
    p.add_argument(
        "--variant", action="append", default=None, metavar="REF=LABEL",
        help="A variant to measure: a recipe stage name, a path, or optimum_onnx / optimum_int8 (the baselines), with its label. "
        "Repeatable; the first is the baseline of the ratios. Default: the teacher, the Optimum baselines and the recipe's variants.",
    )
    p.add_argument("--teacher", default="teacher", help="Recipe stage (or path) of the fine-tuned teacher the Optimum baselines start from.")
    p.add_argument("--headline", default="slim_more_int8", help="The variant whose goals are checked.")
    add_threads_arg(p, help="Intra-op threads for PyTorch and ONNX Runtime (fixed for every variant).")
    p.add_argument("--latency-samples", type=int, default=256, help="Dev sentences the latency batches are made of.")
    p.add_argument("--rounds", type=int, default=3, help="Latency rounds; each times every variant in turn.")
    p.add_argument("--repeats", type=int, default=2, help="Timed passes over the latency batches per round.")
    p.add_argument("--warmup", type=int, default=10, help="Untimed calls before each timing.")
    p.add_argument("--no-cost", action="store_true", help="Skip the training-cost section.")
    p.add_argument("--cost-train-samples", type=int, default=4000, help="Training sentences of each training-cost run.")
    p.add_argument("--cost-max-steps", type=int, default=-1, help="Cap the steps of each training-cost run (smoke tests).")
    add_output_arg(p, str(REPO / "benchmarks" / "results" / "sst2_minilm"))
    return p.parse_args(argv)


def optimum_baselines(teacher: str, root: Path) -> tuple[dict[str, Path], str]:
    """The teacher exported and int8-quantized as a user without hfcompress would, with Optimum's defaults (built once, reused).

    With optimum-onnx: ORTModelForSequenceClassification(export=True), then ORTQuantizer with
    AutoQuantizationConfig.avx2(is_static=False). Without it (transformers 5): the graph Optimum's
    exporter gives, from torch.onnx's dynamo exporter, then the call ORTQuantizer makes for that
    configuration, onnxruntime's quantize_dynamic. Returns the paths and how they were built.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from hfcompress.export import export_onnx
    from hfcompress.utils.imports import optimum_onnx_missing

    with_optimum = optimum_onnx_missing() is None
    tokenizer = load_tokenizer(teacher)
    onnx_dir, int8_dir = root / "teacher-onnx", root / "teacher-int8"
    if not onnx_dir.is_dir():
        if with_optimum:
            from optimum.onnxruntime import ORTModelForSequenceClassification

            with atomic_output_dir(onnx_dir, overwrite=True) as staging:
                ORTModelForSequenceClassification.from_pretrained(teacher, export=True).save_pretrained(staging)
                tokenizer.save_pretrained(staging)
        else:
            export_onnx(teacher, onnx_dir, backend="dynamo")
    if not int8_dir.is_dir():
        with atomic_output_dir(int8_dir, overwrite=True) as staging:
            if with_optimum:
                from optimum.onnxruntime import ORTQuantizer
                from optimum.onnxruntime.configuration import AutoQuantizationConfig

                ORTQuantizer.from_pretrained(onnx_dir).quantize(AutoQuantizationConfig.avx2(is_static=False), save_dir=staging)
            else:  # avx2(is_static=False): uint8 weights and activations, symmetric per-channel weights, full range
                quantize_dynamic(
                    onnx_dir / "model.onnx", staging / "model_quantized.onnx", per_channel=True, reduce_range=False,
                    weight_type=QuantType.QUInt8, extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                )
                load_config(str(onnx_dir)).save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    how = (
        "Optimum (ORTModelForSequenceClassification export, ORTQuantizer avx2 dynamic)" if with_optimum
        else "without Optimum: Optimum's graph from torch.onnx dynamo, and onnxruntime quantize_dynamic with ORTQuantizer's avx2 dynamic arguments"
    )
    return {OPTIMUM_ONNX: onnx_dir, OPTIMUM_INT8: int8_dir}, how


def parse_variants(specs: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for spec in specs:
        ref, sep, label = spec.partition("=")
        if not sep or not ref or not label:
            raise SystemExit(f"--variant {spec!r}: write REF=LABEL, e.g. slim_int8='distilled + slimmed + int8'")
        pairs.append((ref, label))
    return pairs


def median_latency(rounds: list[dict]) -> dict:
    """Per batch size, the median over rounds of p50, p95 and throughput (each round's figures are kept too)."""
    is_batch = lambda key: key.startswith("b") and key[1:].isdigit()  # noqa: E731  ("b1", "b32"; not "backend")
    out = {k: v for k, v in rounds[0].items() if not is_batch(k)}
    for key in filter(is_batch, rounds[0]):
        out[key] = {stat: round(statistics.median(r[key][stat] for r in rounds), 3) for stat in ("p50_ms", "p95_ms", "throughput")}
        out[key]["rounds_p50_ms"] = [r[key]["p50_ms"] for r in rounds]
    return out


def check_goals(rows: list[dict], headline: str) -> dict:
    by_role = {r["role"]: r for r in rows if r.get("role")}
    h, teacher, int8 = by_role.get("headline"), by_role.get("teacher"), by_role.get(OPTIMUM_INT8)
    if not (h and teacher and int8):
        return {}
    values = {
        "accuracy_vs_teacher": h["accuracy"] / teacher["accuracy"],
        "smaller_than_teacher": teacher["size_mb"] / h["size_mb"],
        "faster_b1_than_teacher": teacher["latency_ms_p50_b1"] / h["latency_ms_p50_b1"],
        "smaller_than_optimum_int8": int8["size_mb"] / h["size_mb"],
        "faster_b1_than_optimum_int8": int8["latency_ms_p50_b1"] / h["latency_ms_p50_b1"],
        "accuracy_points_below_optimum_int8": 100 * (int8["accuracy"] - h["accuracy"]),
    }
    return goals_met(headline, values, GOALS)


def distilled_student_layers(recipe) -> list[int]:
    """The teacher layers the recipe's distilled student keeps: the student the training-cost section trains."""
    layers = next((stage.student_layers for kind, stage in recipe.stages if kind == "distill"), None)
    if layers is None:
        raise SystemExit("the training-cost section trains the recipe's distilled student, but the recipe has no distill stage: add one or pass --no-cost")
    return layers


def training_cost(a, recipe, teacher_ref: str) -> list[dict]:
    """Epoch and step times of the recipe's student trained six ways on the same subset, one after another."""
    cfg = recipe.config
    data = TaskData(dataclasses.replace(cfg.data, max_train_samples=a.cost_train_samples), splits=[cfg.data.train_split], seed=cfg.seed)
    layers = distilled_student_layers(recipe)
    teacher = load_model(teacher_ref, data.cfg.task, data.num_labels)
    tokenizer = load_tokenizer(teacher_ref)
    train, collator = data.tokenize(tokenizer, data.cfg.train_split), data.collator(tokenizer)
    schedule = dict(schedule="cubic", start_step=0, end_step=0.7, frequency=10)
    variants = [
        TrainingVariant("fine-tuning on hard labels", distill=False),
        TrainingVariant("distillation, live teacher", distill=True),
        TrainingVariant("distillation, cached teacher logits", distill=True, teacher_cache=True),
        TrainingVariant("+ magnitude pruning callback", teacher_cache=True, callbacks=lambda: [MagnitudePruningCallback(target_sparsity=0.5, **schedule)]),
        TrainingVariant("+ structured pruning callback", teacher_cache=True,
                        callbacks=lambda: [StructuredPruningCallback(heads_fraction=1 / 3, ffn_fraction=0.5, importance="taylor", **schedule)]),
        TrainingVariant("+ QAT callback", teacher_cache=True, callbacks=lambda: [QATCallback(QATConfig())]),
    ]
    set_threads(a.threads)
    run = lambda variant, max_steps: time_training(variant, teacher, tokenizer, train, collator, layers, epochs=1, max_steps=max_steps)  # noqa: E731
    run(variants[1], 10 if a.cost_max_steps < 0 else a.cost_max_steps)  # warm-up: allocator, kernels; the first timed run would pay for it
    return [median_timings([run(variant, a.cost_max_steps)]) for variant in tqdm(variants, desc="training-cost runs")]


def cost_markdown(rows: list[dict], train_examples: int) -> str:
    if not rows:
        return ""
    finetune, cached = rows[0]["epoch_s"][0], rows[2]["step_ms_p50"]
    lines = [
        "## What the framework costs in training",
        "",
        f"The recipe's student trained one epoch on {train_examples} SST-2 sentences (batch 32) each way, one run after another "
        "after a warm-up run; cache build time is reported apart from the epoch.",
        "",
        "| variant | epoch (s) | vs fine-tuning | step p50 (ms) | step overhead vs cached distillation | cache build (s) | teacher forward passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        epoch = r["epoch_s"][0]
        overhead = f"{100 * (r['step_ms_p50'] / cached - 1):+.1f}%" if r["name"].startswith("+") else ""
        build = "" if r["cache_build_s"] is None else f"{r['cache_build_s']:.1f}"
        lines.append(
            f"| {r['name']} | {epoch:.1f} | {epoch / finetune:.2f}x | {r['step_ms_p50']:.1f} | {overhead} | {build} | {r['teacher_forward_passes']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    recipe = load_recipe(a.recipe, a.override)
    if not a.no_cost:
        distilled_student_layers(recipe)  # fail before hours of training and measurement, not after
    outputs = run_recipe(recipe, resume=True)
    resolve = lambda ref: str(outputs.get(ref, ref))  # noqa: E731
    variants = parse_variants(a.variant or DEFAULT_VARIANTS)
    refs = [ref for ref, _ in variants]
    if a.headline not in refs:
        raise SystemExit(f"--headline {a.headline!r} is not among the variants {refs}: name one of them")
    paths, baselines = {ref: resolve(ref) for ref in refs}, None
    if {OPTIMUM_ONNX, OPTIMUM_INT8} & set(refs):
        built, baselines = optimum_baselines(resolve(a.teacher), Path(recipe.config.output_dir) / "baselines")
        paths.update(built)
    missing = [ref for ref, path in paths.items() if not Path(path).exists()]
    if missing:
        raise SystemExit(f"variants {missing} are neither recipe stages nor existing paths: fix --variant or the recipe")

    data = TaskData(recipe.config.data, splits=[recipe.config.data.eval_split], seed=recipe.config.seed)
    evaluations = {ref: evaluate_model(paths[ref], data) for ref in tqdm(refs, desc="accuracy")}
    texts = evaluation_texts(data, a.latency_samples)
    rounds: dict[str, list[dict]] = {ref: [] for ref in refs}
    with tqdm(total=a.rounds * len(refs), desc="latency") as bar:
        for _ in range(a.rounds):
            for ref in refs:
                rounds[ref].append(
                    measure_latency(paths[ref], paths[ref], texts, (1, 32), a.threads, warmup=a.warmup, repeats=a.repeats)
                )
                bar.update()
    roles = {"teacher": a.teacher, OPTIMUM_INT8: OPTIMUM_INT8, "headline": a.headline}
    rows = []
    for ref, label in variants:
        role = next((r for r, target in roles.items() if target == ref), None)
        rows.append(compression_row(label, evaluations[ref], median_latency(rounds[ref]), ref=ref, role=role))
    goals = check_goals(rows, a.headline)
    cost = [] if a.no_cost else training_cost(a, recipe, resolve(a.teacher))
    out = Path(a.output)
    command = command_line(__file__, argv)
    notes = "\n".join(
        part for part in (
            goals_markdown(goals),
            cost_markdown(cost, a.cost_train_samples),
            f"Latency: median over {a.rounds} rounds (each: {a.warmup} warm-up calls, then {a.repeats} passes over "
            f"{a.latency_samples} dev sentences, each batch padded to its own longest sentence).",
            f"Optimum baselines built by {baselines}." if baselines else "",
            f"Reproduce: `{command}`",
        ) if part
    )
    report = write_compression_report(
        rows, out.parent, title="SST-2: hfcompress against plain transformers and Optimum", file_stem=out.name, notes=notes,
        metadata={"goals": goals, "training_cost": cost, "command": command, "recipe": repo_relative(a.recipe), "baselines": baselines,
                  "settings": {"threads": a.threads, "latency_samples": a.latency_samples, "rounds": a.rounds, "repeats": a.repeats}},
    )
    print_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
