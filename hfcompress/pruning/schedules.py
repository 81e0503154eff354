"""Pruning schedules: which optimizer steps prune, and to what sparsity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union


def resolve_step(value: Union[int, float], max_steps: int) -> int:
    """An int is a step; a float is a fraction of the run's ``max_steps``."""
    return int(round(value * max_steps)) if isinstance(value, float) else int(value)


def check_step_fields(config, names=("start_step", "end_step")) -> None:
    """Config-time check of step fields: an int is a step (>= 0), a float a fraction of training (in [0, 1])."""
    from ..errors import ConfigError

    for name in names:
        value = getattr(config, name)
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} {value} is a float, so a fraction of training: use a value in [0, 1] or an int step")
        if isinstance(value, int) and value < 0:
            raise ConfigError(f"{name} {value} must be >= 0")


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))^3``, clamped to [t0, t_end]."""
    if end <= start:
        return final if step >= start else 0.0
    if step < start:
        return 0.0
    progress = min(1.0, (step - start) / (end - start))
    return final + (initial - final) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule (in optimizer steps) for one training run."""

    kind: str  # "one_shot" or "cubic"
    target: float
    initial: float
    start: int
    end: int
    frequency: int

    @classmethod
    def from_config(cls, cfg, max_steps: int, target: Optional[float] = None) -> "Schedule":
        start = resolve_step(cfg.start_step, max_steps)
        end = start if cfg.schedule == "one_shot" else max(start, resolve_step(cfg.end_step, max_steps))
        target = cfg.target_sparsity if target is None else target
        initial = getattr(cfg, "initial_sparsity", 0.0) if cfg.schedule == "cubic" else target
        return cls(cfg.schedule, target, initial, start, end, cfg.frequency)

    def is_pruning_step(self, step: int) -> bool:
        """One-shot: ``start`` only. Cubic: every ``frequency`` steps from ``start``, and ``end`` itself so the target is reached."""
        if self.kind == "one_shot":
            return step == self.start
        return self.start <= step <= self.end and ((step - self.start) % self.frequency == 0 or step == self.end)

    def sparsity_at(self, step: int) -> float:
        if self.kind == "one_shot":
            return self.target if step >= self.start else 0.0
        return cubic_sparsity(step, self.initial, self.target, self.start, self.end)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "initial_sparsity": self.initial, "target_sparsity": self.target,
                "start_step": self.start, "end_step": self.end, "frequency": self.frequency}
