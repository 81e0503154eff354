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


def _field_help(cls, name: str) -> str:
    return cls.__dataclass_fields__[name].metadata["help"]


def _cmd_factorize(args) -> int:
    from .lowrank import LowRankConfig, factorize_checkpoint

    config = LowRankConfig(
        energy=args.energy, compression=args.compression, min_rank=args.min_rank, rank_multiple=args.rank_multiple,
        target_modules=args.target_modules, exclude_modules=args.exclude_modules,
    )
    report = factorize_checkpoint(args.model, args.output, config, task=args.task, overwrite=args.overwrite)
    print(
        f"factorised {report['factorized_layers']} of {len(report['layers'])} layers: {report['num_parameters_before']:,} -> "
        f"{report['num_parameters_after']:,} parameters; saved to {args.output}"
    )
    return 0


def _cmd_trim_vocab(args) -> int:
    from .data import DataConfig, TaskData
    from .vocab import VocabTrimConfig, trim_checkpoint

    config = VocabTrimConfig(min_frequency=args.min_frequency, keep_single_characters=not args.no_single_characters, keep_tokens=args.keep_tokens)
    data = TaskData(
        DataConfig(path=args.data, name=args.data_config, task=args.task, train_split=args.split, text_column=args.text_column,
                   text_pair_column=args.text_pair_column, label_column=args.label_column),
        splits=[args.split],
    )
    report = trim_checkpoint(args.model, args.output, data, config, task=args.task, overwrite=args.overwrite)
    print(
        f"vocabulary {report['vocab_size_before']:,} -> {report['vocab_size_after']:,} tokens, parameters "
        f"{report['num_parameters_before']:,} -> {report['num_parameters_after']:,}; saved to {args.output}"
    )
    return 0


def _add_size_reduction_commands(sub) -> None:
    from .lowrank.config import DEFAULT_EXCLUDE, LowRankConfig
    from .vocab.config import VocabTrimConfig

    fz = sub.add_parser(
        "factorize", help="Low-rank factorisation of a model's Linear layers (truncated SVD).",
        description="Factorise a checkpoint's Linear layers by truncated SVD and save it (reloads with the Auto classes after import hfcompress).",
    )
    fz.add_argument("model", help="Model directory or Hub id.")
    fz.add_argument("--output", required=True, help="Directory for the factorised model.")
    rank = fz.add_mutually_exclusive_group(required=True)
    rank.add_argument("--energy", type=float, help=_field_help(LowRankConfig, "energy"))
    rank.add_argument("--compression", type=float, help=_field_help(LowRankConfig, "compression"))
    fz.add_argument("--min-rank", type=int, default=8, help=_field_help(LowRankConfig, "min_rank"))
    fz.add_argument("--rank-multiple", type=int, default=8, help=_field_help(LowRankConfig, "rank_multiple"))
    fz.add_argument("--target-modules", nargs="+", default=None, help=_field_help(LowRankConfig, "target_modules"))
    fz.add_argument("--exclude-modules", nargs="*", default=list(DEFAULT_EXCLUDE), help=_field_help(LowRankConfig, "exclude_modules"))
    fz.add_argument("--task", default=None, help="Task; default: inferred from the checkpoint's architecture.")
    fz.add_argument("--overwrite", action="store_true", help="Replace an existing output directory.")
    fz.set_defaults(fn=_cmd_factorize)

    tv = sub.add_parser(
        "trim-vocab", help="Keep only the vocabulary a dataset uses (embeddings and tokenizer rebuilt).",
        description="Trim a checkpoint's vocabulary to the tokens of a dataset split, plus special and single-character tokens.",
    )
    tv.add_argument("model", help="Model directory or Hub id (with a fast WordPiece or BPE tokenizer).")
    tv.add_argument("--output", required=True, help="Directory for the trimmed model and tokenizer.")
    tv.add_argument("--data", required=True, help="Dataset whose tokens are kept: Hub id or local directory/file.")
    tv.add_argument("--data-config", default=None, help="Hub dataset config name (e.g. sst2 for glue).")
    tv.add_argument("--split", default="train", help="Split whose tokens are kept.")
    tv.add_argument("--task", default="text-classification", help="text-classification, token-classification or text-generation.")
    tv.add_argument("--text-column", default="sentence")
    tv.add_argument("--text-pair-column", default=None)
    tv.add_argument("--label-column", default="label")
    tv.add_argument("--min-frequency", type=int, default=1, help=_field_help(VocabTrimConfig, "min_frequency"))
    tv.add_argument("--no-single-characters", action="store_true", help="Do not keep every single-character token (some words may become [UNK]).")
    tv.add_argument("--keep-tokens", nargs="*", default=[], help=_field_help(VocabTrimConfig, "keep_tokens"))
    tv.add_argument("--overwrite", action="store_true", help="Replace an existing output directory.")
    tv.set_defaults(fn=_cmd_trim_vocab)


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
    _add_size_reduction_commands(sub)
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
