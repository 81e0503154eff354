#!/usr/bin/env python
"""The vision benchmark (issue 16): CIFAR-10 ResNet-56 through hfcompress's pipelines against what PyTorch and ONNX Runtime give alone.

1. Converts the shared pretrained ResNet-56 and ResNet-20 into transformers models (once).
2. Runs the recipe (default recipes/cifar10_resnet56.yaml) with --resume, less its evaluate and card stages; a
   stage that does not validate stops the benchmark. A variant the recipe does not make is listed as skipped.
3. Builds variant 3, ResNet-56 in int8 as ONNX Runtime alone gives it: quantize_static with its defaults
   (QDQ, MinMax, per-tensor weights) calibrated on training images.
4. Measures every variant in one evaluate stage (top-1 on the test split, size, parameters, p50/p95 latency at
   batch 1 and throughput at batch 32 at a fixed thread count) and counts MACs per image with count_macs.
5. Writes <output>.json/.md/.png (the SST-2 benchmark's keys plus macs) and checks the goals of the headline variant.

    python scripts/bench_cifar10.py                                   # the full run: 50,000 training and 10,000 test images
    python scripts/bench_cifar10.py --train-limit 512 --test-limit 256 --epochs 0.05 --output /tmp/cifar10_smoke
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.artifacts import EVALUATION_RESULTS_FILE, TRAIN_RESULTS_FILE  # noqa: E402
from hfcompress.errors import HFCompressError  # noqa: E402
from hfcompress.evaluation import compression_row, count_macs, write_compression_report  # noqa: E402
from hfcompress.recipes.recipe import apply_overrides, load_yaml, parse_recipe  # noqa: E402
from hfcompress.recipes.runner import run_recipe  # noqa: E402
from hfcompress.utils.bench import (  # noqa: E402
    REPO, add_output_arg, add_recipe_args, add_threads_arg, bench_parser, command_line, goals_markdown, goals_met, print_report, repo_relative, without_report_stages,
)

CHECKPOINTS = "../shared/assets/models/resnet-cifar10/pretrained_models"
PRETRAINED = {"resnet56": ("resnet56-4bfd9763.th", 56), "resnet20": ("resnet20-12fca82f.th", 20)}
ORT_INT8 = "ort_int8"  # variant 3, built by this script
BENCH_EVALUATION = "bench_evaluation"
BASELINES = "ONNX Runtime's quantize_static with its defaults (QDQ, MinMax, per-tensor weights) on hfcompress's seeded calibration images"
# (ref, label) in the order: a recipe stage, or ORT_INT8
VARIANTS = [
    ("resnet56", "ResNet-56 fp32 (PyTorch), fine-tuned"),
    ("resnet56_onnx", "ResNet-56 fp32 (ONNX Runtime)"),
    (ORT_INT8, "ResNet-56 static int8 (ONNX Runtime quantize_static defaults)"),
    ("resnet20", "ResNet-20 fp32 (PyTorch), fine-tuned"),
    ("resnet56_pruned", "hfcompress: ResNet-56, filters pruned (>=50% of MACs) + distilled, fp32 (PyTorch)"),
    ("resnet56_pruned_onnx", "hfcompress: ResNet-56, filters pruned + distilled, fp32 (ONNX)"),
    ("resnet56_pruned_int8", "hfcompress: ResNet-56, filters pruned + distilled, static int8 (ONNX)"),
    ("resnet20_distilled_int8", "hfcompress: ResNet-56 distilled into ResNet-20, static int8 (ONNX)"),
]
ROLES = {"resnet56": "baseline", ORT_INT8: ORT_INT8, "resnet20": "small"}
# issue 16's goals for the best pipeline variant, against variant 1 (baseline), 3 (ONNX Runtime int8) and 4 (ResNet-20)
GOALS = {
    "accuracy_points_below_baseline": ("top-1 points below ResNet-56 fp32", "<=", 1.0),
    "fewer_macs_than_baseline": ("times fewer MACs than ResNet-56", ">=", 2.0),
    "smaller_than_baseline": ("times smaller on disk than ResNet-56 fp32", ">=", 6.0),
    "faster_b1_than_baseline": ("times faster at batch 1 than ResNet-56 fp32", ">=", 3.0),
    "faster_b1_than_ort_int8": ("times faster at batch 1 than ONNX Runtime's int8", ">=", 1.5),
    "accuracy_points_above_resnet20": ("top-1 points above ResNet-20", ">", 0.0),
    "latency_b1_vs_resnet20": ("batch-1 latency as a share of ResNet-20's", "<=", 1.0),
}


def parse_args(argv=None):
    p = bench_parser(__doc__)
    add_recipe_args(p, str(REPO / "recipes" / "cifar10_resnet56.yaml"))
    p.add_argument("--train-limit", type=int, default=None, help="Train on a seeded random subset of this many training images.")
    p.add_argument("--test-limit", type=int, default=None, help="Evaluate on the first N test images.")
    p.add_argument("--epochs", type=float, default=None, help="Epochs of every training stage (default: the recipe's).")
    p.add_argument("--checkpoints", default=CHECKPOINTS, help="Directory of the reference resnet20/resnet56 .th checkpoints, converted "
                   "to the paths the recipe names (a path ending in resnet56 or resnet20 that is not a stage) where missing.")
    p.add_argument("--headline", default="resnet56_pruned_int8", help="The variant whose goals are checked.")
    p.add_argument("--calibration-samples", type=int, default=256, help="Training images ONNX Runtime's own int8 (variant 3) is calibrated on.")
    add_threads_arg(p, help="Intra-op threads for PyTorch and ONNX Runtime (fixed for every variant).")
    p.add_argument("--latency-samples", type=int, default=256, help="Test images the latency batches are made of.")
    p.add_argument("--repeats", type=int, default=3, help="Timed passes over the latency batches.")
    p.add_argument("--warmup", type=int, default=10, help="Untimed calls before each timing.")
    add_output_arg(p, str(REPO / "benchmarks" / "results" / "cifar10_resnet56"))
    return p.parse_args(argv)


def bench_overrides(a) -> list[str]:
    """--train-limit/--test-limit/--epochs as recipe overrides, before the user's own --override."""
    out = []
    if a.train_limit is not None:
        out.append(f"data.max_train_samples={a.train_limit}")
    if a.test_limit is not None:
        out.append(f"data.max_eval_samples={a.test_limit}")
    return out + a.override


def convert_pretrained(raw: dict, checkpoints: str) -> None:
    """Convert the reference checkpoints to the paths the recipe starts from (``model``/``student`` paths named
    resnet56 or resnet20 that are not stages), unless already there."""
    from hfcompress.models.cifar_resnet.conversion import convert_to_directory

    names = {stage.get("name") for stage in raw["stages"]}
    classes = Path(raw["data"]["path"]) / "classes.txt"
    for stage in raw["stages"]:
        for ref in (stage.get("model"), stage.get("student")):
            if isinstance(ref, str) and ref not in names and Path(ref).name in PRETRAINED and not (Path(ref) / "config.json").is_file():
                file, depth = PRETRAINED[Path(ref).name]
                convert_to_directory(Path(checkpoints) / file, ref, depth, classes if classes.is_file() else None)
                print(f"converted {file} to {ref}")


def training_cost(outputs: dict, stages: dict) -> list[dict]:
    """What each training stage of the run cost (Trainer's train metrics: runtime, samples/s, epochs)."""
    rows = []
    for name, (kind, _) in stages.items():
        results = Path(outputs[name]) / TRAIN_RESULTS_FILE
        if results.is_file():
            rows.append({"stage": name, "kind": kind, **json.loads(results.read_text())})
    return rows


def ort_static_int8(onnx_dir: Path, out: Path, recipe_data, samples: int, seed: int) -> Path:
    """ResNet-56 quantized as ONNX Runtime alone does it: quantize_static with its defaults (QDQ, MinMax, per-tensor),
    calibrated on the training images hfcompress's static quantization draws (the same seeded subset)."""
    from onnxruntime.quantization import quantize_static
    from transformers import AutoImageProcessor

    from hfcompress.data import TaskData
    from hfcompress.quantization.config import PTQConfig
    from hfcompress.quantization.onnx_ptq import calibration_features, calibration_reader
    from hfcompress.quantization.tensorrt import onnx_input_names
    from hfcompress.utils.io import atomic_output_dir

    if (out / "model.onnx").is_file():
        return out
    graph = onnx_dir / "model.onnx"
    data = TaskData(recipe_data, splits=[recipe_data.train_split], seed=seed)
    features = calibration_features(data, AutoImageProcessor.from_pretrained(onnx_dir), PTQConfig(calibration_samples=samples), seed, onnx_input_names(graph))
    with atomic_output_dir(out, overwrite=True) as staging:
        quantize_static(str(graph), str(staging / "model.onnx"), calibration_reader(features, graph))
        for file in onnx_dir.glob("*.json"):  # config and image processor, so that the variant loads like the others
            (staging / file.name).write_bytes(file.read_bytes())
    return out


def pytorch_source(ref: str, stages: dict) -> str:
    """The PyTorch checkpoint an ONNX variant was made from (through export and quantize stages): its MACs are that model's."""
    while ref in stages and stages[ref][0] in ("export", "quantize"):
        ref = stages[ref][1].model
    return ref


def macs_per_image(path: Path, task) -> int:
    import torch

    from hfcompress.modeling import load_model

    # CIFAR images are 32x32; the processors keep that size
    return count_macs(load_model(str(path), task), {"pixel_values": torch.zeros(1, 3, 32, 32)})


def check_goals(rows: list[dict], headline: str) -> dict:
    by_ref = {r["ref"]: r for r in rows}
    by_role = {r["role"]: r for r in rows if r.get("role")}
    h, base, int8, small = by_ref.get(headline), by_role.get("baseline"), by_role.get(ORT_INT8), by_role.get("small")
    if not (h and base and int8 and small):
        return {}
    values = {
        "accuracy_points_below_baseline": 100 * (base["accuracy"] - h["accuracy"]),
        "fewer_macs_than_baseline": base["macs"] / h["macs"],
        "smaller_than_baseline": base["size_mb"] / h["size_mb"],
        "faster_b1_than_baseline": base["latency_ms_p50_b1"] / h["latency_ms_p50_b1"],
        "faster_b1_than_ort_int8": int8["latency_ms_p50_b1"] / h["latency_ms_p50_b1"],
        "accuracy_points_above_resnet20": 100 * (h["accuracy"] - small["accuracy"]),
        "latency_b1_vs_resnet20": h["latency_ms_p50_b1"] / small["latency_ms_p50_b1"],
    }
    return goals_met(headline, values, GOALS)


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        raw = apply_overrides(load_yaml(a.recipe), bench_overrides(a))
        if a.epochs is not None:
            for stage in raw["stages"]:
                if "training" in stage:
                    stage["training"] = {**stage["training"], "num_train_epochs": a.epochs}
        runnable = without_report_stages(raw)
        convert_pretrained(runnable, a.checkpoints)
        recipe = parse_recipe(runnable)
        outputs = run_recipe(recipe, resume=True)
        stages = {config.name: (kind, config) for kind, config in recipe.stages}
        paths = {ref: str(outputs[ref]) for ref, _ in VARIANTS if ref in outputs}
        skipped = {ref: "the recipe makes no stage of this name" for ref, _ in VARIANTS if ref not in outputs and ref != ORT_INT8}
        if "resnet56_onnx" in outputs:
            root = Path(recipe.config.output_dir) / "baselines" / "resnet56-ort-int8"
            paths[ORT_INT8] = str(ort_static_int8(Path(outputs["resnet56_onnx"]), root, recipe.config.data, a.calibration_samples, recipe.config.seed))
        else:
            skipped[ORT_INT8] = "the recipe makes no resnet56_onnx to quantize"
        variants = [(ref, label) for ref, label in VARIANTS if ref in paths]
        evaluation = {
            "stage": "evaluate", "name": BENCH_EVALUATION, "models": [paths[ref] for ref, _ in variants], "latency": True,
            "threads": a.threads, "latency_samples": a.latency_samples, "repeats": a.repeats, "warmup": a.warmup, "report": False,
        }
        outputs = run_recipe(parse_recipe({**runnable, "stages": [*runnable["stages"], evaluation]}), resume=True, force_stages=[BENCH_EVALUATION])
        results = json.loads((Path(outputs[BENCH_EVALUATION]) / EVALUATION_RESULTS_FILE).read_text())
    except HFCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    task = recipe.config.data.task
    rows = []
    for (ref, label), result in zip(variants, results):
        result = {k: v for k, v in result.items() if k != "name"}
        latency = result.pop("latency", None)
        macs = macs_per_image(Path(outputs[pytorch_source("resnet56_onnx" if ref == ORT_INT8 else ref, stages)]), task)
        rows.append(compression_row(label, result, latency, ref=ref, role=ROLES.get(ref), macs=macs))
    goals = check_goals(rows, a.headline)
    out = Path(a.output)
    command = command_line(__file__, argv)
    settings = {"threads": a.threads, "latency_samples": a.latency_samples, "repeats": a.repeats, "warmup": a.warmup,
                "train_limit": a.train_limit, "test_limit": a.test_limit, "epochs": a.epochs}
    notes = "\n".join(part for part in (
        goals_markdown(goals),
        "MACs: per 32x32 image, counted by torch.utils.flop_counter (convolutions and matrix products); an ONNX or int8 "
        "variant has the MACs of the PyTorch model it was exported from.",
        "Skipped variants: " + "; ".join(f"`{name}`: {reason}" for name, reason in skipped.items()) if skipped else "",
        f"Reproduce: `{command}`",
    ) if part)
    report = write_compression_report(
        rows, out.parent, title="CIFAR-10 ResNet-56: hfcompress against PyTorch and ONNX Runtime", file_stem=out.name, notes=notes,
        metadata={"goals": goals, "training_cost": training_cost(outputs, stages), "command": command, "recipe": repo_relative(a.recipe),
                  "baselines": BASELINES if ORT_INT8 in paths else None, "settings": settings, "skipped": skipped},
    )
    print_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
