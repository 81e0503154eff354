"""Distillation losses, as sums over items so that gradient accumulation can normalise them globally.

An *item* is what one prediction is made for: an example for sequence classification, a labelled
(or, without labels, an attended) token for token classification, and a next-token position for
causal LM (labels shifted by one, as the model's own loss does).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..tasks import Task, get_task


def count_items(task: str | Task, labels: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor], batch_size: int) -> int:
    """How many items a batch contributes; must agree with :func:`distillation_loss_sums`."""
    return get_task(task).count_items(labels, attention_mask, batch_size)


def distillation_loss_sums(
    task: str | Task,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor],
    temperature: float,
    attention_mask: Optional[torch.Tensor] = None,
):
    """Return (cross-entropy sum or None, KL sum, number of items).

    KL is KL(softmax(t/T) || softmax(s/T)) per item, summed; cross-entropy is on the student's
    un-tempered logits against the hard labels, summed over the same items.
    """
    s, t, y, mask = get_task(task).align_logits(student_logits.float(), teacher_logits.float(), labels, attention_mask)
    s, t = s[mask], t[mask]
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl_sum = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum")
    ce_sum = F.cross_entropy(s, y[mask], reduction="sum") if y is not None else None
    return ce_sum, kl_sum, int(mask.sum())


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
