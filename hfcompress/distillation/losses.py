"""Distillation losses, as sums over items so that gradient accumulation can normalise them globally.

An *item* is what one prediction is made for: an example for sequence classification, a labelled
(or, without labels, an attended) token for token classification, and a next-token position for
causal LM (labels shifted by one, as the model's own loss does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..tasks import Task, get_task


def count_items(task: str | Task, labels: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor], batch_size: int) -> int:
    """How many items a batch contributes; must agree with :func:`distillation_loss_sums`."""
    return get_task(task).count_items(labels, attention_mask, batch_size)


@dataclass
class TopKLogits:
    """A teacher's k largest logits per position, as the top-k cache stores them.

    ``values`` [..., k] and ``indices`` [..., k] are the logits and their token ids; ``lse`` [...] is
    the log-sum-exp of the *full* logits divided by ``temperature``, so the teacher's probability of
    each top-k token, and of the tail (all other tokens together), is known without the full row.
    """

    values: torch.Tensor
    indices: torch.Tensor
    lse: torch.Tensor
    temperature: float

    def to(self, device) -> "TopKLogits":
        return TopKLogits(self.values.to(device), self.indices.to(device), self.lse.to(device), self.temperature)


def _log_tail(log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(log_probs))) over the last dim: the log-probability of every token not listed."""
    return torch.log((1.0 - log_probs.exp().sum(-1, keepdim=True)).clamp_min(torch.finfo(log_probs.dtype).tiny))


def top_k_buckets(student_logits: torch.Tensor, teacher: TopKLogits, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities over k + 1 buckets at ``temperature``: the teacher's top-k
    tokens, then one tail bucket holding the rest of the vocabulary (omitted when k covers it all, so
    that the divergence then equals the full one)."""
    if abs(teacher.temperature - temperature) > 1e-9:
        raise ConfigError(
            f"the cached teacher log-sum-exp is at temperature {teacher.temperature}, the loss at {temperature}: "
            "rebuild the top-k cache at the training temperature (it is part of the cache key)"
        )
    log_p_s = torch.gather(F.log_softmax(student_logits / temperature, dim=-1), -1, teacher.indices.long())
    log_p_t = teacher.values.float() / temperature - teacher.lse.float().unsqueeze(-1)
    if teacher.values.shape[-1] < student_logits.shape[-1]:
        log_p_s = torch.cat([log_p_s, _log_tail(log_p_s)], dim=-1)
        log_p_t = torch.cat([log_p_t, _log_tail(log_p_t)], dim=-1)
    return log_p_s, log_p_t


def generalized_jsd(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-item generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024), over the last dim.

    With the mixture m = beta * teacher + (1 - beta) * student, it is
    ``beta * KL(teacher || m) + (1 - beta) * KL(student || m)``, as TRL's
    ``GKDTrainer.generalized_jsd_loss``. That expression vanishes at beta = 0 and 1, so (as in TRL)
    beta = 0 is the forward KL(teacher || student) and beta = 1 the reverse KL(student || teacher),
    the limits of JSD / beta and JSD / (1 - beta).
    """
    if beta == 0.0:
        return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none").sum(-1)
    if beta == 1.0:
        return F.kl_div(log_p_teacher, log_p_student, log_target=True, reduction="none").sum(-1)
    log_m = torch.logsumexp(torch.stack([log_p_teacher + math.log(beta), log_p_student + math.log(1.0 - beta)]), dim=0)
    kl_teacher = F.kl_div(log_m, log_p_teacher, log_target=True, reduction="none").sum(-1)
    kl_student = F.kl_div(log_m, log_p_student, log_target=True, reduction="none").sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


def distillation_loss_sums(
    task: str | Task,
    student_logits: torch.Tensor,
    teacher_logits: Union[torch.Tensor, TopKLogits],
    labels: Optional[torch.Tensor],
    temperature: float,
    attention_mask: Optional[torch.Tensor] = None,
    beta: float = 0.0,
    hard_labels: bool = True,
):
    """Return (cross-entropy sum or None, divergence sum, number of items).

    The divergence is :func:`generalized_jsd` per item at ``temperature`` (beta = 0: KL(softmax(t/T)
    || softmax(s/T))), summed; with a :class:`TopKLogits` teacher it is taken over the top-k tokens
    plus the tail bucket. Cross-entropy is on the student's un-tempered logits against the hard
    labels, summed over the same items; ``hard_labels=False`` uses the labels only to select the
    items (for sequences the student generated itself, where they are no ground truth).
    """
    task = get_task(task)
    student_logits = student_logits.float()
    if isinstance(teacher_logits, TopKLogits):
        log_p_s, log_p_t = top_k_buckets(student_logits, teacher_logits, temperature)
    else:
        log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_p_s, log_p_t, y, mask = task.align_logits(log_p_s, log_p_t, labels, attention_mask)
    divergence_sum = generalized_jsd(log_p_s[mask], log_p_t[mask], beta).sum()
    ce_sum = None
    if y is not None and hard_labels:
        s, _, _, _ = task.align_logits(student_logits, student_logits, labels, attention_mask)
        ce_sum = F.cross_entropy(s[mask], y[mask], reduction="sum")
    return ce_sum, divergence_sum, int(mask.sum())


def combine(ce_sum, kl_sum, denominator, alpha: float, temperature: float) -> torch.Tensor:
    """alpha * CE + (1 - alpha) * T^2 * KL per item; the KD term alone when there are no labels."""
    kd = temperature**2 * kl_sum / denominator
    if ce_sum is None:
        return kd
    return alpha * ce_sum / denominator + (1.0 - alpha) * kd


def _token_mask(attention_mask: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(like.shape[:2], dtype=like.dtype, device=like.device)
    return attention_mask.to(like.dtype)


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layer_map: Sequence[tuple[int, int]],
    projections: Optional[torch.nn.ModuleList],
    attention_mask: Optional[torch.Tensor],
    kind: str = "mse",
) -> torch.Tensor:
    """Mean over mapped layers of the per-token MSE (or 1 - cosine), averaged over real tokens.

    ``hidden_states[0]`` is the embedding output, so transformer layer ``i`` is at ``i + 1``.
    """
    total = 0.0
    for k, (s_layer, t_layer) in enumerate(layer_map):
        s = student_hidden[s_layer + 1].float()
        t = teacher_hidden[t_layer + 1].float()
        if projections is not None:
            s = projections[k](s)
        if kind == "cosine":
            per_token = 1.0 - F.cosine_similarity(s, t, dim=-1)
        else:
            per_token = (s - t).pow(2).mean(-1)
        mask = _token_mask(attention_mask, per_token)
        total = total + (per_token * mask).sum() / mask.sum().clamp(min=1)
    return total / len(layer_map)


def attention_loss(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor],
    layer_map: Sequence[tuple[int, int]],
    attention_mask: Optional[torch.Tensor],
) -> torch.Tensor:
    """KL between teacher and student attention distributions, per head when head counts match
    (MiniLM-style), else between head-averaged maps; averaged over real query positions."""
    total = 0.0
    eps = 1e-12
    for s_layer, t_layer in layer_map:
        s, t = student_attentions[s_layer].float(), teacher_attentions[t_layer].float()
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        per_query = (t * (torch.log(t + eps) - torch.log(s + eps))).sum(-1).mean(1)  # [B, L]
        mask = _token_mask(attention_mask, per_query)
        total = total + (per_query * mask).sum() / mask.sum().clamp(min=1)
    return total / len(layer_map)
