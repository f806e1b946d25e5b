"""Unit tests of the training job's parts: batching, class weights, schedule, metrics, debugger rules."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = str(Path(__file__).resolve().parents[2] / "include" / "scripts")
if SCRIPTS not in sys.path:  # the job scripts import their siblings as top-level modules
    sys.path.insert(0, SCRIPTS)

from common import available_cores, write_json_atomic  # noqa: E402 - needs SCRIPTS on sys.path
from train_data import EpochBatches, Split, class_weights, collate, epoch_class_counts, epoch_rows, plan_batches, truncate  # noqa: E402
from train_debugger import Debugger, DebuggerConfig, layer_of, parse_actions  # noqa: E402
from train_device import auto_threads  # noqa: E402
from train_eval import scores  # noqa: E402
from train_schedule import BudgetSchedule, Clock  # noqa: E402


def make_split(lengths: list[int], labels: list[int]) -> Split:
    ids = [np.arange(1, n + 1, dtype=np.int32) for n in lengths]
    return Split("train", Path("/x"), ids, np.asarray(labels, dtype=np.int64))


def test_plan_batches_uses_every_row_once_and_is_deterministic():
    lengths = np.random.default_rng(0).integers(5, 128, 1000)
    rows = np.arange(1000)
    a = plan_batches(lengths, rows, 16, seed=1, epoch=0)
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    same_epoch, next_epoch = (plan_batches(lengths, rows, 16, seed=1, epoch=e) for e in (0, 1))
    assert all(np.array_equal(x, y) for x, y in zip(a, same_epoch, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, next_epoch, strict=True))


def test_length_grouping_cuts_padding():
    lengths = np.random.default_rng(0).integers(5, 128, 2000)
    rows = np.arange(2000)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    grouped = padded(plan_batches(lengths, rows, 16, 0, 0, group_by_length=True))
    plain = padded(plan_batches(lengths, rows, 16, 0, 0, group_by_length=False))
    assert grouped < 0.7 * plain and grouped >= lengths.sum()


def test_collate_pads_dynamically_or_to_fixed_width():
    s = make_split([3, 5], [0, 2])
    dyn = collate(s, np.array([0, 1]), pad_id=0)
    assert dyn["input_ids"].shape == (2, 5) and dyn["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert collate(s, np.array([0, 1]), pad_id=0, pad_to=8)["input_ids"].shape == (2, 8)
    assert dyn["labels"].tolist() == [0, 2]


def test_truncate_keeps_the_final_sep_token():
    assert truncate(np.array([101, 5, 6, 7, 102]), 4).tolist() == [101, 5, 6, 102]


def test_balanced_class_weights_favour_rare_classes():
    w = class_weights({0: 100, 1: 100, 2: 800}, "balanced")
    assert w[0] == pytest.approx(w[1]) and w[0] == pytest.approx(8 * w[2])
    assert class_weights({0: 1, 1: 1, 2: 1}, "none") is None


def test_class_weights_balance_the_capped_epoch_not_the_whole_channel():
    counts = {0: 100, 1: 150, 2: 1000}
    per_epoch = epoch_class_counts(counts, 1.5)
    assert per_epoch == {0: 100, 1: 150, 2: 150}
    labels = np.repeat([0, 1, 2], [100, 150, 1000])
    drawn = np.bincount(labels[epoch_rows(labels, 1.5, 0, 0)])
    assert drawn.tolist() == [100, 150, 150]  # what epoch_rows really draws
    w = class_weights(per_epoch, "balanced")
    # every class carries the same total weight in an epoch
    mass = [w[c] * per_epoch[c] for c in range(3)]
    assert np.allclose(mass, mass[0])
    assert epoch_class_counts(counts, 0) == counts


def test_epoch_batches_sampler_redraws_the_capped_rows_per_epoch():
    split = make_split(list(range(5, 135)), [0] * 10 + [1] * 20 + [2] * 100)
    sampler = EpochBatches(split, 8, max_class_ratio=2.0, seed=0, group_by_length=True)
    first = [i for b in sampler for i in b]
    assert len(sampler) == 7 and sorted(first) == sorted(epoch_rows(split.labels, 2.0, 0, 0).tolist())
    sampler.set_epoch(1)
    assert sorted(i for b in sampler for i in b) != sorted(first)


def test_epoch_rows_caps_majority_class_and_redraws_each_epoch():
    labels = np.array([0] * 10 + [1] * 20 + [2] * 100)
    e0, e1 = epoch_rows(labels, 2.0, 0, 0), epoch_rows(labels, 2.0, 0, 1)
    assert np.bincount(labels[e0]).tolist() == [10, 20, 20]
    assert set(e0[labels[e0] == 2]) != set(e1[labels[e1] == 2])
    assert len(epoch_rows(labels, 0, 0, 0)) == 130


def test_budget_schedule_warms_up_then_decays_to_zero_by_time_or_steps():
    clock = Clock()
    s = BudgetSchedule(0.1, total_steps=100, time_budget_s=10, clock=clock)
    assert s(5) == pytest.approx(0.5, abs=1e-3)
    clock.earlier_s = 5.0  # time share (0.5) is ahead of the step share (0.1)
    assert s(10) == pytest.approx(0.5 / 0.9, abs=1e-3)
    clock.earlier_s = 10.0
    assert s(20) == 0.0 and s.done()


def test_budget_schedule_is_trainers_lr_lambda_and_survives_a_state_dict_round_trip():
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = BudgetSchedule(0.1, total_steps=100)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: s(step))
    for _ in range(5):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.5)
    torch.save(sched.state_dict(), "/dev/null")  # numbers only: Trainer's checkpoint can hold it


def test_auto_threads_stays_within_the_cores():
    assert 1 <= auto_threads(2) <= 2


def test_available_cores_honours_sm_num_cpus(monkeypatch):
    monkeypatch.setenv("SM_NUM_CPUS", "3")
    assert available_cores() == 3
    monkeypatch.delenv("SM_NUM_CPUS")
    assert available_cores() >= 1


def test_macro_f1_averages_the_classes_present_in_the_labels():
    y = np.array([0, 0, 1, 1])
    m = scores(y, np.array([0, 0, 1, 2]))  # class 2 predicted but absent: not averaged in
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_json_is_written_atomically_without_leftovers(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "m.json", {"a": np.float32(0.5)})
    assert path.read_text().replace(" ", "").replace("\n", "") == '{"a":0.5}'
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_loss_not_decreasing_rule_triggers_on_flat_loss():
    d = Debugger(DebuggerConfig(interval=1, loss_window=3))
    for step in range(1, 7):
        d.on_step(step, 0.0, 1.0, 1e-4, 1.0)
    assert d.rules["loss_not_decreasing"].triggered and not d.should_stop


def test_loss_not_decreasing_rule_is_quiet_while_loss_falls():
    d = Debugger(DebuggerConfig(interval=1, loss_window=3))
    for step in range(1, 13):
        d.on_step(step, 0.0, 2.0 / step, 1e-4, 1.0)
    assert not d.rules["loss_not_decreasing"].triggered


def test_overfit_rule_with_stop_action_requests_a_stop():
    d = Debugger(DebuggerConfig(actions=parse_actions("overfit=stop"), overfit_patience=2))
    for i, (tr, va) in enumerate([(1.0, 0.9), (0.8, 0.95), (0.6, 1.0)]):
        d.on_eval(i, i, tr, va, 0.5)
    assert d.rules["overfit"].triggered and d.should_stop and "overfit" in d.stop_reason


def test_vanishing_and_nan_rules():
    d = Debugger(DebuggerConfig(interval=1, vanishing_patience=2))
    d.on_step(1, 0, 1.0, 1e-4, 1e-9)
    d.on_step(2, 0, 1.0, 1e-4, 1e-9)
    assert d.rules["vanishing_gradient"].triggered
    d.on_step(3, 0, float("nan"), 1e-4, 1.0)
    assert d.rules["exploding_tensor"].triggered and d.should_stop  # exploding_tensor defaults to stop


def test_debugger_state_survives_a_checkpoint_round_trip():
    d = Debugger(DebuggerConfig(interval=1, vanishing_patience=1))
    d.on_step(1, 0, 1.0, 1e-4, 1e-9)
    e = Debugger(DebuggerConfig(interval=1))
    e.load_state_dict(d.state_dict())
    assert e.rules["vanishing_gradient"].triggered and len(e.records) == 1


def test_bad_rule_action_is_rejected_with_allowed_values():
    with pytest.raises(ValueError, match="ACTION in log, stop"):
        parse_actions("overfit=panic")


def test_layer_names_group_parameters():
    assert layer_of("bert.encoder.layer.3.attention.self.query.weight") == "encoder.layer.3"
    assert layer_of("bert.embeddings.word_embeddings.weight") == "embeddings"
    assert layer_of("classifier.bias") == "classifier"
