"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss is knowledge distillation."""

from __future__ import annotations

import inspect
import os
import random
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, Trainer
from transformers.utils import logging

from ..artifacts import DISTILLATION_PROJECTIONS_FILE
from ..errors import ConfigError, DataError
from ..tasks import IGNORE_INDEX, task_of
from .cache import INDEX_COLUMN, TeacherLogitCache
from .config import DistillationTrainingArguments, layer_count, resolve_layer_map
from .losses import attention_loss, combine, count_items, distillation_loss_sums, hidden_state_loss
from .report import eval_results, format_layer_map, write_distillation_report

_PROJECTIONS_ATTR = "hfc_distillation_projections"

logger = logging.get_logger(__name__)


def check_compatible(teacher: PreTrainedModel, student: PreTrainedModel, task) -> None:
    """Teacher and student must share a vocabulary (models that read tokens) and (for labelled tasks) a label set."""
    tv, sv = getattr(teacher.config, "vocab_size", None), getattr(student.config, "vocab_size", None)
    if tv != sv:
        raise ConfigError(
            f"teacher and student vocabularies differ ({tv} vs {sv} tokens): distil between models that share a tokenizer"
        )
    task.check_compatible(teacher.config, student.config)


def _output_flags(hidden: bool, attentions: bool) -> dict:
    """Only the output flags asked for: models without attention (CNNs) take no ``output_attentions``."""
    return {**({"output_hidden_states": True} if hidden else {}), **({"output_attentions": True} if attentions else {})}


def check_pad_token(tokenizer, task) -> None:
    """Batches of causal-LM text are padded: borrow the end-of-sequence token where the tokenizer has no pad token.

    Safe because padded positions are masked out of attention and of the loss; without either token there is nothing to pad with.
    """
    if tokenizer is None or not task.label_shift or getattr(tokenizer, "pad_token", "") is not None:
        return
    if tokenizer.eos_token is None:
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} has neither a pad token nor an end-of-sequence token to pad batches with: "
            "set tokenizer.pad_token (e.g. tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the embeddings)"
        )
    logger.warning(f"tokenizer has no pad token: padding with the end-of-sequence token {tokenizer.eos_token!r} (padded positions are masked)")
    tokenizer.pad_token = tokenizer.eos_token


def check_sequence_length(dataset, config, new_tokens: int) -> None:
    """Training sequences (plus generated tokens) must fit the student's position embeddings."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not positions:
        return
    longest = max((len(ids) for ids in dataset["input_ids"]), default=0)
    if longest + new_tokens > positions:
        generated = f" + max_new_tokens {new_tokens}" if new_tokens else ""
        raise DataError(
            f"training sequences reach {longest} tokens{generated}, longer than the student's {positions} positions "
            f"(max_position_embeddings): set max_length to at most {positions - new_tokens}"
        )


def left_padded(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows with their padding moved to the left, where ``generate`` needs it for decoder-only models."""
    if attention_mask is None:
        return input_ids, torch.ones_like(input_ids)
    order = torch.argsort(attention_mask, dim=1, stable=True)  # padded positions (0) first, tokens keep their order
    ids = torch.where(attention_mask.bool(), input_ids, pad_id).gather(1, order)
    return ids, attention_mask.gather(1, order)


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Running count of attended tokens (1 where padded), as ``generate`` computes positions."""
    return torch.where(attention_mask == 0, 1, attention_mask.cumsum(-1) - 1)


class DistillationTrainer(Trainer):
    """Trains ``model`` (the student) to match ``teacher_model``.

    ``loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`` per item,
    plus optional hidden-state and attention-map terms. The teacher is frozen, in eval mode, placed
    on the device by accelerate without a DDP wrapper, and never saved.

    For causal LMs it also does GKD (Agarwal et al., 2024, as TRL's ``GKDTrainer``): ``beta`` picks
    the generalized JSD instead of the forward KL, and a fraction ``lmbda`` of the batches is replaced
    by continuations the student samples after each training text (``seq_kd``: the teacher samples the
    others), which the live teacher scores; only the generated tokens are distilled, without hard labels.

    ``teacher_name`` and ``student_origin`` say in :meth:`write_artifacts`'s report how the teacher is
    known (default: the path it was loaded from) and what the student was made from (e.g. "the
    teacher's layers [0, 2, 4]").
    """

    def __init__(
        self,
        model: PreTrainedModel,
        teacher_model: PreTrainedModel,
        args: DistillationTrainingArguments,
        teacher_name: Optional[str] = None,
        student_origin: Optional[str] = None,
        **kwargs,
    ):
        if not isinstance(args, DistillationTrainingArguments):
            raise ConfigError("DistillationTrainer needs DistillationTrainingArguments (it carries alpha and temperature)")
        self.task = task_of(model)
        check_compatible(teacher_model, model, self.task)
        self._generates = args.lmbda > 0 or args.seq_kd
        if self._generates and not self.task.label_shift:
            raise ConfigError(
                f"lmbda and seq_kd generate continuations, which only causal LMs do ({type(model).__name__} is "
                f"{self.task.name}): set lmbda to 0 and seq_kd to false"
            )
        if self._generates and kwargs.get("processing_class") is None:
            raise ConfigError("lmbda and seq_kd generate text, which needs the tokenizer: pass processing_class=tokenizer")
        check_pad_token(kwargs.get("processing_class"), self.task)
        teacher_model.eval()
        teacher_model.requires_grad_(False)
        if args.attention_distill_weight > 0:
            # Fused attention kernels do not return attention maps.
            logger.warning("attention_distill_weight > 0: switching student and teacher to eager attention (slower, returns attention maps)")
            model.set_attn_implementation("eager")
            teacher_model.set_attn_implementation("eager")
        self.layer_map = resolve_layer_map(args.layer_map, layer_count(model.config), layer_count(teacher_model.config))
        if (args.hidden_distill_weight > 0 or args.attention_distill_weight > 0) and not self.layer_map:
            raise ConfigError(
                f"hidden-state and attention distillation pair transformer layers, which {type(model).__name__} and "
                f"{type(teacher_model).__name__} do not both have: set hidden_distill_weight and attention_distill_weight to 0"
            )
        if args.hidden_distill_weight > 0:
            s_width, t_width = model.config.hidden_size, teacher_model.config.hidden_size
            if s_width != t_width:
                # Learned only for training; registered on the student so optimizer and DDP see it, never saved with it.
                model.add_module(
                    _PROJECTIONS_ATTR,
                    torch.nn.ModuleList(torch.nn.Linear(s_width, t_width) for _ in self.layer_map),
                )
        super().__init__(model=model, args=args, **kwargs)
        # We normalise by the global item count ourselves, so Trainer must not divide by accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.teacher = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        self.teacher_name = teacher_name or teacher_model.config.name_or_path or type(teacher_model).__name__
        self.student_origin = student_origin
        self.teacher_forward_passes = 0
        self._teacher_inputs = set(inspect.signature(self.teacher.forward).parameters)
        self._loss_parts: dict[str, list[float]] = {}
        self.teacher_cache: Optional[TeacherLogitCache] = None
        if self.train_dataset is not None and "input_ids" in getattr(self.train_dataset, "column_names", ()):
            check_sequence_length(self.train_dataset, model.config, args.max_new_tokens if self._generates else 0)
        if args.teacher_cache_dir and self.train_dataset is not None:
            self._attach_teacher_cache()
        self._policy_rng = random.Random(args.seed)
        self._generated_batch = False

    # --- teacher logit cache -------------------------------------------------------------------

    def _attach_teacher_cache(self) -> None:
        dataset = self.train_dataset
        if dataset.format["type"] == "custom":
            raise ConfigError(
                "teacher_cache_dir: this training set is preprocessed on the fly (image processing, random augmentation), "
                "so logits cached from one teacher pass would not match what the student sees; remove teacher_cache_dir"
            )
        if INDEX_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(INDEX_COLUMN)
        with self.args.main_process_first(desc="teacher logit cache"):
            self.teacher_cache = TeacherLogitCache.load_or_build(
                self.args.teacher_cache_dir,
                self.accelerator.unwrap_model(self.teacher),
                dataset,
                self.data_collator,
                self.task,
                # a top-k cache is for large vocabularies, whose full logits per batch are large: keep batches small
                batch_size=self.args.per_device_eval_batch_size if self.args.teacher_cache_top_k else max(self.args.per_device_eval_batch_size, 64),
                dtype=self.args.teacher_cache_dtype,
                disable_progress=self.args.disable_tqdm or not self.is_local_process_zero(),
                top_k=self.args.teacher_cache_top_k,
                temperature=self.args.temperature,
            )
        self.train_dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if INDEX_COLUMN not in self._signature_columns:
            self._signature_columns.append(INDEX_COLUMN)

    def _teacher_outputs(self, inputs: dict[str, Any], example_index, need_hidden: bool, need_attn: bool):
        if self.teacher_cache is not None and example_index is not None:
            seq_len = inputs["input_ids"].shape[1]
            padding_side = getattr(self.processing_class, "padding_side", "right")
            return self.teacher_cache.lookup(example_index, seq_len, padding_side).to(inputs["input_ids"].device), None
        if self.teacher.training:
            self.teacher.eval()
        teacher_inputs = {k: v for k, v in inputs.items() if k in self._teacher_inputs and k != "labels"}
        self.teacher_forward_passes += 1
        with torch.no_grad():
            out = self.teacher(**teacher_inputs, **_output_flags(need_hidden, need_attn))
        return out.logits, out

    # --- on-policy and sequence-level batches (GKD) ------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        generator = None
        if self.args.seq_kd:
            generator = self.teacher
        if self.args.lmbda > 0 and self._policy_rng.random() < self.args.lmbda:
            generator = model
        self._generated_batch = generator is not None
        if generator is not None:
            inputs = self._generate_continuations(generator, self._prepare_inputs(inputs))
            # Trainer counted the items of the batch this one replaces: normalise by this batch's own count instead
            num_items_in_batch = None
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._generated_batch = False

    @torch.no_grad()
    def _generate_continuations(self, generator, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Each training text followed by ``max_new_tokens`` sampled by ``generator``, labelled on the new tokens only."""
        unwrapped = self.accelerator.unwrap_model(generator)
        pad_id = self.processing_class.pad_token_id
        prompt_ids, prompt_mask = left_padded(inputs["input_ids"], inputs.get("attention_mask"), pad_id)
        was_training = unwrapped.training
        unwrapped.eval()
        try:
            sequences = unwrapped.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=self.args.max_new_tokens, do_sample=True,
                temperature=self.args.temperature, top_k=0, pad_token_id=pad_id,
            )
        finally:
            unwrapped.train(was_training)
        new = sequences[:, prompt_ids.shape[1] :]
        eos = unwrapped.generation_config.eos_token_id
        eos = torch.tensor(eos if isinstance(eos, list) else [eos if eos is not None else self.processing_class.eos_token_id])
        is_eos = torch.isin(new, eos.to(new.device)).int()
        new_mask = (is_eos.cumsum(1) - is_eos) == 0  # up to and including the first end-of-sequence; the rest is padding
        attention_mask = torch.cat([prompt_mask, new_mask.long()], dim=1)
        labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), torch.where(new_mask, new, IGNORE_INDEX)], dim=1)
        batch = {"input_ids": sequences, "attention_mask": attention_mask, "labels": labels}
        if "position_ids" in inspect.signature(unwrapped.forward).parameters:
            batch["position_ids"] = position_ids_of(attention_mask)  # as generate numbered them, left padding included
        return batch

    # --- loss ------------------------------------------------------------------------------------

    def _get_num_items_in_batch(self, batch_samples, device):
        """Count exactly the items our loss sums over (Trainer's count only looks at labels)."""
        if not batch_samples:
            return None
        count = sum(
            count_items(self.task, b.get("labels"), b.get("attention_mask"), len(next(iter(b.values())))) for b in batch_samples
        )
        count = torch.tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        example_index = inputs.pop(INDEX_COLUMN, None)
        labels = inputs.get("labels")
        training = model.training
        need_hidden = training and args.hidden_distill_weight > 0
        need_attn = training and args.attention_distill_weight > 0
        student_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**student_inputs, **_output_flags(need_hidden, need_attn))
        teacher_logits, teacher_out = self._teacher_outputs(
            inputs, example_index if training else None, need_hidden, need_attn
        )
        attention_mask = inputs.get("attention_mask")
        ce_sum, kl_sum, local_items = distillation_loss_sums(
            self.task, outputs.logits, teacher_logits, labels, args.temperature, attention_mask,
            beta=args.beta, hard_labels=not self._generated_batch,
        )
        denominator = num_items_in_batch if num_items_in_batch is not None else max(local_items, 1)
        loss = combine(ce_sum, kl_sum, denominator, args.alpha, args.temperature)
        if num_items_in_batch is not None and args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        self._record("loss_kd", args.temperature**2 * kl_sum.detach() / max(local_items, 1))
        if ce_sum is not None:
            self._record("loss_ce", ce_sum.detach() / max(local_items, 1))
        aux = 0.0
        if need_hidden:
            unwrapped = self.accelerator.unwrap_model(model)
            projections = getattr(unwrapped, _PROJECTIONS_ATTR, None)
            hidden = hidden_state_loss(
                outputs.hidden_states, teacher_out.hidden_states, self.layer_map, projections, attention_mask, args.hidden_distill_loss
            )
            self._record("loss_hidden", hidden.detach())
            aux = aux + args.hidden_distill_weight * hidden
        if need_attn:
            attn = attention_loss(outputs.attentions, teacher_out.attentions, self.layer_map, attention_mask)
            self._record("loss_attention", attn.detach())
            aux = aux + args.attention_distill_weight * attn
        if num_items_in_batch is not None and not isinstance(aux, float):
            aux = aux / self.current_gradient_accumulation_steps  # batch means: one share per micro-batch
        loss = loss + aux
        if return_outputs:
            outputs.loss = loss
            return loss, outputs
        return loss

    def _record(self, name: str, value: torch.Tensor) -> None:
        if self.model.training:
            self._loss_parts.setdefault(name, []).append(float(value))

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and self._loss_parts:
            logs.update({k: round(sum(v) / len(v), 6) for k, v in self._loss_parts.items()})
            self._loss_parts = {}
        super().log(logs, start_time)

    # --- what the run did: distillation.json and its compression summary --------------------------

    def distillation_report(self) -> dict:
        """The settings this run distilled with (unused ones None) and what it measured, for ``distillation.json``."""
        args = self.args
        student = self.accelerator.unwrap_model(self.model)
        teacher = self.accelerator.unwrap_model(self.teacher)
        student_parameters = sum(p.numel() for name, p in student.named_parameters() if not name.startswith(_PROJECTIONS_ATTR + "."))
        teacher_parameters = sum(p.numel() for p in teacher.parameters())
        pairs = args.hidden_distill_weight > 0 or args.attention_distill_weight > 0
        train = next((entry for entry in reversed(self.state.log_history) if "train_loss" in entry), {})
        return {
            "method": "distillation",
            "teacher": self.teacher_name,
            "student": self.student_origin,
            "task": self.task.name,
            "alpha": args.alpha,
            "temperature": args.temperature,
            "beta": args.beta or None,
            "hidden_distill_weight": args.hidden_distill_weight or None,
            "hidden_distill_loss": args.hidden_distill_loss if args.hidden_distill_weight > 0 else None,
            "attention_distill_weight": args.attention_distill_weight or None,
            "layer_map": format_layer_map(self.layer_map) if pairs else None,
            "teacher_cache_dtype": args.teacher_cache_dtype if self.teacher_cache is not None else None,
            "teacher_cache_top_k": self.teacher_cache.top_k if self.teacher_cache is not None else None,
            "lmbda": args.lmbda or None,
            "seq_kd": args.seq_kd or None,
            "max_new_tokens": args.max_new_tokens if self._generates else None,
            "epochs": args.num_train_epochs if args.max_steps <= 0 else None,
            "max_steps": args.max_steps if args.max_steps > 0 else None,
            "teacher_layers": layer_count(teacher.config) or None,
            "student_layers": layer_count(student.config) or None,
            "teacher_parameters": teacher_parameters,
            "student_parameters": student_parameters,
            "parameters_vs_teacher": round(student_parameters / teacher_parameters, 4),
            "steps": self.state.global_step,
            "train_loss": train.get("train_loss"),
            "teacher_forward_passes": self.teacher_forward_passes,
            "eval": eval_results(self.state.log_history),
        }

    def write_artifacts(self, directory) -> None:
        """Write ``distillation.json`` and its compression summary into ``directory`` (the saved student's), for the model card."""
        write_distillation_report(directory, self.distillation_report())

    # --- saving: the student only, projections kept beside checkpoints for resuming ----------------

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        model = self.accelerator.unwrap_model(self.model)
        projections = getattr(model, _PROJECTIONS_ATTR, None)
        if projections is None:
            return super()._save(output_dir, state_dict)
        if state_dict is None:
            state_dict = model.state_dict()
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_PROJECTIONS_ATTR + ".")}
        delattr(model, _PROJECTIONS_ATTR)
        try:
            super()._save(output_dir, state_dict)
        finally:
            model.add_module(_PROJECTIONS_ATTR, projections)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        projections = getattr(self.accelerator.unwrap_model(self.model), _PROJECTIONS_ATTR, None)
        if projections is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            save_file({k: v.detach().cpu().contiguous() for k, v in projections.state_dict().items()}, os.path.join(folder, DISTILLATION_PROJECTIONS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        projections = getattr(self.accelerator.unwrap_model(model or self.model), _PROJECTIONS_ATTR, None)
        path = os.path.join(resume_from_checkpoint, DISTILLATION_PROJECTIONS_FILE)
        if projections is not None and os.path.exists(path):
            projections.load_state_dict(load_file(path))
