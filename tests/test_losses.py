"""The distillation loss against an independent NumPy computation on fixed logits."""

import numpy as np
import pytest
import torch

from hfcompress.distillation.losses import combine, count_items, distillation_loss_sums


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference(s, t, y, alpha, T):
    """Mean over items of alpha*CE + (1-alpha)*T^2*KL(p_t || p_s), or T^2*KL without labels."""
    p_t, p_s = _softmax(t / T), _softmax(s / T)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(-1)
    if y is None:
        return float(T**2 * kl.mean())
    ce = -np.log(_softmax(s)[np.arange(len(y)), y])
    return float((alpha * ce + (1 - alpha) * T**2 * kl).mean())


def _loss(task, s, t, y, alpha, T, mask=None):
    ce, kl, n = distillation_loss_sums(task, torch.tensor(s), torch.tensor(t), None if y is None else torch.tensor(y), T, mask)
    return float(combine(ce, kl, n, alpha, T)), n


@pytest.mark.parametrize("alpha,T", [(0.5, 2.0), (0.0, 1.0), (1.0, 4.0), (0.3, 0.5)])
def test_sequence_classification_loss_matches_reference(alpha, T):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 3)) * 3, rng.normal(size=(6, 3)) * 3
    y = rng.integers(0, 3, size=6)
    loss, n = _loss("text-classification", s, t, y, alpha, T)
    assert n == 6
    assert loss == pytest.approx(_reference(s, t, y, alpha, T), rel=1e-5)


def test_without_labels_the_loss_is_the_kd_term_alone():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    loss, _ = _loss("text-classification", s, t, None, alpha=0.5, T=3.0)
    assert loss == pytest.approx(_reference(s, t, None, 0.5, 3.0), rel=1e-5)


def test_token_level_loss_ignores_positions_labelled_minus_100():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
    y = np.array([[0, 1, -100, 2, -100], [-100, 2, 2, 0, 1]])
    keep = y != -100
    loss, n = _loss("token-classification", s, t, y, 0.5, 2.0)
    assert n == keep.sum() == 7
    assert loss == pytest.approx(_reference(s[keep], t[keep], y[keep], 0.5, 2.0), rel=1e-5)


def test_causal_lm_loss_is_per_next_token_over_the_vocabulary():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(2, 4, 7)), rng.normal(size=(2, 4, 7))
    y = np.array([[1, 2, 3, -100], [4, 5, 6, 0]])
    # position i predicts token i+1: drop the last logits and the first labels
    s_shift, t_shift, y_shift = s[:, :-1], t[:, :-1], y[:, 1:]
    keep = y_shift != -100
    loss, n = _loss("text-generation", s, t, y, 0.25, 2.0)
    assert n == count_items("text-generation", torch.tensor(y), None, 2) == 5
    assert loss == pytest.approx(_reference(s_shift[keep], t_shift[keep], y_shift[keep], 0.25, 2.0), rel=1e-5)


def test_identical_logits_have_zero_kd_term():
    x = np.random.default_rng(4).normal(size=(3, 2))
    assert _loss("text-classification", x, x, None, 0.5, 2.0)[0] == pytest.approx(0.0, abs=1e-7)
