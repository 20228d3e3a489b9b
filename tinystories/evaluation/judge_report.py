"""The judge's report: each criterion's mean with a 95% confidence interval (Student's t), and one record per
grading for the .judged.jsonl file."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict
from typing import Any, Iterator, Optional

from tinystories.evaluation.judge import Grading, Judge
from tinystories.evaluation.judge_protocol import (
    AGE_GROUPS,
    CRITERIA,
    PROMPT_VERSION,
)


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """The `probability` quantile (above 0.5) of Student's t distribution, by bisection on its CDF, which is
    integrated from the density with Simpson's rule (accurate to about 1e-9 for these uses)."""
    df = degrees_of_freedom
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    def cdf(x: float, steps: int = 2000) -> float:
        h = x / steps
        total = density(0.0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return 0.5 + total * h / 3

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def mean_interval(values: list[int]) -> dict[str, Optional[float]]:
    """The mean and its 95% confidence interval, mean ± t(0.975, n-1) · s / sqrt(n) (s: the sample standard
    deviation); the interval is null for fewer than two values."""
    if not values:
        return {"mean": None, "ci95_low": None, "ci95_high": None}
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95_low": None, "ci95_high": None}
    deviation = math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * deviation / math.sqrt(n)
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half}


def judge_report(judge: Judge, gradings: list[Grading]) -> dict[str, Any]:
    graded = [g.grades for g in gradings if g.grades is not None]
    ages = Counter(grades["age_group"] for grades in graded)
    return {
        "judge_model": judge.model, "endpoint_host": judge.host, "prompt_version": PROMPT_VERSION,
        "items": len(gradings), "graded": len(graded), "ungraded": len(gradings) - len(graded),
        "criteria": {criterion: mean_interval([grades[criterion] for grades in graded]) for criterion in CRITERIA},
        "age_groups": {letter: ages.get(letter, 0) for letter in AGE_GROUPS},
        "requests": sum(g.requests for g in gradings),
        "from_cache": sum(1 for g in gradings if g.requests == 0 and g.grades is not None),
        # Tokens of every grading in the report, cached ones included (what the gradings cost when asked).
        "prompt_tokens": sum(g.prompt_tokens for g in gradings),
        "completion_tokens": sum(g.completion_tokens for g in gradings),
    }


def grading_records(gradings: list[Grading], **common: Any) -> Iterator[dict[str, Any]]:
    """One JSON-ready record per grading (for the JSONL file beside the report), with `common` fields first."""
    for number, grading in enumerate(gradings):
        record = asdict(grading)
        yield {**common, "number": number, **record}
