"""The benchmark's aggregation on fixed inputs: means, spreads, the tie rule."""

import math

import pytest

from lmdistill.eval.compare import cell, summarise, verdict


def test_cell_mean_and_sample_sd():
    c = cell([1.0, 2.0, 3.0])
    assert c.mean == 2.0
    assert c.sd == pytest.approx(1.0)  # sample sd: sqrt(((1)^2 + 0 + 1^2) / 2)
    assert (c.min, c.max, c.n) == (1.0, 3.0, 3)


def test_cell_one_seed_has_no_spread():
    assert cell([0.25]).sd == 0.0


def test_cell_leaves_out_missing_values():
    c = cell([1.0, None, 3.0])
    assert (c.mean, c.n) == (2.0, 2)
    assert cell([None, None]) is None
    assert verdict(None, cell([1.0]), higher_is_better=True) == "n/a"


def test_summarise_marks_a_metric_without_values():
    runs = [{"method": "ce", "own": None}, {"method": "kd", "own": -2.0}]
    out = summarise(runs, ["own"], baseline="ce", higher_is_better={"own": True})
    assert out["ce"]["own"] == {"n": 0, "verdict": "n/a"}
    assert out["kd"]["own"]["verdict"] == "n/a" and out["kd"]["own"]["mean"] == -2.0


def test_cell_refuses_nothing_and_nan():
    with pytest.raises(ValueError):
        cell([])
    with pytest.raises(ValueError):
        cell([1.0, math.nan])


def test_verdict_gap_inside_spreads_is_a_tie():
    base = cell([0.30, 0.31, 0.32])  # mean 0.31, sd 0.01
    close = cell([0.325, 0.33, 0.335])  # mean 0.33, sd 0.005: gap 0.02 > 0.015 -> better
    overlapping = cell([0.31, 0.32, 0.33])  # mean 0.32, sd 0.01: gap 0.01 <= 0.02 -> tie
    assert verdict(close, base, higher_is_better=True) == "better"
    assert verdict(overlapping, base, higher_is_better=True) == "tie"


def test_verdict_direction_follows_the_metric():
    low = cell([1.0, 1.0, 1.0])
    high = cell([2.0, 2.0, 2.0])
    assert verdict(low, high, higher_is_better=False) == "better"  # lower KL is better
    assert verdict(low, high, higher_is_better=True) == "worse"
    assert verdict(high, high, higher_is_better=True) == "tie"  # equal means, no spread


def test_summarise_per_method_and_metric():
    runs = [
        {"method": "ce", "top1": 0.30, "kl": 3.0},
        {"method": "ce", "top1": 0.32, "kl": 3.2},
        {"method": "kd", "top1": 0.40, "kl": 2.0},
        {"method": "kd", "top1": 0.42, "kl": 3.1},
    ]
    out = summarise(runs, ["top1", "kl"], baseline="ce")
    assert list(out) == ["ce", "kd"]
    assert out["ce"]["top1"]["verdict"] == "baseline"
    assert out["kd"]["top1"]["mean"] == pytest.approx(0.41)
    assert out["kd"]["top1"]["verdict"] == "better"
    # kd's KL: mean 2.55, sd 0.778; ce: 3.1, sd 0.141; gap 0.55 < 0.92 -> tie
    assert out["kd"]["kl"]["verdict"] == "tie"


def test_summarise_needs_the_baseline():
    with pytest.raises(ValueError, match="baseline"):
        summarise([{"method": "kd", "top1": 0.4}], ["top1"], baseline="ce")
