"""The training loss with train.class_weights, checked against the formula written out by hand."""

from __future__ import annotations

import pytest
import torch

from toolkit.training.step import training_loss

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2], [-0.4, 1.5, 0.2], [1.0, 1.0, 1.0]])
LABELS = torch.tensor([0, 2, 1, 2])


def by_hand(weights: list[float], smoothing: float) -> float:
    """sum_i w[y_i] * ((1 - s) * -log p_i[y_i] + s * mean_c(-w[c] / w[y_i] * log p_i[c])) / sum_i w[y_i].

    That is torch's definition: the smoothing term weights each class by its own weight.
    """
    logp = torch.log_softmax(LOGITS, dim=1).tolist()
    k = len(weights)
    total = norm = 0.0
    for row, y in zip(logp, LABELS.tolist()):
        nll = -weights[y] * row[y]
        smooth = -sum(w * lp for w, lp in zip(weights, row)) / k
        total += (1 - smoothing) * nll + smoothing * smooth
        norm += weights[y]
    return total / norm


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weights_change_the_loss_as_computed_by_hand(smoothing):
    weights = [0.5, 3.0, 1.5]
    loss = training_loss(weights, smoothing, torch.device("cpu"))(LOGITS, LABELS)
    assert float(loss) == pytest.approx(by_hand(weights, smoothing), rel=1e-6)
    assert float(loss) != pytest.approx(by_hand([1.0, 1.0, 1.0], smoothing), rel=1e-3)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_none_is_the_plain_cross_entropy(smoothing):
    criterion = training_loss("none", smoothing, torch.device("cpu"))
    assert criterion.weight is None
    plain = torch.nn.functional.cross_entropy(LOGITS, LABELS, label_smoothing=smoothing)
    assert torch.equal(criterion(LOGITS, LABELS), plain)
    assert float(plain) == pytest.approx(by_hand([1.0, 1.0, 1.0], smoothing), rel=1e-6)


def test_an_unresolved_word_is_a_bug_not_an_unweighted_loss():
    with pytest.raises(ValueError, match="not resolved"):
        training_loss("balanced", 0.0, torch.device("cpu"))
