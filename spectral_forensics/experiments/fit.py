"""Small statistics for the experiment summaries: spreads, transition points, optima, power laws."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats


def spread(values: list[float]) -> dict[str, float]:
    """Return the mean, sample standard deviation, minimum, maximum and count of ``values``."""
    array = np.asarray(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def crossing(x: np.ndarray, y: np.ndarray, level: float) -> float | None:
    """Return the first x where the piecewise-linear curve ``y(x)`` reaches ``level``, or None."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if y[0] >= level:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= level:
            share = (level - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + share * (x[i] - x[i - 1]))
    return None


def refined_argmax(x: np.ndarray, y: np.ndarray) -> float:
    """Return the maximiser of ``y(x)`` on a grid, refined by a parabola through the best point
    and its two neighbours and kept between them. At either end of the grid it is that point."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    best = int(np.argmax(y))
    if best == 0 or best == len(x) - 1:
        return float(x[best])
    x3, y3 = x[best - 1 : best + 2], y[best - 1 : best + 2]
    curvature, slope, _ = np.polyfit(x3, y3, 2)
    if curvature >= 0:
        return float(x[best])
    return float(np.clip(-slope / (2 * curvature), x3[0], x3[2]))


def bootstrap_argmax(
    x: np.ndarray, samples: list[np.ndarray], resamples: int = 1000, seed: int = 0
) -> np.ndarray:
    """Return refined maxima of the mean curve, resampling each grid point's seeds with replacement.

    ``samples[i]`` contains the per-seed values at ``x[i]``.
    """
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for r in range(resamples):
        means = [rng.choice(s, size=len(s), replace=True).mean() for s in samples]
        out[r] = refined_argmax(x, np.asarray(means))
    return out


@dataclass
class PowerLawFit:
    """The fit y = a · N^(-b) with 95 % confidence intervals."""

    a: float
    b: float
    a_ci: tuple[float, float]
    b_ci: tuple[float, float]
    points: int

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["a_ci"] = list(self.a_ci)
        values["b_ci"] = list(self.b_ci)
        return values


def fit_power_law(n: Any, y: Any, sigma: Any = None) -> PowerLawFit:
    """Fit ``y = a · n^(-b)`` by least squares (scipy.optimize.curve_fit).

    Parameters
    ----------
    n, y : array_like
        Positive abscissae and the values to fit, at least three points.
    sigma : array_like, optional
        Standard errors of ``y``. With them the fit is weighted, and the intervals treat them
        as absolute errors (normal quantiles). Without them the residual scatter sets the errors
        (Student t quantiles with points - 2 degrees of freedom).

    Returns
    -------
    PowerLawFit
    """
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError(f"n and y must be 1-D arrays of one length, got shapes {n.shape} and {y.shape}")
    if n.size < 3:
        raise ValueError(f"a power law has 2 parameters; fitting it needs at least 3 points, got {n.size}")
    if not (np.all(np.isfinite(n)) and np.all(n > 0) and np.all(np.isfinite(y))):
        raise ValueError("n must be positive and finite and y finite for a power-law fit")
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=float)
        if sigma.shape != y.shape or not np.all(sigma > 0):
            raise ValueError("sigma must be positive, one value per point")
    positive = y > 0
    if positive.sum() >= 2:
        slope, intercept = np.polyfit(np.log(n[positive]), np.log(y[positive]), 1)
        start = (math.exp(intercept), -slope)
    else:
        start = (max(float(y.max()), 1e-3), 0.5)

    def model(x, a, b):
        return a * np.power(x, -b)

    params, covariance = optimize.curve_fit(
        model, n, y, p0=start, sigma=sigma, absolute_sigma=sigma is not None, maxfev=20000
    )
    errors = np.sqrt(np.clip(np.diag(covariance), 0, np.inf))
    quantile = stats.norm.ppf(0.975) if sigma is not None else stats.t.ppf(0.975, max(n.size - 2, 1))
    a, b = (float(p) for p in params)
    return PowerLawFit(
        a=a,
        b=b,
        a_ci=(a - quantile * float(errors[0]), a + quantile * float(errors[0])),
        b_ci=(b - quantile * float(errors[1]), b + quantile * float(errors[1])),
        points=int(n.size),
    )
