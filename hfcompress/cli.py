"""``hfcompress`` command line: ``run`` a recipe, ``evaluate`` a model."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .errors import HFCompressError


def _cmd_run(args) -> int:
    from .recipes import run_recipe

    outputs = run_recipe(args.recipe, args.overrides, resume=args.resume, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfcompress", description="Distil, prune, quantize, export and ship Transformers models.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks for errors in the input.")
    # also accepted after the command (hfcompress run recipe.yaml --debug); SUPPRESS keeps the top-level value
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="Show full tracebacks for errors in the input.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[debug], help="Run a YAML recipe of stages.", description="Run a YAML recipe of stages.")
    run.add_argument("recipe", help="Path to the recipe YAML.")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.student.training.num_train_epochs=1")
    run.add_argument("--resume", action="store_true", help="Skip finished stages and continue training from the last checkpoint.")
    run.add_argument("--overwrite", action="store_true", help="Delete an existing output directory and start again.")
    run.add_argument("--trust-remote-code", action="store_true",
                     help="Allow models whose code lives in their repository (runs that code): turns it on for every stage.")
    run.set_defaults(fn=_cmd_run)

    ev = sub.add_parser("evaluate", parents=[debug], help="Task metrics of a model on a dataset split.", description="Task metrics of a model on a dataset split.")
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
    except KeyboardInterrupt:
        hint = " (continue it with --resume)" if args.command == "run" else ""
        print(f"hfcompress: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
