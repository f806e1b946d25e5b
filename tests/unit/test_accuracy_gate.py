"""check_accuracy's rule: min_accuracy, beat the champion by min_improvement, not worse than the baseline."""
from __future__ import annotations

import pytest

from include.pipeline.steps import accuracy_gate


@pytest.mark.parametrize("acc, champion, baseline, min_improvement, ok, words", [
    (0.70, None, None, 0.0, True, "registering"),                 # first model ever
    (0.70, 0.68, 0.66, 0.01, True, "registering"),                # beats both
    (0.685, 0.68, None, 0.01, False, "does not beat the champion"),  # better, but not by min_improvement
    (0.70, 0.68, 0.71, 0.0, False, "worse than the AutoML baseline"),
    (0.67, 0.68, None, -0.02, True, "registering"),               # a negative min_improvement tolerates a drop
    (0.40, None, 0.30, 0.0, False, "min_accuracy"),
])
def test_gate_decision_and_note_name_the_three_numbers(acc, champion, baseline, min_improvement, ok, words):
    passed, note = accuracy_gate({"accuracy": acc}, 0.5, champion, baseline, min_improvement)
    assert passed is ok and words in note
    assert f"new {acc:.4f}" in note
    assert (f"champion {champion:.4f}" if champion is not None else "champion none") in note
    assert (f"baseline {baseline:.4f}" if baseline is not None else "baseline none") in note


def test_equal_to_the_baseline_is_not_worse():
    assert accuracy_gate({"accuracy": 0.66}, 0.5, None, 0.66)[0] is True
