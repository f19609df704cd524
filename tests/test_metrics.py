"""The task metric, checked against hand computations on small logits."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.tasks.metrics import AnswerMetric

# Two prompts over a vocabulary of 5 tokens.
LOGITS = torch.tensor([[2.0, 0.0, 1.0, -1.0, 0.5],
                       [0.0, 3.0, 0.0, 1.0, -2.0]])


def test_logit_difference_of_one_answer_each() -> None:
    metric = AnswerMetric.from_pairs(torch.tensor([[0, 2], [3, 1]]))
    assert metric.is_pairs and metric.is_linear
    assert metric(LOGITS).tolist() == [2.0 - 1.0, 1.0 - 3.0]


def test_greater_than_probability_difference_by_hand() -> None:
    """Tokens 0..4 stand for years 00..04; prompt 0 has YY = 01 (correct: 02, 03, 04), prompt 1 YY = 02."""
    metric = AnswerMetric.from_sets("prob_diff", [[2, 3, 4], [3, 4]], [[0, 1], [0, 1, 2]])
    e = [[math.exp(v) for v in row] for row in LOGITS.tolist()]
    p = [[v / sum(row) for v in row] for row in e]
    expected = [p[0][2] + p[0][3] + p[0][4] - p[0][0] - p[0][1],
                p[1][3] + p[1][4] - p[1][0] - p[1][1] - p[1][2]]
    torch.testing.assert_close(metric(LOGITS), torch.tensor(expected), atol=1e-6, rtol=0)
    assert not metric.is_pairs and not metric.is_linear
    # the linear readout (what direct logit attribution explains): mean correct minus mean incorrect logit
    torch.testing.assert_close(metric.logit_diff(LOGITS), torch.tensor([
        (1.0 - 1.0 + 0.5) / 3 - (2.0 + 0.0) / 2, (1.0 - 2.0) / 2 - (0.0 + 3.0 + 0.0) / 3]))


def test_the_direction_reads_the_logit_difference_from_the_residual_stream() -> None:
    torch.manual_seed(0)
    w_u, b_u, resid = torch.randn(6, 5), torch.randn(5), torch.randn(2, 6)
    metric = AnswerMetric.from_sets("prob_diff", [[2, 3, 4], [3]], [[0, 1], [0, 1, 2]])
    logits = resid @ w_u + b_u
    torch.testing.assert_close((resid * metric.direction(w_u)).sum(-1) + metric.bias(b_u), metric.logit_diff(logits))


def test_rows_repeated_config_by_config_are_scored_prompt_by_prompt() -> None:
    metric = AnswerMetric.from_sets("prob_diff", [[2], [3, 4]], [[0], [1]])
    torch.testing.assert_close(metric(torch.cat([LOGITS, LOGITS])), metric(LOGITS).repeat(2))


def test_selecting_prompts_drops_unused_slots() -> None:
    metric = AnswerMetric.from_sets("logit_diff", [[2, 3, 4], [3]], [[0, 1], [0]])
    kept = metric.select([1])
    assert kept.tokens.tolist() == [[3, 0]] and kept.signs.tolist() == [[1, -1]] and kept.is_pairs


def test_answer_sets_must_be_disjoint_and_non_empty() -> None:
    with pytest.raises(ValueError, match="disjoint"):
        AnswerMetric.from_sets("prob_diff", [[1, 2]], [[2]])
    with pytest.raises(ValueError, match="non-empty"):
        AnswerMetric.from_sets("prob_diff", [[]], [[2]])
