"""Trainer callbacks that protect long runs; they work with plain ``Trainer`` and ``DistillationTrainer``.

- :class:`StopOnNonFiniteLoss` stops a run whose loss or gradients became NaN/inf, naming the step and
  the last good checkpoint, instead of training on for hours and saving garbage.
- :class:`CheckRanksInSync` fails a multi-process (DDP) run whose model copies differ between
  processes (weights, buffers such as pruning masks or quantization ranges) before rank 0 saves them.
- :class:`SaveFinalCheckpoint` saves a checkpoint at the last step, so that a crash during the
  final evaluation or saving does not cost the training on ``--resume``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from accelerate.state import AcceleratorState
from transformers import TrainerCallback

from .checkpoints import last_complete_checkpoint
from .errors import TrainingDivergedError


@dataclass
class NonFiniteLossConfig:
    check_gradients: bool = field(
        default=True,
        metadata={"help": "Check the gradient norm before every optimizer step (catches a NaN loss at its step); "
                          "skipped under fp16 loss scaling, where inf gradients are expected and the step is skipped."},
    )


class StopOnNonFiniteLoss(TrainerCallback):
    """Raise :class:`TrainingDivergedError` at the first step whose gradients (or logged loss) are NaN/inf.

    Gradients are checked before the optimizer step, so the weights never absorb the bad step and every
    checkpoint saved before it is good. Logged ``loss``/``grad_norm`` values are checked too, which covers
    set-ups where gradients are not visible to callbacks (DeepSpeed).
    """

    def __init__(self, config: Optional[NonFiniteLossConfig] = None):
        self.config = config or NonFiniteLossConfig()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.config.check_gradients or args.fp16 or model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            # the step being taken is global_step + 1 (Trainer counts it after the optimizer step)
            self._stop(args, state, "the gradients", state.global_step + 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        keys = ("loss", "eval_loss") if args.fp16 else ("loss", "eval_loss", "grad_norm")
        for key in keys:
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                self._stop(args, state, f"the logged {key}", state.global_step)

    @staticmethod
    def _stop(args, state, what: str, step: int):
        checkpoint = last_complete_checkpoint(args.output_dir)
        where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved before it"
        raise TrainingDivergedError(
            f"training diverged: {what} became NaN/inf at step {step} (epoch {state.epoch or 0:.2f}); {where}: "
            "lower the learning rate, clip gradients (max_grad_norm) or check the data, then resume or start the stage again"
        )


def state_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class CheckRanksInSync(TrainerCallback):
    """Compare the model on every process before each checkpoint and at the end of training (DDP only).

    Under FSDP and DeepSpeed each process holds a shard, so there is nothing to compare.
    """

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save:  # set by Trainer's flow callback, which runs first: check before rank 0 writes
            self._check(args, state, model, "before saving a checkpoint")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._check(args, state, model, "end of training")

    @staticmethod
    def _check(args, state, model, when: str):
        import torch.distributed as dist

        if model is None or args.world_size < 2 or not (dist.is_available() and dist.is_initialized()):
            return
        # replicas only under data parallelism (MULTI_CPU, MULTI_GPU, ...); FSDP and DeepSpeed shard the model,
        # whether configured in TrainingArguments or by `accelerate launch --config_file`
        if not AcceleratorState().distributed_type.name.startswith("MULTI_"):
            return
        fingerprints = [None] * dist.get_world_size()
        dist.all_gather_object(fingerprints, state_fingerprint(model))
        if len(set(fingerprints)) > 1:
            differing = [rank for rank, f in enumerate(fingerprints) if f != fingerprints[0]]
            raise RuntimeError(
                f"the model differs between processes at step {state.global_step} ({when}): ranks {differing} differ from rank 0. "
                "A callback changed weights or buffers (e.g. masks) with rank-dependent values; compute them from "
                "synchronised values or broadcast them from rank 0"
            )


class SaveFinalCheckpoint(TrainerCallback):
    """Save a checkpoint after the last optimizer step when saving by steps would miss it."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.save_strategy != "no" and state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True
