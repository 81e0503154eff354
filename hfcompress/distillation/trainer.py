"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss is knowledge distillation."""

from __future__ import annotations

import inspect
import os
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, Trainer
from transformers.utils import logging

from ..artifacts import DISTILLATION_PROJECTIONS_FILE
from ..errors import ConfigError
from ..tasks import task_of
from .cache import INDEX_COLUMN, TeacherLogitCache
from .config import DistillationTrainingArguments, layer_count, resolve_layer_map
from .losses import attention_loss, combine, count_items, distillation_loss_sums, hidden_state_loss

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


class DistillationTrainer(Trainer):
    """Trains ``model`` (the student) to match ``teacher_model``.

    ``loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`` per item,
    plus optional hidden-state and attention-map terms. The teacher is frozen, in eval mode, placed
    on the device by accelerate without a DDP wrapper, and never saved.
    """

    def __init__(self, model: PreTrainedModel, teacher_model: PreTrainedModel, args: DistillationTrainingArguments, **kwargs):
        if not isinstance(args, DistillationTrainingArguments):
            raise ConfigError("DistillationTrainer needs DistillationTrainingArguments (it carries alpha and temperature)")
        self.task = task_of(model)
        check_compatible(teacher_model, model, self.task)
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
        self.teacher_forward_passes = 0
        self._teacher_inputs = set(inspect.signature(self.teacher.forward).parameters)
        self._loss_parts: dict[str, list[float]] = {}
        self.teacher_cache: Optional[TeacherLogitCache] = None
        if args.teacher_cache_dir and self.train_dataset is not None:
            self._attach_teacher_cache()

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
                batch_size=max(self.args.per_device_eval_batch_size, 64),
                dtype=self.args.teacher_cache_dtype,
                disable_progress=self.args.disable_tqdm or not self.is_local_process_zero(),
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
            self.task, outputs.logits, teacher_logits, labels, args.temperature, attention_mask
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
