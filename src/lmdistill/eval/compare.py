"""Comparing methods over seeds: mean and spread per cell, and a verdict against a baseline.

Pure arithmetic on plain numbers (no models), so the rules are tested on fixed inputs.

Spread is the sample standard deviation over seeds (n - 1 in the denominator; 0 for one seed). A
method beats the baseline on a metric only when the gap between the means is larger than the two
spreads together, |mean_m - mean_b| > sd_m + sd_b, i.e. the mean ± sd intervals do not overlap;
otherwise it is a tie. The rule is deliberately conservative: with 3 seeds a "win" is a gap the
seeds did not produce by themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

#: Metric -> True when higher is better.
HIGHER_IS_BETTER = {
    "top1": True,
    "kl": False,
    "perplexity": False,
    "rouge_l": True,
    "own_logprob": True,
    "human_perplexity": False,
}


@dataclass(frozen=True)
class Cell:
    """One method on one metric over seeds: mean, sample sd, min, max, n."""

    mean: float
    sd: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def cell(values: Sequence[float | None]) -> Cell | None:
    """Mean and spread of one metric over seeds. None values (a figure that does not exist for a run,
    e.g. the teacher's log-prob of answers that are all empty) are left out and `n` counts the rest;
    None when no value is left."""
    if not values:
        raise ValueError("no values to summarise")
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    if any(math.isnan(x) for x in xs):
        raise ValueError(f"NaN among the values: {xs}")
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return Cell(mean, sd, min(xs), max(xs), n)


def verdict(method: Cell | None, baseline: Cell | None, *, higher_is_better: bool) -> str:
    """ "better", "worse" or "tie" for `method` against `baseline` (see the module docstring); "n/a"
    when either has no value."""
    if method is None or baseline is None:
        return "n/a"
    gap = method.mean - baseline.mean
    if abs(gap) <= method.sd + baseline.sd:
        return "tie"
    return "better" if (gap > 0) == higher_is_better else "worse"


def summarise(
    runs: Sequence[Mapping],
    metrics: Sequence[str],
    *,
    baseline: str,
    method_key: str = "method",
    higher_is_better: Mapping[str, bool] = HIGHER_IS_BETTER,
) -> dict:
    """Per method (in first-seen order) and metric: the `Cell` as a dict, plus its verdict against the
    `baseline` method ("baseline" for the baseline itself).

    runs: one mapping per (method, seed) with `method_key` and every metric name as keys.
    Returns {method: {metric: {mean, sd, min, max, n, verdict}}} ({"verdict": "n/a", "n": 0} for a
    metric with no value).
    """
    by_method: dict[str, list[Mapping]] = {}
    for r in runs:
        by_method.setdefault(r[method_key], []).append(r)
    if baseline not in by_method:
        raise ValueError(f"baseline {baseline!r} has no runs (methods: {', '.join(by_method)})")
    cells = {m: {k: cell([r[k] for r in rs]) for k in metrics} for m, rs in by_method.items()}
    out: dict = {}
    for m, row in cells.items():
        out[m] = {}
        for k, c in row.items():
            if m == baseline:
                v = "baseline" if c is not None else "n/a"
            else:
                v = verdict(c, cells[baseline][k], higher_is_better=higher_is_better[k])
            out[m][k] = {**(c.as_dict() if c is not None else {"n": 0}), "verdict": v}
    return out
