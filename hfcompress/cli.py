"""``hfcompress`` command line: ``run`` a recipe, ``search`` its settings, ``evaluate`` a model, ``export`` it to ONNX, write its ``card``, ``push`` it to the Hub, ``serve`` it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from .artifacts import BEST_RECIPE_FILE, PARITY_FILE, SEARCH_RESULTS_FILE, SEARCH_STORAGE_FILE
from .errors import ConfigError, HFCompressError
from .tasks import DEFAULT_TASK, task_names


def _cmd_run(args) -> int:
    from .recipes import run_recipe

    outputs = run_recipe(
        args.recipe, args.overrides, resume=args.resume, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code,
        force_stages=args.force_stage,
    )
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return 0


def _cmd_evaluate(args) -> int:
    from .data import DataConfig, TaskData
    from .evaluation import evaluate_model, evaluation_texts, measure_latency
    from .evaluation.runtime import resolve_backend
    from .modeling import check_max_length, check_model_files, load_config
    from .utils.io import atomic_write_json

    if args.output and os.path.isdir(args.output):
        raise ConfigError(f"--output {args.output} is a directory: give the path of a JSON file to write")
    backend = resolve_backend(args.model, args.backend, args.onnx_file)  # a wrong backend fails before the data loads
    if os.path.isdir(args.model):  # weights, graphs and tokenizer read before the data loads
        check_model_files(Path(args.model), needs_tokenizer=True)
    check_max_length(load_config(args.model), args.max_length, args.model, "--max-length")
    data = TaskData(
        DataConfig(
            path=args.data, name=args.data_config, task=args.task, eval_split=args.split, text_column=args.text_column,
            text_pair_column=args.text_pair_column, image_column=args.image_column, label_column=args.label_column,
            max_length=args.max_length, max_eval_samples=args.max_samples,
        ),
        splits=[args.split],
    )
    result = evaluate_model(args.model, data, args.batch_size, backend=backend, onnx_file=args.onnx_file)
    if args.latency:
        texts = evaluation_texts(data, args.latency_samples)
        result["latency"] = measure_latency(
            args.model, args.model, texts, args.latency_batch_sizes, args.threads, backend=backend, warmup=args.warmup,
            repeats=args.repeats, onnx_file=args.onnx_file, max_length=args.max_length,
        )
    if args.output:
        atomic_write_json(args.output, result)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_export(args) -> int:
    from .export import export_onnx
    from .utils.io import read_utf8

    triton = _triton_config(args) if args.triton else None  # bad Triton options fail before the export
    texts = None
    if args.parity_texts:
        try:
            texts = [line.strip() for line in read_utf8(args.parity_texts).splitlines() if line.strip()]
        except OSError as e:
            raise ConfigError(f"--parity-texts {args.parity_texts} cannot be read ({e.strerror}): give a text file, one sentence a line") from None
        if not texts:
            raise ConfigError(f"--parity-texts {args.parity_texts} has no sentences: give a text file, one sentence a line")
    path = export_onnx(
        args.model, args.output, args.task, args.opset, parity_texts=texts, overwrite=args.overwrite, backend=args.backend,
        optimize=args.optimize, atol=args.atol, batch_sizes=args.batch_sizes, sequence_lengths=args.sequence_lengths,
    )
    parity = json.loads((path.parent / PARITY_FILE).read_text())
    for name, result in parity["files"].items():
        print(f"{path.parent / name} ({parity['backend']} exporter): parity max abs diff {result['max_abs_diff']:.3g} (atol {result['tolerance']:g}) over {len(result['checks'])} shapes")
    if triton is not None:
        from .serving.triton import write_triton_repository

        model_dir = write_triton_repository(path.parent, args.triton, triton, overwrite=args.overwrite)
        print(f"Triton model repository {args.triton}: model {model_dir.name} (config.pbtxt, 1/model.onnx, tokenizer/, README.md)")
    return 0


class _LazySubParsers(argparse._SubParsersAction):
    """Subcommands whose arguments are added only when the subcommand is used.

    Some arguments take their help from config dataclasses in modules that import torch or
    huggingface_hub; filling them in on use keeps ``hfcompress --help`` (and the other
    subcommands) from importing those.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: dict[str, Callable[[argparse.ArgumentParser], None]] = {}
        self.common_parents: list[argparse.ArgumentParser] = []  # options every subcommand takes (--debug)

    def add_parser(self, name, **kwargs):
        kwargs.setdefault("parents", self.common_parents)
        return super().add_parser(name, **kwargs)

    def add_lazy_parser(self, name: str, fill: Callable[[argparse.ArgumentParser], None], **kwargs) -> argparse.ArgumentParser:
        """Add subcommand ``name`` now (it shows in ``--help``); ``fill(parser)`` adds its arguments when it is used."""
        parser = self.add_parser(name, **kwargs)
        self._pending[name] = fill
        return parser

    def fill(self, name: str) -> argparse.ArgumentParser:
        """The parser of subcommand ``name``, with its arguments."""
        fill = self._pending.pop(name, None)
        if fill is not None:
            fill(self._name_parser_map[name])
        return self._name_parser_map[name]

    def __call__(self, parser, namespace, values, option_string=None):
        if values and values[0] in self._name_parser_map:
            self.fill(values[0])
        super().__call__(parser, namespace, values, option_string)


def _at_least(low: float, kind: type = int) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` that is at least ``low`` (a count, a size, threads), refused where it is parsed."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not value >= low:  # nan too
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse


def _field_help(cls, name: str) -> str:
    return cls.__dataclass_fields__[name].metadata["help"]


def _cmd_factorize(args) -> int:
    from .lowrank import LowRankConfig, factorize_checkpoint

    # a list of names or one regex (argparse makes them exclusive); neither given keeps LowRankConfig's default
    patterns = {}
    if args.target_modules is not None or args.target_regex is not None:
        patterns["target_modules"] = args.target_modules or args.target_regex
    if args.exclude_modules is not None or args.exclude_regex is not None:
        patterns["exclude_modules"] = args.exclude_regex if args.exclude_modules is None else args.exclude_modules
    config = LowRankConfig(
        energy=args.energy, compression=args.compression, min_rank=args.min_rank, rank_multiple=args.rank_multiple, **patterns,
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


def _add_size_reduction_commands(sub: _LazySubParsers) -> None:
    sub.add_lazy_parser(
        "factorize", _fill_factorize, help="Low-rank factorisation of a model's Linear layers (truncated SVD).",
        description="Factorise a checkpoint's Linear layers by truncated SVD and save it (reloads with the Auto classes after import hfcompress).",
    )
    sub.add_lazy_parser(
        "trim-vocab", _fill_trim_vocab, help="Keep only the vocabulary a dataset uses (embeddings and tokenizer rebuilt).",
        description="Trim a checkpoint's vocabulary to the tokens of a dataset split, plus special and single-character tokens.",
    )


def _fill_factorize(fz: argparse.ArgumentParser) -> None:
    from .lowrank.config import DEFAULT_EXCLUDE, LowRankConfig

    fz.add_argument("model", help="Model directory or Hub id.")
    fz.add_argument("--output", required=True, help="Directory for the factorised model.")
    rank = fz.add_mutually_exclusive_group(required=True)
    rank.add_argument("--energy", type=float, help=_field_help(LowRankConfig, "energy"))
    rank.add_argument("--compression", type=float, help=_field_help(LowRankConfig, "compression"))
    fz.add_argument("--min-rank", type=int, default=8, help=_field_help(LowRankConfig, "min_rank"))
    fz.add_argument("--rank-multiple", type=int, default=8, help=_field_help(LowRankConfig, "rank_multiple"))
    target = fz.add_mutually_exclusive_group()
    target.add_argument("--target-modules", nargs="+", metavar="NAME", help=_field_help(LowRankConfig, "target_modules"))
    target.add_argument("--target-regex", metavar="REGEX", help="target_modules as one regex matched against the full module name.")
    exclude = fz.add_mutually_exclusive_group()
    exclude.add_argument("--exclude-modules", nargs="*", metavar="NAME", help=_field_help(LowRankConfig, "exclude_modules") + " No NAME: exclude nothing.")
    exclude.add_argument("--exclude-regex", metavar="REGEX", help=f"exclude_modules as one regex; default: {DEFAULT_EXCLUDE}")
    fz.add_argument("--task", default=None, choices=task_names(), help="The model's task; default: inferred from its architecture.")
    fz.add_argument("--overwrite", action="store_true", help="Replace an existing output directory.")
    fz.set_defaults(fn=_cmd_factorize)


def _fill_trim_vocab(tv: argparse.ArgumentParser) -> None:
    from .vocab.config import VocabTrimConfig

    tv.add_argument("model", help="Model directory or Hub id (with a fast WordPiece or BPE tokenizer).")
    tv.add_argument("--output", required=True, help="Directory for the trimmed model and tokenizer.")
    tv.add_argument("--data", required=True, help="Dataset whose tokens are kept: Hub id or local directory/file.")
    tv.add_argument("--data-config", default=None, help="Hub dataset config name (e.g. sst2 for glue).")
    tv.add_argument("--split", default="train", help="Split whose tokens are kept.")
    tv.add_argument("--task", default=DEFAULT_TASK, choices=task_names(), help=f"The data's task (default {DEFAULT_TASK}).")
    tv.add_argument("--text-column", default="sentence")
    tv.add_argument("--text-pair-column", default=None)
    tv.add_argument("--label-column", default="label")
    tv.add_argument("--min-frequency", type=int, default=1, help=_field_help(VocabTrimConfig, "min_frequency"))
    tv.add_argument("--no-single-characters", action="store_true", help="Do not keep every single-character token (some words may become [UNK]).")
    tv.add_argument("--keep-tokens", nargs="*", default=[], help=_field_help(VocabTrimConfig, "keep_tokens"))
    tv.add_argument("--overwrite", action="store_true", help="Replace an existing output directory.")
    tv.set_defaults(fn=_cmd_trim_vocab)


def _cmd_search(args) -> int:
    from .search import run_search

    result = run_search(
        args.recipe, args.output, budget=args.budget, tolerance=args.tolerance, trials=args.trials, space_path=args.space,
        storage=args.storage, study_name=args.study_name, seed=args.seed, threads=args.threads, latency_samples=args.latency_samples,
    )
    print(result["budget_sentence"])
    if result["gate"]:
        print(f"accuracy gate against {result['gate']['reference']}: {result['gate']['verdict']}")
    print(f"{len(result['trials'])} trials, {result['cpu_seconds']:.0f} CPU seconds; " + ", ".join(f"{k}: {v}" for k, v in result["paths"].items()))
    return 0  # an unmet budget is a result (the closest point, said plainly), not an error: as Intel Neural Compressor's tuning


def _add_search_parser(sub: _LazySubParsers) -> None:
    sub.add_lazy_parser(
        "search", _fill_search, help="Search a recipe's settings for the best metric under a latency/size budget (Optuna).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""Run the recipe many times with settings sampled from its search space (Optuna, multi-objective: the task's
metric up, p50 latency at batch 1 on this machine and size on disk down), and write OUTPUT/{SEARCH_RESULTS_FILE}, .md and .png
(trials, Pareto front, total CPU seconds, the chosen point and its accuracy gate) and OUTPUT/{BEST_RECIPE_FILE},
which `hfcompress run` reproduces.

The space is the recipe's `search:` block or a YAML file given with --space:
  search:
    params:                                   # recipe paths, as `hfcompress run` overrides take them
      stages.student.training.temperature: {{type: float, low: 1, high: 8}}
      stages.student.student_layers: {{type: categorical, choices: [[0, 2, 4], [0, 3, 5]]}}
    proxy:                                    # optional: a cheap first round; only its Pareto front is trained in full
      stages.student.training.max_steps: 50
      data.max_eval_samples: 200
    model: student        # optional: the stage scored (default: the last one that writes a model)
    reference: teacher    # optional: the gate's reference (default: the first other model an evaluate stage lists)

Within the budget, the fastest point the gate calls within --tolerance of the reference is chosen, else the
most accurate. A budget no trial meets ends with the closest point and a sentence saying so, and exit status 0.

Interrupted searches resume: run the same command again (finished trials are kept; a killed trial is retried
once its heartbeat is older than a minute). Several workers share one search: start the command in several
processes, or on several machines with a database URL, with the same --storage and --study-name.""",
    )


def _fill_search(search: argparse.ArgumentParser) -> None:
    search.add_argument("recipe", help="Recipe YAML whose settings are searched.")
    search.add_argument("--output", required=True, help=f"Directory for {SEARCH_RESULTS_FILE} (.md, .png), {BEST_RECIPE_FILE}, {SEARCH_STORAGE_FILE} and trials/.")
    search.add_argument("--space", default=None, help="Search space YAML (default: the recipe's search: block).")
    search.add_argument("--budget", default=None, help="Limits of the chosen point, e.g. latency_ms=5,size_mb=20 (keys: latency_ms, size_mb).")
    search.add_argument("--tolerance", type=_at_least(0, float), default=0.5,
                        help="Non-inferiority margin in points: the gate says 'within' only when the 95%% bootstrap interval of "
                             "the difference to the reference lies above -TOLERANCE (default 0.5).")
    search.add_argument("--trials", type=_at_least(1), default=10, help="Finished trials the study should hold, over every worker and resume (default 10); with a proxy "
                             "round, its trials (the front's settings are then trained in full).")
    search.add_argument("--storage", default=None,
                        help=f"Optuna RDB storage URL shared by the workers (default sqlite:///OUTPUT/{SEARCH_STORAGE_FILE}; postgresql://... for several machines).")
    search.add_argument("--study-name", default=None, help="Study name in the storage (default: the recipe's name).")
    search.add_argument("--seed", type=int, default=None, help="Sampler seed; give each worker of one study a different one (default: random).")
    search.add_argument("--threads", type=_at_least(1), default=2, help="Intra-op threads while timing each trial's model.")
    search.add_argument("--latency-samples", type=_at_least(1), default=64, help="Evaluation inputs each trial's batch-1 latency is timed on.")
    search.set_defaults(fn=_cmd_search)


def _cmd_convert_gguf(args) -> int:
    from .models.gguf import convert_gguf

    print(f"hfcompress: wrote {convert_gguf(args.gguf_file, args.output_dir, overwrite=args.overwrite)}")
    return 0


def _add_convert_gguf_parser(sub: _LazySubParsers) -> None:
    cg = sub.add_parser(
        "convert-gguf", help="Convert a llama.cpp GGUF model to a transformers checkpoint (float32 safetensors + tokenizer).",
        description="Load a GGUF file with transformers (dequantized to float32) and save model, tokenizer and generation config, "
        "so that distillation, export and quantization can start from it. The architecture must be one transformers reads from GGUF.",
    )
    cg.add_argument("gguf_file", help="The .gguf file.")
    cg.add_argument("output_dir", help="Directory to write (appears complete or not at all).")
    cg.add_argument("--overwrite", action="store_true", help="Replace an existing output directory.")
    cg.set_defaults(fn=_cmd_convert_gguf)


def _cmd_card(args) -> int:
    from .hub import CardConfig, write_model_card
    from .modeling import check_model_files
    from .utils.disk import check_free_space, files_bytes

    check_model_files(Path(args.model_dir), needs_tokenizer=False)  # weight headers and graphs, before the card reads them

    if args.output and not args.output.endswith(".md"):  # a release folder: copies of the model and its ONNX files
        check_free_space(args.output, sum(files_bytes(p) for p in [args.model_dir, *args.onnx]), f"the release folder {args.output}")

    cfg = CardConfig(
        repo_id=args.repo_id, model_name=args.model_name, teacher=args.teacher, base_model=args.base_model, license=args.license,
        dataset=args.dataset, dataset_config=args.dataset_config, dataset_split=args.dataset_split, language=args.language,
        tags=args.tag, onnx=args.onnx, report=args.report, template=args.template,
    )
    print(write_model_card(args.model_dir, args.output, cfg, overwrite=args.overwrite))
    return 0


def _add_card_parser(sub: _LazySubParsers) -> None:
    sub.add_lazy_parser("card", _fill_card, help="Write the model card (README.md) of a compressed model.",
                        description="Render a model card from what hfcompress saved next to a model, validate its metadata and write it.")


def _fill_card(card: argparse.ArgumentParser) -> None:
    from .hub import CardConfig

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(CardConfig)}
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


def _add_push_parser(sub: _LazySubParsers) -> None:
    sub.add_lazy_parser("push", _fill_push, help="Upload a model folder (model, tokenizer, ONNX, report, card) to the Hub.",
                        description="Create the Hub repo if needed and upload the folder in one commit. The token comes from "
                                    "HF_TOKEN or the saved login and is never printed.")


def _fill_push(push: argparse.ArgumentParser) -> None:
    from .hub.push import PushConfig

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(PushConfig)}
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


TRITON_OPTIONS = ("model_name", "max_batch_size", "preferred_batch_sizes", "max_queue_delay_us", "instances", "threads")  # TritonConfig fields


def _add_triton_arguments(ex: argparse.ArgumentParser) -> None:
    from .serving.triton import TritonConfig

    triton = ex.add_argument_group("Triton Inference Server", "Also write the export as a model of a Triton model repository.")
    triton.add_argument("--triton", metavar="REPO_DIR", default=None, help="Write REPO_DIR/<name>/config.pbtxt and 1/model.onnx, with the tokenizer and a README on tokenization.")
    defaults = TritonConfig()
    for name in TRITON_OPTIONS:
        kind = {"model_name": str, "preferred_batch_sizes": int}.get(name, int)
        triton.add_argument(
            "--triton-" + name.replace("_", "-"), type=kind, nargs="+" if name == "preferred_batch_sizes" else None, metavar=name.split("_")[-1].upper(),
            default=argparse.SUPPRESS, help=_field_help(TritonConfig, name) + ("" if getattr(defaults, name) is None else f" (default: {getattr(defaults, name)})"),
        )


def _triton_config(args):
    from .serving.triton import TritonConfig

    return TritonConfig(**{name: getattr(args, "triton_" + name) for name in TRITON_OPTIONS if hasattr(args, "triton_" + name)})


def _cmd_serve(args) -> int:
    from .modeling import check_model_files, check_model_path
    from .serving.app import serve
    from .serving.config import ServeConfig

    config = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    check_model_path(args.model)  # a broken model fails here, before the port is bound or a worker starts
    if os.path.isdir(args.model):
        check_model_files(Path(args.model), needs_tokenizer=True)
    if args.ray_replicas is not None:
        from .serving.ray_serve import serve_with_ray

        return serve_with_ray(args, config)
    serve(args.model, config)
    return 0


def _add_serve_parser(sub: _LazySubParsers) -> None:
    sub.add_lazy_parser(
        "serve", _fill_serve, help="Serve a model over HTTP: batched /predict, /metadata, /metrics and a page to try it.",
        description="Serve an exported ONNX directory or a safetensors checkpoint with FastAPI on uvicorn: POST /predict takes "
                    "Hugging Face inference requests ({\"inputs\": ...}) and runs them in dynamic batches; GET / is a page to try the "
                    "model, /docs the API. Needs the serve extra.",
    )


def _fill_serve(serve: argparse.ArgumentParser) -> None:
    from .serving.config import LONG_INPUT_POLICIES, ServeConfig
    from .serving.ray_serve import add_ray_arguments

    serve.add_argument("model", help="Exported ONNX directory (hfcompress export), safetensors checkpoint directory, or Hub id.")
    choices = {"backend": ["auto", "pytorch", "onnx"], "long_input": list(LONG_INPUT_POLICIES)}
    for f in dataclasses.fields(ServeConfig):
        option, help_text = "--" + f.name.replace("_", "-"), f.metadata["help"] + ("" if f.default is None else f" Default: {f.default}.")
        if str(f.type) == "bool":  # --access-log / --no-access-log
            serve.add_argument(option, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        kind = {"Optional[int]": int, "int": int, "float": float}.get(str(f.type), str)
        serve.add_argument(option, type=kind, default=f.default, choices=choices.get(f.name), help=help_text)
    add_ray_arguments(serve)
    serve.set_defaults(fn=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfcompress", description="Distil, prune, quantize, export and ship Transformers models.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks for errors in the input.")
    # also accepted after the command (hfcompress run recipe.yaml --debug); SUPPRESS keeps the top-level value
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="Show full tracebacks for errors in the input.")
    sub = parser.add_subparsers(dest="command", required=True, action=_LazySubParsers)
    sub.common_parents = [debug]

    run = sub.add_parser("run", help="Run a YAML recipe of stages.", description="Run a YAML recipe of stages.")
    run.add_argument("recipe", help="Path to the recipe YAML.")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.student.training.num_train_epochs=1")
    run.add_argument("--resume", action="store_true", help="Skip finished stages and continue training from the last checkpoint.")
    run.add_argument("--overwrite", action="store_true", help="Delete an existing output directory and start again.")
    run.add_argument(
        "--force-stage", action="append", default=[], metavar="NAME",
        help="With --resume: run stage NAME again from scratch (its checkpoints discarded), and every later stage that reads its output. Repeatable.",
    )
    run.add_argument("--trust-remote-code", action="store_true",
                     help="Allow models whose code lives in their repository (runs that code): turns it on for every stage.")
    run.set_defaults(fn=_cmd_run)

    ev = sub.add_parser(
        "evaluate", help="Task metrics, size and optionally latency of a PyTorch checkpoint or an ONNX model.",
        description="Task metrics, size, sparsity and optionally latency of a PyTorch checkpoint or an exported ONNX directory.",
    )
    ev.add_argument("model", help="Checkpoint directory, Hub id, or a directory with an .onnx model (e.g. from hfcompress export).")
    ev.add_argument("--data", required=True, help="Dataset: Hub id or local directory/file.")
    ev.add_argument("--data-config", default=None, help="Hub dataset config name (e.g. sst2 for glue).")
    ev.add_argument("--split", default="validation", help="Split to evaluate (SST-2 TSV: dev).")
    ev.add_argument("--task", default=DEFAULT_TASK, choices=task_names(), help=f"The data's task (default {DEFAULT_TASK}).")
    ev.add_argument("--text-column", default="sentence", help="Column with the text.")
    ev.add_argument("--text-pair-column", default=None, help="Column with the second text of sentence-pair tasks (e.g. hypothesis for MNLI); default: none.")
    ev.add_argument("--image-column", default=None, help="Column with the images of image tasks; default: 'img' or 'image', whichever the data has.")
    ev.add_argument("--label-column", default="label", help="Column with the labels.")
    ev.add_argument("--max-length", type=_at_least(1), default=128, help="Truncate inputs to this many tokens.")
    ev.add_argument("--max-samples", type=_at_least(1), default=None, help="Evaluate the first N examples only.")
    ev.add_argument("--batch-size", type=_at_least(1), default=64, help="Batch size for the task metrics.")
    ev.add_argument("--backend", default="auto", choices=["auto", "pytorch", "onnx"], help="Runtime; auto: ONNX Runtime when the directory has an .onnx file.")
    ev.add_argument("--onnx-file", default=None, help="ONNX file in the model directory (default model.onnx), e.g. model_optimized.onnx.")
    ev.add_argument("--latency", action="store_true", help="Also measure p50/p95 latency and throughput on inputs of the split (sentences or images).")
    ev.add_argument("--latency-batch-sizes", type=_at_least(1), nargs="+", default=[1, 32], help="Batch sizes to time.")
    ev.add_argument("--latency-samples", type=_at_least(1), default=256, help="Inputs of the split (sentences or images) that make the latency batches.")
    ev.add_argument("--threads", type=_at_least(1), default=2, help="Intra-op threads while timing.")
    ev.add_argument("--warmup", type=_at_least(0), default=5, help="Untimed calls before timing.")
    ev.add_argument("--repeats", type=_at_least(1), default=3, help="Timed passes over the latency batches.")
    ev.add_argument("--output", default=None, help="Also write the result as JSON to this file.")
    ev.set_defaults(fn=_cmd_evaluate)

    ex = sub.add_parser(
        "export", help="Export a checkpoint to ONNX and check parity with PyTorch.",
        description="Export a checkpoint to ONNX (Optimum or the torch dynamo exporter), optionally optimise it with ONNX Runtime's transformer optimizer, "
        f"and check PyTorch vs ONNX Runtime outputs on real sentences at several batch sizes and lengths ({PARITY_FILE}).",
    )
    ex.add_argument("model", help="Checkpoint directory or Hub id.")
    ex.add_argument("--output", required=True, help=f"Output directory (model.onnx, config, tokenizer, {PARITY_FILE}).")
    ex.add_argument("--task", default=None, choices=task_names(), help="The model's task; default: inferred from its architecture.")
    ex.add_argument(
        "--backend", default="auto", choices=["auto", "optimum", "dynamo"],
        help="Exporter: Optimum's main_export, torch.onnx.export(dynamo=True), or auto: Optimum where optimum-onnx is installed, else dynamo.",
    )
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
    ex.add_argument("--optimize", default=None, choices=["O1", "O2", "O3", "O4"], help="Also write model_optimized.onnx with ONNX Runtime's transformer optimizer at this level (Optimum's O1-O4; O4 needs a GPU).")
    ex.add_argument("--atol", type=float, default=1e-4, help="Largest allowed absolute difference of the outputs.")
    ex.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="Batch sizes of the parity check.")
    ex.add_argument("--sequence-lengths", type=int, nargs="+", default=[16, 128], help="Sequence lengths of the parity check.")
    ex.add_argument("--parity-texts", default=None, help="Text file, one sentence a line, for the parity check (default: built-in sentences).")
    ex.add_argument("--overwrite", action="store_true", help="Replace an existing output directory (and Triton model).")
    _add_triton_arguments(ex)
    ex.set_defaults(fn=_cmd_export)
    _add_size_reduction_commands(sub)
    _add_card_parser(sub)
    _add_search_parser(sub)
    _add_push_parser(sub)
    _add_serve_parser(sub)
    _add_convert_gguf_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "run" and not any(a.startswith("-") for a in extra):
        args.overrides += extra  # key=value overrides after the flags (argparse stops a positional list at the first flag)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
    except Exception as e:  # noqa: BLE001 - what the libraries underneath raise: one line too, the traceback with --debug
        if args.debug or os.environ.get("HFCOMPRESS_DEBUG"):
            raise
        print(f"hfcompress: error: {describe_library_error(e)}", file=sys.stderr)
        return 2


def describe_library_error(error: BaseException) -> str:
    """One line for an exception hfcompress did not anticipate: what happened, and what to do about it."""
    import errno

    message = " ".join(str(error).split())[:300] or type(error).__name__
    where = getattr(error, "filename", None)
    if isinstance(error, MemoryError):
        return "out of memory: lower the batch sizes or data.max_length, or use a smaller model"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"no space left on the disk{f' writing {where}' if where else ''}: free some space or write the output elsewhere"
    if isinstance(error, PermissionError):
        return f"permission denied{f' on {where}' if where else ''}: choose a path you can write, or fix its permissions"
    if isinstance(error, FileNotFoundError):
        return f"{where or message} does not exist: check the path"
    if isinstance(error, UnicodeError):
        return f"a text file is not UTF-8 ({message}): re-save it as UTF-8"
    if type(error).__name__ in ("SafetensorError", "DecodeError", "HeaderTooLarge"):
        return f"a model file is corrupt ({type(error).__name__}: {message}): copy or save the model again"
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {message}: check the path, the network and HF_HUB_OFFLINE"
    return f"{type(error).__name__}: {message} (rerun with --debug for the traceback; if the input is right, please report it as a bug)"


if __name__ == "__main__":
    sys.exit(main())
