#!/usr/bin/env python
"""Distilled students against the same student trained on hard labels: dev accuracy, share of the teacher, and McNemar's test.

Every model is evaluated on the same evaluation split in one run; each distilled student is compared
with the hard-label baseline sentence by sentence (how many only one of the two gets right, exact
two-sided p-value) and checked against the goals of issue 2 (at least 98% of the teacher's accuracy,
at least 0.5 points above the baseline). Training settings are read from the recipe saved beside
each model (``hfcompress_recipe.yaml``).

    python scripts/bench_distillation.py --teacher outputs/sst2-minilm-full/teacher \\
        --baseline outputs/sst2-minilm-full/student_hard_labels \\
        --student "alpha 0.5, T 2=outputs/sst2-minilm-full/student" "alpha 0.1, T 4=outputs/sst2-minilm-kd-logits/student"
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.data import DataConfig, TaskData  # noqa: E402
from hfcompress.evaluation import classification_predictions, evaluate_model, paired_comparison  # noqa: E402
from hfcompress.utils.bench import add_data_args, add_output_arg, bench_parser, command_line, repo_relative  # noqa: E402
from hfcompress.utils.io import write_results  # noqa: E402

SETTINGS = ("num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size", "alpha", "temperature",
            "hidden_distill_weight", "attention_distill_weight", "teacher_cache_dir")


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--teacher", required=True, help="Teacher: directory or Hub id.")
    p.add_argument("--baseline", required=True, help="The same student trained on hard labels only: directory or Hub id.")
    p.add_argument("--student", nargs="+", required=True, metavar="LABEL=PATH", help="Distilled students, each LABEL=directory (or Hub id).")
    add_data_args(p)
    p.add_argument("--eval-split", default="dev")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--min-share-of-teacher", type=float, default=0.98, help="Goal: student accuracy / teacher accuracy.")
    p.add_argument("--min-gain-points", type=float, default=0.5, help="Goal: student accuracy minus baseline accuracy, in points.")
    add_output_arg(p, "benchmarks/results/distillation_sst2")
    args = p.parse_args(argv)
    for spec in args.student:
        if "=" not in spec:
            p.error(f"--student '{spec}' must be LABEL=PATH, e.g. 'alpha 0.1, T 4=outputs/sst2-minilm-kd-logits/student'")
    return args


def training_settings(model_dir: str) -> dict:
    """The seed and training settings of the recipe stage that wrote ``model_dir`` (empty if it has no saved recipe)."""
    path = Path(model_dir) / "hfcompress_recipe.yaml"
    if not path.is_file():
        return {}
    recipe = yaml.safe_load(path.read_text())
    stage = next((s for s in recipe.get("stages", []) if s.get("name") == Path(model_dir).name), None)
    if stage is None:
        return {}
    training = stage.get("training", {})
    return {"recipe": recipe.get("name"), "stage": stage.get("stage"), "seed": recipe.get("seed"),
            **({"student_layers": stage["student_layers"]} if "student_layers" in stage else {}),
            **({"layers": stage["layers"]} if "layers" in stage else {}),
            **{k: training[k] for k in SETTINGS if k in training}}


def markdown(result: dict) -> str:
    teacher, baseline = result["teacher"], result["baseline"]
    lines = [
        "# Distillation on SST-2: distilled students against the same student trained on hard labels\n",
        f"{result['eval_examples']} {result['eval_split']} sentences; one sentence is {100 / result['eval_examples']:.2f} points. "
        "'only KD / only HL right' counts the sentences only the distilled student / only the hard-label student classifies correctly; "
        "p is McNemar's exact two-sided test on those counts.\n",
        "| model | training | accuracy | % of teacher | vs hard labels | only KD / only HL right | p | agrees with teacher |",
        "|---|---|---|---|---|---|---|---|",
        f"| teacher | {describe(teacher['settings'])} | {100 * teacher['accuracy']:.2f} | 100.0 | | | | |",
        f"| hard labels only (baseline) | {describe(baseline['settings'])} | {100 * baseline['accuracy']:.2f} | "
        f"{100 * baseline['share_of_teacher']:.1f} | | | | {100 * baseline['agreement_with_teacher']:.1f}% |",
    ]
    for s in result["students"]:
        c = s["comparison"]
        lines.append(
            f"| {s['label']} | {describe(s['settings'])} | {100 * s['accuracy']:.2f} | {100 * s['share_of_teacher']:.1f} | "
            f"{c['accuracy_difference_points']:+.2f} | {c['only_a_correct']} / {c['only_b_correct']} | {c['p_value']:.2f} | {100 * c['agreement_a']:.1f}% |"
        )
    lines += ["", "Goals (issue 2):", ""]
    for s in result["students"]:
        g = s["goals"]
        lines.append(f"- {s['label']}: {100 * s['share_of_teacher']:.1f}% of the teacher (goal ≥{100 * result['goals']['min_share_of_teacher']:.0f}%): "
                     f"{'met' if g['share_of_teacher'] else '**not met**'}; {s['comparison']['accuracy_difference_points']:+.2f} points over hard labels "
                     f"(goal ≥+{result['goals']['min_gain_points']}): {'met' if g['gain_over_hard_labels'] else '**not met**'}.")
    lines += ["", "Reproduce:", "", f"    {result['command']}", ""]
    return "\n".join(lines)


def describe(settings: dict) -> str:
    if not settings:
        return ""
    parts = [f"{settings.get('num_train_epochs', '?')} epochs", f"lr {settings['learning_rate']}" if "learning_rate" in settings else "", f"seed {settings.get('seed')}"]
    if settings.get("stage") == "distill":
        parts += [f"alpha {settings.get('alpha', 0.5)}", f"T {settings.get('temperature', 2.0)}"]
        if settings.get("hidden_distill_weight"):
            parts.append(f"hidden-state MSE x{settings['hidden_distill_weight']}")
    layers = settings.get("student_layers") or settings.get("layers")
    if layers:
        parts.append(f"teacher layers {layers}")
    return ", ".join(p for p in parts if p)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = command_line(__file__, argv)
    data = TaskData(DataConfig(path=args.data, name=args.data_config, eval_split=args.eval_split, max_length=args.max_length), splits=[args.eval_split])

    def measure(path: str) -> tuple[dict, object]:
        evaluation = evaluate_model(path, data, batch_size=args.batch_size)
        predictions, labels = classification_predictions(path, data, batch_size=args.batch_size)
        return {"path": repo_relative(path), "accuracy": evaluation["accuracy"], "f1": evaluation.get("f1"), "num_parameters": evaluation["num_parameters"],
                "size_mb": evaluation["size_mb"], "settings": training_settings(path)}, (predictions, labels)

    teacher, (teacher_predictions, labels) = measure(args.teacher)
    baseline, (baseline_predictions, _) = measure(args.baseline)
    baseline["share_of_teacher"] = baseline["accuracy"] / teacher["accuracy"]
    baseline["agreement_with_teacher"] = float((baseline_predictions == teacher_predictions).mean())
    students = []
    for spec in args.student:
        label, path = spec.split("=", 1)
        row, (predictions, _) = measure(path)
        row["label"] = label
        row["share_of_teacher"] = row["accuracy"] / teacher["accuracy"]
        row["comparison"] = paired_comparison(predictions, baseline_predictions, labels, reference=teacher_predictions)
        row["goals"] = {"share_of_teacher": row["share_of_teacher"] >= args.min_share_of_teacher,
                        "gain_over_hard_labels": row["comparison"]["accuracy_difference_points"] >= args.min_gain_points}
        students.append(row)
    result = {"eval_split": args.eval_split, "eval_examples": int(len(labels)), "teacher": teacher, "baseline": baseline, "students": students,
              "goals": {"min_share_of_teacher": args.min_share_of_teacher, "min_gain_points": args.min_gain_points}, "command": command}
    write_results(args.output, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
