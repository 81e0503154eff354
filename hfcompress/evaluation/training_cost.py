"""What the framework itself costs during training: epoch and step times of plain fine-tuning,
distillation with and without the teacher-logit cache, and training with extra callbacks (pruning, QAT).

Every variant trains the same student on the same data with the same seed, one after another in
the same process at a fixed thread count, so their times compare side by side.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from transformers import Trainer, TrainerCallback, TrainingArguments

from ..distillation import DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher


class StepTimer(TrainerCallback):
    """Wall time of every epoch and of every optimizer step (forward, backward, step and callbacks)."""

    def __init__(self):
        self.epoch_seconds: list[float] = []
        self.step_seconds: list[float] = []
        self._epoch_start = self._step_start = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self._step_start)


@dataclass
class TrainingVariant:
    """One way of training the student: ``distill`` or plain fine-tuning, optional cache and callbacks."""

    name: str
    distill: bool = True
    teacher_cache: bool = False
    callbacks: Callable[[], list[TrainerCallback]] = field(default=lambda: [])


def time_training(
    variant: TrainingVariant,
    teacher,
    tokenizer,
    train_dataset,
    collator,
    student_layers: list[int],
    epochs: int = 2,
    batch_size: int = 32,
    seed: int = 42,
    cache_root: Optional[str] = None,
    max_steps: int = -1,
) -> dict:
    """Train a fresh student as ``variant`` describes and return its timings.

    The cache, when used, is built in a new directory (or ``cache_root``) so its build time is measured;
    it is reported separately from the epochs, which then read logits from disk.
    """
    student = build_student_from_teacher(teacher, student_layers)
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="hfc-cost-") as work:
        common = dict(
            output_dir=f"{work}/out", num_train_epochs=epochs, max_steps=max_steps, per_device_train_batch_size=batch_size,
            learning_rate=1e-4, seed=seed, save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True,
        )
        build_start = time.perf_counter()
        if variant.distill:
            args = DistillationTrainingArguments(
                **common, teacher_cache_dir=(cache_root or f"{work}/cache") if variant.teacher_cache else None
            )
            trainer = DistillationTrainer(
                model=student, teacher_model=teacher, args=args, train_dataset=train_dataset, data_collator=collator,
                processing_class=tokenizer, callbacks=[timer, *variant.callbacks()],
            )
        else:
            trainer = Trainer(
                model=student, args=TrainingArguments(**common), train_dataset=train_dataset, data_collator=collator,
                processing_class=tokenizer, callbacks=[timer, *variant.callbacks()],
            )
        setup_seconds = time.perf_counter() - build_start
        trainer.train()
    return {
        "name": variant.name,
        "cache_build_s": round(setup_seconds, 2) if variant.teacher_cache else None,
        "epoch_s": [round(s, 2) for s in timer.epoch_seconds],
        "step_ms_p50": round(1e3 * statistics.median(timer.step_seconds), 2),
        "steps": len(timer.step_seconds),
        "teacher_forward_passes": getattr(trainer, "teacher_forward_passes", 0),
    }


def median_timings(runs: list[dict]) -> dict:
    """Fold repeated runs of one variant into medians (epoch by epoch)."""
    first = runs[0]
    epochs = zip(*(r["epoch_s"] for r in runs))
    return {
        "name": first["name"],
        "repeats": len(runs),
        "epoch_s": [round(statistics.median(e), 2) for e in epochs],
        "step_ms_p50": round(statistics.median(r["step_ms_p50"] for r in runs), 2),
        "steps": first["steps"],
        "cache_build_s": None if first["cache_build_s"] is None else round(statistics.median(r["cache_build_s"] for r in runs), 2),
        "teacher_forward_passes": first["teacher_forward_passes"],
    }
