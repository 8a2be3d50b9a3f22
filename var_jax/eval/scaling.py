"""Power-law fits of test metrics against model size and training compute (the paper's Figures 5 and 6).

Input: a JSON-lines file, one line per trained model::

    {"name": "d4", "params": 2.1e6, "compute_flops": 3.4e15, "L_last": 4.91, "L_avg": 5.32,
     "Err_last": 88.1, "Err_avg": 90.2}

- ``params`` (required): number of parameters N.
- ``compute_flops`` or ``compute_pf_days`` (optional, one is enough): training compute C; fits use
  PF-days (1 PF-day = 10¹⁵ FLOP/s × 86,400 s), the paper's unit.
- metrics (at least one per line): ``L_last``, ``L_avg``, ``Err_last``, ``Err_avg`` as
  ``var_jax.eval.token_metrics`` reports them (losses in nats, error rates in percent).
- ``name`` (optional) labels the point.

For every (X, metric) pair with at least 3 models the fit is L = (β·X)^α, by least squares on
log L = α·log X + α·log β, with Pearson's r of (log X, log L).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any

import numpy as np

METRICS = ("L_last", "L_avg", "Err_last", "Err_avg")
FLOPS_PER_PF_DAY = 1e15 * 86400
MIN_POINTS = 3
X_LABELS = {"params": "parameters N", "compute": "training compute C (PF-days)"}


@dataclasses.dataclass(frozen=True)
class ModelResult:
    name: str
    params: float
    compute_pf_days: float | None
    metrics: dict[str, float]

    def x(self, axis: str) -> float | None:
        return self.params if axis == "params" else self.compute_pf_days


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    x: str        # "params" or "compute"
    metric: str
    alpha: float
    log10_beta: float  # β itself under- or overflows a float when α is tiny (β = 10^(intercept/α))
    r: float      # Pearson correlation of log x and log metric
    n: int

    @property
    def beta(self) -> float:
        return float(10.0 ** self.log10_beta) if abs(self.log10_beta) < 300 else (0.0 if self.log10_beta < 0 else math.inf)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return 10.0 ** (self.alpha * (self.log10_beta + np.log10(np.asarray(x, np.float64))))

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "beta": self.beta}


def _positive(line_no: int, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"line {line_no}: {key} must be a positive number, got {value!r}")
    return float(value)


def json_lines(path: pathlib.Path) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line of a JSON-lines file; a line that is not JSON is
    an error naming it."""
    out = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append((line_no, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {line_no} is not JSON ({e}); fix or remove that line") from e
    return out


def read_results(path: str | os.PathLike) -> list[ModelResult]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such results file: {path}")
    out = []
    for line_no, row in json_lines(path):
        if not isinstance(row, dict) or "params" not in row:
            raise ValueError(f"{path} line {line_no}: each line is an object with at least 'params' and one of "
                             f"{', '.join(METRICS)}")
        compute = None
        if "compute_pf_days" in row:
            compute = _positive(line_no, "compute_pf_days", row["compute_pf_days"])
        elif "compute_flops" in row:
            compute = _positive(line_no, "compute_flops", row["compute_flops"]) / FLOPS_PER_PF_DAY
        metrics = {m: _positive(line_no, m, row[m]) for m in METRICS if m in row}
        if not metrics:
            raise ValueError(f"{path} line {line_no} has none of the metrics {', '.join(METRICS)}")
        out.append(ModelResult(str(row.get("name", f"line {line_no}")), _positive(line_no, "params", row["params"]),
                               compute, metrics))
    return out


def fit_power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(α, log10 β, r) of y = (β·x)^α, least squares in log-log space."""
    lx, ly = np.log10(np.asarray(x, np.float64)), np.log10(np.asarray(y, np.float64))
    if len(lx) < 2 or np.ptp(lx) == 0:
        raise ValueError("a power-law fit needs at least two different x values")
    alpha, intercept = np.polyfit(lx, ly, 1)
    return float(alpha), float(intercept / alpha), float(np.corrcoef(lx, ly)[0, 1])


def fit_all(results: list[ModelResult]) -> list[PowerLawFit]:
    """Every (X, metric) fit the results allow; an error if there is none."""
    fits = []
    for axis in ("params", "compute"):
        for metric in METRICS:
            pts = [(r.x(axis), r.metrics[metric]) for r in results if r.x(axis) is not None and metric in r.metrics]
            if len(pts) >= MIN_POINTS and len({x for x, _ in pts}) >= 2:
                x, y = np.array(pts).T
                fits.append(PowerLawFit(axis, metric, *fit_power_law(x, y), n=len(pts)))
    if not fits:
        raise ValueError(f"nothing to fit: every fit needs at least {MIN_POINTS} models with the same metric "
                         f"(got {len(results)} model(s))")
    return fits


def plot_fits(results: list[ModelResult], fits: list[PowerLawFit], path: str | os.PathLike) -> pathlib.Path:
    """Log-log panels, one row per X (parameters, compute) and one column per metric: the models as
    points, the fit as a line, α, β and r in the legend."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_x = [a for a in ("params", "compute") if any(f.x == a for f in fits)]
    metrics = [m for m in METRICS if any(f.metric == m for f in fits)]
    fig, grid = plt.subplots(len(axes_x), len(metrics), figsize=(4 * len(metrics), 3.4 * len(axes_x)), squeeze=False)
    for row, axis in enumerate(axes_x):
        for col, metric in enumerate(metrics):
            ax = grid[row][col]
            fit = next((f for f in fits if f.x == axis and f.metric == metric), None)
            if fit is None:
                ax.set_visible(False)
                continue
            pts = [(r.x(axis), r.metrics[metric], r.name) for r in results
                   if r.x(axis) is not None and metric in r.metrics]
            x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
            line = np.geomspace(x.min(), x.max(), 100)
            ax.loglog(x, y, "o", color="tab:blue")
            for xi, yi, name in pts:
                ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.loglog(line, fit(line), "--", color="tab:red",
                      label=f"{metric} = (10^{fit.log10_beta:.3g}·X)^{fit.alpha:.4f}\nr = {fit.r:.4f}")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # narrow ranges label every minor tick
            ax.set_xlabel(X_LABELS[axis])
            ax.set_ylabel(metric + (" (%)" if metric.startswith("Err") else ""))
            ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def scaling_fit(results_path: str | os.PathLike, plot_path: str | os.PathLike | None = None) -> dict:
    """Fits of a results file and its plot (default: next to the file, ``<stem>_scaling.png``)."""
    results = read_results(results_path)
    fits = fit_all(results)
    plot_path = plot_path or pathlib.Path(results_path).with_name(pathlib.Path(results_path).stem + "_scaling.png")
    plot = plot_fits(results, fits, plot_path)
    return {"fits": [f.as_dict() for f in fits], "plot": str(plot), "num_models": len(results)}
