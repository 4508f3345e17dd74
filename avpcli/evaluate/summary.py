"""Summaries of per-image figures for the reports: mean, spread and how many were undefined."""

from __future__ import annotations

import math
from typing import Sequence


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, standard deviation, min and max of the defined (non-NaN) values, and how many were NaN.

    Statistics of an empty set are None (JSON null, "undefined" in the tables).
    """
    defined = [float(value) for value in values if not math.isnan(float(value))]
    if not defined:
        return {"count": 0, "undefined": len(values), "mean": None, "std": None, "min": None, "max": None}
    mean = sum(defined) / len(defined)
    variance = sum((value - mean) ** 2 for value in defined) / len(defined)
    return {"count": len(defined), "undefined": len(values) - len(defined), "mean": mean,
            "std": math.sqrt(variance), "min": min(defined), "max": max(defined)}


def nan_to_none(value: float) -> float | None:
    """JSON has no NaN: an undefined number is written as null."""
    return None if math.isnan(value) else value
