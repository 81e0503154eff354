"""Training stages: ``finetune`` (alias ``finetune_teacher``) and ``distill``."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Optional, Union

from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from ...artifacts import EVAL_RESULTS_FILE, TRAIN_RESULTS_FILE, TRAINER_STATE_FILE, TRAINING_ARGS_FILE
from ...checkpoints import discard_incomplete_checkpoints, last_complete_checkpoint
from ...distillation import DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher
from ...distillation.config import layer_count, resolve_layer_map
from ...distillation.student import spread_layers
from ...errors import ConfigError
from ...guards import CheckRanksInSync, NonFiniteLossConfig, SaveFinalCheckpoint, StopOnNonFiniteLoss
from ...modeling import check_head_fits_labels, check_max_length, load_model
from ...utils.disk import CHECKPOINT_MODEL_COPIES, config_bytes
from ...utils.io import atomic_write_json, atomic_write_text
from ...utils.transformers_compat import PORTABLE_FIELDS, training_kwargs
from ..context import PlannedModel, RunContext
from ..registry import CALLBACKS, StageConfig, register_callback, register_stage
from ..schema import check_keys, check_value, from_dict

# Recipe defaults where Trainer's own would surprise a recipe user: no experiment trackers unless asked,
# checkpoints often enough that --resume loses little, and evaluation once at the end of the stage.
TRAINING_DEFAULTS = {
    "report_to": "none",
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": 2,
    "logging_steps": 50,
    "eval_strategy": "no",
    "per_device_eval_batch_size": 64,
}
# TrainingArguments that the recipe sets itself: a value in ``training:`` would clash with it, be
# ignored, or bypass a stage's own checks (a Trainer push skips the push stage's).
RECIPE_OWNED = {
    "output_dir": "each stage writes under the recipe's output_dir; remove the key",
    "seed": "set the recipe's top-level seed instead",
    "teacher_model_name_or_path": "name the teacher with the distill stage's own 'teacher:' key",
    "push_to_hub": "remove it and add a 'push' stage after a 'card' stage",
    "hub_*": "remove it; the 'push' stage takes the repo id and its options",
}
# Experiment trackers that send metrics to a server; local ones (tensorboard, codecarbon, dvclive) are fine offline.
NETWORK_TRACKERS = ("azure_ml", "clearml", "comet_ml", "dagshub", "neptune", "swanlab", "wandb")
# Callbacks every training stage gets unless its ``callbacks:`` list configures them itself.
DEFAULT_CALLBACKS = ({"type": "stop_on_nonfinite_loss"}, {"type": "check_ranks_in_sync"})


@dataclass
class CheckRanksInSyncConfig:
    """No options: the check runs before every checkpoint and at the end of training under DDP."""


register_callback("stop_on_nonfinite_loss", NonFiniteLossConfig)(StopOnNonFiniteLoss)
register_callback("check_ranks_in_sync", CheckRanksInSyncConfig)(lambda config: CheckRanksInSync())


def validate_training(training: dict, args_cls: type[TrainingArguments]) -> dict:
    """Check keys and types of a stage's ``training`` mapping, then build the arguments once to run their own checks.

    Either transformers version's names are accepted (see :func:`training_kwargs`); the mapping keeps
    the user's, so the saved recipe and the model card show what they wrote. Returns the mapping with
    values converted to their field types."""
    hints = {**typing.get_type_hints(args_cls), **PORTABLE_FIELDS}
    for key in training:
        owner = RECIPE_OWNED.get(key) or (RECIPE_OWNED["hub_*"] if key.startswith("hub_") and key != "hub_token" else None)
        if owner:
            raise ConfigError(f"training.{key}: the recipe decides this, not the Trainer: {owner}")
    allowed = ({f.name for f in dataclasses.fields(args_cls) if f.init} | set(PORTABLE_FIELDS)) - set(RECIPE_OWNED)
    check_keys(training, allowed, "training")
    if training.get("hub_token"):
        raise ConfigError(
            "training.hub_token: a token in a recipe ends up in saved recipes and version control; "
            "remove it and log in with `huggingface-cli login` or set HF_TOKEN"
        )
    training = {key: check_value(value, hints[key], f"training.{key}") for key, value in training.items()}
    check_trackers_reachable(training.get("report_to"))
    try:
        args = args_cls(output_dir="unused", **training_kwargs({**TRAINING_DEFAULTS, **training}))
        check_training_ranges(args)
    except ConfigError as e:
        raise ConfigError(f"training: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training: {str(e).splitlines()[0]}") from None
    return training


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_trackers_reachable(report_to) -> None:
    """Offline (HF_HUB_OFFLINE), a tracker that reports to a server would fail at the first log, after the stage began training."""
    if not report_to or not _offline():
        return
    named = [report_to] if isinstance(report_to, str) else list(report_to)
    if "all" in named:
        from transformers.integrations import get_available_reporting_integrations

        named = get_available_reporting_integrations()
    networked = [t for t in named if t in NETWORK_TRACKERS and not (t == "wandb" and os.environ.get("WANDB_MODE") in ("offline", "disabled"))]
    if networked:
        raise ConfigError(
            f"training.report_to {networked} sends metrics to a server, but this run is offline (HF_HUB_OFFLINE): "
            "report to 'tensorboard' (local files) or 'none'" + (", or set WANDB_MODE=offline" if "wandb" in networked else "")
        )


# TrainingArguments values that Trainer accepts but that cannot mean anything (a run that trains
# nothing, or backwards): (check, what the value must be).
_RANGES = {
    "learning_rate": (lambda v: v > 0, "> 0, e.g. 5e-5"),
    "per_device_train_batch_size": (lambda v: v >= 1, "at least 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, "at least 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "at least 1"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "save_steps": (lambda v: v > 0, "> 0"),
    "logging_steps": (lambda v: v > 0, "> 0"),
}


def check_training_ranges(args: TrainingArguments) -> None:
    """Refuse settings that would train nothing or nonsense, which Trainer runs without a word."""
    for name, (ok, expected) in _RANGES.items():
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            raise ConfigError(f"{name} {value} must be {expected}")
    if args.max_steps <= 0 and not args.num_train_epochs > 0:
        raise ConfigError(f"num_train_epochs {args.num_train_epochs} must be > 0 (or set max_steps > 0): the stage would train nothing")


def training_disk_bytes(ctx: RunContext, name: str, training: dict, model: int) -> tuple[int, int]:
    """(published model, everything written) of a training stage: the model, and its checkpoints as hfcompress.utils.disk counts them."""
    if name in ctx.planned:  # the model it trains, as planned (a student is smaller than its teacher)
        model = config_bytes(ctx.planned[name].config) or model
    args = {**TRAINING_DEFAULTS, **training}
    saves = args["save_total_limit"]
    if saves is None:  # every save is kept
        data = ctx.data()
        batch = args.get("per_device_train_batch_size", 8) * args.get("gradient_accumulation_steps", 1)
        epoch_steps = math.ceil(len(data.raw[data.cfg.train_split]) / batch)
        steps = args["max_steps"] if args.get("max_steps", -1) > 0 else math.ceil(epoch_steps * args.get("num_train_epochs", 3))
        saves = math.ceil(steps / args["save_steps"]) if args["save_steps"] >= 1 else math.ceil(1 / args["save_steps"])
    saves += 1 + bool(args.get("load_best_model_at_end"))  # the final checkpoint, and the best one kept beside the limit
    return model, model * (1 + CHECKPOINT_MODEL_COPIES * saves)


def with_default_callbacks(specs: list[dict]) -> list[dict]:
    configured = {spec.get("type") for spec in specs if isinstance(spec, dict)}
    return [*specs, *(d for d in DEFAULT_CALLBACKS if d["type"] not in configured)]


def build_callbacks(specs: list[dict]) -> list:
    callbacks = []
    for i, spec in enumerate(specs):
        path = f"callbacks[{i}]"
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in CALLBACKS:
            from ...errors import closest

            raise ConfigError(f"{path}.type: unknown callback '{kind}'{closest(str(kind), CALLBACKS)}: use one of {sorted(CALLBACKS)}")
        body = {k: v for k, v in spec.items() if k != "type"}
        callbacks.append(CALLBACKS[kind].fn(from_dict(CALLBACKS[kind].config_cls, body, path)))
    return callbacks


@dataclass
class FinetuneStageConfig(StageConfig):
    """Fine-tune a model on the recipe's task with plain ``Trainer`` (hard labels only)."""

    model: str = field(metadata={"help": "Model to train: an earlier stage's name, a local path or a Hub id.", "model_ref": True})
    name: str = field(default="finetune", metadata={"help": "Stage name; also its output sub-directory."})
    layers: Optional[list[int]] = field(default=None, metadata={"help": "Keep only these layers first (e.g. [0, 2, 4])."})
    training: dict = field(default_factory=dict, metadata={"help": "TrainingArguments fields."})
    callbacks: list[dict] = field(default_factory=list, metadata={"help": "Callbacks, each {type: ..., ...}."})
    trust_remote_code: bool = False

    def __post_init__(self):
        self.training = validate_training(self.training, TrainingArguments)
        build_callbacks(self.callbacks)

    def preflight(self, ctx: RunContext) -> None:
        model = ctx.planned_model(self.model, self.trust_remote_code)
        if model is not None:
            ctx.planned[self.name] = plan_task_model(ctx, model, self.model, self.layers, f"{self.name}.layers")

    def disk_bytes(self, ctx: RunContext) -> tuple[int, int]:
        return training_disk_bytes(ctx, self.name, self.training, ctx.model_bytes(self.model))


@dataclass
class FinetuneTeacherStageConfig(FinetuneStageConfig):
    """``finetune`` with the output named 'teacher': tunes a base model (like MiniLM) for the task."""

    name: str = field(default="teacher", metadata={"help": "Stage name; also its output sub-directory."})


@dataclass
class DistillStageConfig(StageConfig):
    """Distil a teacher into a student with :class:`DistillationTrainer`."""

    teacher: str = field(metadata={"help": "Teacher: an earlier stage's name, a local path or a Hub id.", "model_ref": True})
    student: Optional[str] = field(
        default=None, metadata={"help": "Student checkpoint; default: the teacher, cut to student_layers.", "model_ref": True}
    )
    name: str = field(default="student", metadata={"help": "Stage name; also its output sub-directory."})
    student_layers: Optional[Union[int, list[int]]] = field(
        default=None,
        metadata={"help": "Teacher layers the student keeps, e.g. [0, 2, 4], or how many: 15 keeps the first, the last and 13 evenly spread."},
    )
    training: dict = field(default_factory=dict, metadata={"help": "DistillationTrainingArguments fields (alpha, temperature, ...)."})
    callbacks: list[dict] = field(default_factory=list, metadata={"help": "Callbacks, each {type: ..., ...}."})
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.student is None and self.student_layers is None:
            raise ConfigError("give 'student' (a checkpoint) or 'student_layers' (teacher layers to keep, e.g. [0, 2, 4])")
        self.training = validate_training(self.training, DistillationTrainingArguments)
        build_callbacks(self.callbacks)

    def preflight(self, ctx: RunContext) -> None:
        teacher = ctx.planned_model(self.teacher, self.trust_remote_code)
        if teacher is None:
            return
        teacher = plan_task_model(ctx, teacher, self.teacher, None, "")
        if self.student is None:
            student = plan_task_model(ctx, teacher, self.teacher, self.student_layers, f"{self.name}.student_layers")
        else:
            student = ctx.planned_model(self.student, self.trust_remote_code)
            if student is None:
                return
            student = plan_task_model(ctx, student, self.student, self.student_layers, f"{self.name}.student_layers")
            task = ctx.data().task
            check_same_vocabulary(
                task.load_processor(teacher.tokenizer_ref, self.trust_remote_code),
                task.load_processor(student.tokenizer_ref, self.trust_remote_code),
                self.student,
            )
        t_cfg, s_cfg = teacher.config, student.config
        t_vocab, s_vocab = getattr(t_cfg, "vocab_size", None), getattr(s_cfg, "vocab_size", None)
        if t_vocab != s_vocab:
            raise ConfigError(
                f"teacher and student vocabularies differ ({t_vocab} vs {s_vocab} tokens): "
                "distil between models that share a tokenizer"
            )
        try:
            resolve_layer_map(self.training.get("layer_map"), layer_count(s_cfg), layer_count(t_cfg))
        except ConfigError as e:
            raise ConfigError(f"{self.name}.training.{e}") from None
        ctx.planned[self.name] = PlannedModel(student.config, teacher.tokenizer_ref)

    def disk_bytes(self, ctx: RunContext) -> tuple[int, int]:
        return training_disk_bytes(ctx, self.name, self.training, ctx.model_bytes(self.student or self.teacher))


def check_same_vocabulary(teacher_processor, student_processor, student_ref: str) -> None:
    """Tokenizers must agree; image processors have no vocabulary (the student is trained and saved with the teacher's)."""
    if not hasattr(teacher_processor, "get_vocab"):
        return
    if student_processor.get_vocab() != teacher_processor.get_vocab():
        raise ConfigError(
            f"student '{student_ref}' and teacher use different tokenizers: distil between models that share a vocabulary"
        )


def plan_task_model(ctx: RunContext, model: PlannedModel, ref: str, layers: Union[None, int, list[int]], layers_path: str) -> PlannedModel:
    """The model a training stage will train: its head must fit the data's labels; ``layers`` must exist in it."""
    config = copy.deepcopy(model.config)
    data = ctx.data()
    if data.task.has_labels:
        check_head_fits_labels(config, data.num_labels, ref)
        config.num_labels = data.num_labels
    check_max_length(config, data.cfg.max_length, ref)
    if layers is not None:
        total = layer_count(config)
        if isinstance(layers, int):
            try:
                layers = spread_layers(layers, total)
            except ConfigError as e:
                raise ConfigError(f"{layers_path}: {e}") from None
        if not layers or any(not 0 <= i < total for i in layers) or len(set(layers)) != len(layers):
            raise ConfigError(
                f"{layers_path}: {layers} must be distinct layer indices of '{ref}', which has {total} layers (0..{total - 1})"
            )
        config.num_hidden_layers = len(layers)
    return PlannedModel(config, model.tokenizer_ref)


def train_and_publish(ctx: RunContext, cfg, model, processor, trainer_cls, args_cls, **trainer_kwargs):
    """Train with checkpoints in the stage's work directory, evaluate, and publish the final model atomically."""
    data = ctx.data()
    train_ds = data.tokenize(processor, data.cfg.train_split)
    eval_ds = data.tokenize(processor, data.cfg.eval_split)
    checkpoints = ctx.work_dir(cfg.name) / "checkpoints"
    args = args_cls(output_dir=str(checkpoints), seed=ctx.seed, **training_kwargs({**TRAINING_DEFAULTS, **cfg.training}))
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=data.collator(processor),
        processing_class=processor,
        compute_metrics=data.task.trainer_compute_metrics(num_labels=data.num_labels),
        callbacks=[*build_callbacks(with_default_callbacks(cfg.callbacks)), SaveFinalCheckpoint()],
        **trainer_kwargs,
    )
    last = None
    if ctx.resume:
        if ctx.state.is_main_process:
            discard_incomplete_checkpoints(checkpoints)
        ctx.state.wait_for_everyone()
        last = last_complete_checkpoint(checkpoints)
        if last is not None and ctx.state.is_main_process:
            print(f"hfcompress: '{cfg.name}' resumes from {last}", flush=True)
    train_result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    eval_metrics = trainer.evaluate()
    staging = ctx.fresh_staging(cfg.name)
    trainer.save_model(str(staging))
    if ctx.state.is_main_process:
        # the method reports beside the final model: the distillation report, pruning's sparsity report, QAT's ranges...
        for writer in (trainer, *trainer.callback_handler.callbacks):
            if hasattr(writer, "write_artifacts"):
                writer.write_artifacts(staging)
        # the pickled TrainingArguments are replaced by their JSON form (tokens masked): no pickle in published outputs
        (staging / TRAINING_ARGS_NAME).unlink(missing_ok=True)
        atomic_write_text(staging / TRAINING_ARGS_FILE, trainer.args.to_json_string())
        atomic_write_json(staging / TRAIN_RESULTS_FILE, train_result.metrics)
        atomic_write_json(staging / EVAL_RESULTS_FILE, eval_metrics)
        trainer.state.save_to_json(str(staging / TRAINER_STATE_FILE))
    return ctx.publish(staging, cfg.name), trainer


def _load_for_task(ctx: RunContext, ref: str, trust_remote_code: bool):
    """(model with a head for the data's labels, its processor (tokenizer or image processor), its path)."""
    data = ctx.data()
    path = ctx.resolve(ref)
    model = load_model(path, data.task, data.num_labels or None, data.label_display_names() or None, trust_remote_code)
    return model, data.task.load_processor(path, trust_remote_code), path


@register_stage("finetune", FinetuneStageConfig)
@register_stage("finetune_teacher", FinetuneTeacherStageConfig)
def run_finetune(cfg: FinetuneStageConfig, ctx: RunContext):
    model, processor, _ = _load_for_task(ctx, cfg.model, cfg.trust_remote_code)
    if cfg.layers is not None:
        model = build_student_from_teacher(model, cfg.layers)
    return train_and_publish(ctx, cfg, model, processor, Trainer, TrainingArguments)[0]


@register_stage("distill", DistillStageConfig)
def run_distill(cfg: DistillStageConfig, ctx: RunContext):
    teacher, processor, _ = _load_for_task(ctx, cfg.teacher, cfg.trust_remote_code)
    if cfg.student is None:
        student = build_student_from_teacher(teacher, cfg.student_layers)
        origin = f"the teacher's layers {kept_layers(cfg.student_layers, teacher)}"
    else:
        student, student_processor, student_path = _load_for_task(ctx, cfg.student, cfg.trust_remote_code)
        check_same_vocabulary(processor, student_processor, student_path)
        origin = f"`{cfg.student}`"
        if cfg.student_layers is not None:
            origin += f", layers {kept_layers(cfg.student_layers, student)}"
            student = build_student_from_teacher(student, cfg.student_layers)
    return train_and_publish(
        ctx, cfg, student, processor, DistillationTrainer, DistillationTrainingArguments,
        teacher_model=teacher, teacher_name=cfg.teacher, student_origin=origin,
    )[0]


def kept_layers(layers: Union[int, list[int]], model) -> list[int]:
    """The layer indices ``student_layers`` keeps of ``model`` (a count is spread as build_student_from_teacher spreads it)."""
    return spread_layers(layers, layer_count(model.config)) if isinstance(layers, int) else list(layers)
