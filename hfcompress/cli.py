"""``hfcompress`` command line: ``run`` a recipe, ``evaluate`` a model, write its ``card``, ``push`` it to the Hub."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Optional, Sequence

from .errors import HFCompressError


def _cmd_run(args) -> int:
    from .recipes import run_recipe

    outputs = run_recipe(args.recipe, args.overrides, resume=args.resume, overwrite=args.overwrite)
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return 0


def _cmd_evaluate(args) -> int:
    from .data import DataConfig, TaskData
    from .evaluation import evaluate_pytorch

    data = TaskData(
        DataConfig(
            path=args.data, name=args.data_config, task=args.task, eval_split=args.split, text_column=args.text_column,
            label_column=args.label_column, max_length=args.max_length, max_eval_samples=args.max_samples,
        ),
        splits=[args.split],
    )
    result = evaluate_pytorch(args.model, data, args.batch_size)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_card(args) -> int:
    from .hub import CardConfig, write_model_card

    cfg = CardConfig(
        repo_id=args.repo_id, model_name=args.model_name, teacher=args.teacher, base_model=args.base_model, license=args.license,
        dataset=args.dataset, dataset_config=args.dataset_config, dataset_split=args.dataset_split, language=args.language,
        tags=args.tag, onnx=args.onnx, report=args.report, template=args.template,
    )
    print(write_model_card(args.model_dir, args.output, cfg, overwrite=args.overwrite))
    return 0


def _add_card_parser(sub) -> None:
    from .hub import CardConfig

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(CardConfig)}
    card = sub.add_parser("card", help="Write the model card (README.md) of a compressed model.",
                          description="Render a model card from what hfcompress saved next to a model, validate its metadata and write it.")
    card.add_argument("model_dir", help="Model directory (config.json + weights, or .onnx files).")
    card.add_argument("--output", default=None,
                      help="Default MODEL_DIR/README.md; a path ending in .md writes only the card; any other path becomes a "
                           "release folder with the model, onnx/, the report and the card, ready for `hfcompress push`.")
    for name in ("repo_id", "model_name", "teacher", "base_model", "license", "dataset", "dataset_config", "dataset_split", "report", "template"):
        card.add_argument("--" + name.replace("_", "-"), default=None, help=helps[name])
    card.add_argument("--language", action="append", default=[], help=helps["language"] + " Repeat for several.")
    card.add_argument("--tag", action="append", default=[], help=helps["tags"] + " Repeat for several.")
    card.add_argument("--onnx", action="append", default=[], help=helps["onnx"] + " Repeat for several.")
    card.add_argument("--overwrite", action="store_true", help="Replace a README.md that hfcompress did not write.")
    card.set_defaults(fn=_cmd_card)


def _cmd_push(args) -> int:
    from .hub.push import PushConfig, plan_upload, push_to_hub

    cfg = PushConfig(
        repo_id=args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
        commit_message=args.commit_message, allow_patterns=args.allow_pattern or None, ignore_patterns=args.ignore_pattern,
        allow_no_card=args.allow_no_card,
    )
    print(("would upload " if args.dry_run else "uploading ") + plan_upload(args.dir, cfg).describe(cfg), flush=True)
    if args.dry_run:
        return 0
    result = push_to_hub(args.dir, cfg)
    print(f"pushed {len(result['files'])} files to {result['repo_id']}: {result['pr_url'] or result['commit_url']}")
    return 0


def _add_push_parser(sub) -> None:
    from .hub.push import PushConfig

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(PushConfig)}
    push = sub.add_parser("push", help="Upload a model folder (model, tokenizer, ONNX, report, card) to the Hub.",
                          description="Create the Hub repo if needed and upload the folder in one commit. The token comes from "
                                      "HF_TOKEN or the saved login and is never printed.")
    push.add_argument("dir", help="Folder to upload (a model directory, or a `hfcompress card --output` release folder).")
    push.add_argument("--repo-id", required=True, help=helps["repo_id"])
    push.add_argument("--private", action="store_true", help=helps["private"])
    push.add_argument("--revision", default=None, help=helps["revision"])
    push.add_argument("--create-pr", action="store_true", help=helps["create_pr"])
    push.add_argument("--commit-message", default=None, help=helps["commit_message"])
    push.add_argument("--allow-pattern", action="append", default=[], help=helps["allow_patterns"] + " Repeat for several.")
    push.add_argument("--ignore-pattern", action="append", default=[], help=helps["ignore_patterns"] + " Repeat for several.")
    push.add_argument("--allow-no-card", action="store_true", help=helps["allow_no_card"])
    push.add_argument("--dry-run", action="store_true", help="List the files that would be uploaded, with sizes; contact nothing.")
    push.set_defaults(fn=_cmd_push)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfcompress", description="Distil, prune, quantize, export and ship Transformers models.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks for errors in the input.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="Run a YAML recipe of stages.", description="Run a YAML recipe of stages.")
    run.add_argument("recipe", help="Path to the recipe YAML.")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.student.training.num_train_epochs=1")
    run.add_argument("--resume", action="store_true", help="Skip finished stages and continue training from the last checkpoint.")
    run.add_argument("--overwrite", action="store_true", help="Delete an existing output directory and start again.")
    run.set_defaults(fn=_cmd_run)

    ev = sub.add_parser("evaluate", help="Task metrics of a model on a dataset split.", description="Task metrics of a model on a dataset split.")
    ev.add_argument("model", help="Model directory or Hub id.")
    ev.add_argument("--data", required=True, help="Dataset: Hub id or local directory/file.")
    ev.add_argument("--data-config", default=None, help="Hub dataset config name (e.g. sst2 for glue).")
    ev.add_argument("--split", default="validation", help="Split to evaluate (SST-2 TSV: dev).")
    ev.add_argument("--task", default="text-classification", help="text-classification, token-classification or text-generation.")
    ev.add_argument("--text-column", default="sentence")
    ev.add_argument("--label-column", default="label")
    ev.add_argument("--max-length", type=int, default=128)
    ev.add_argument("--max-samples", type=int, default=None)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.set_defaults(fn=_cmd_evaluate)
    _add_card_parser(sub)
    _add_push_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except HFCompressError as e:
        if args.debug or os.environ.get("HFCOMPRESS_DEBUG"):
            raise
        print(f"hfcompress: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
