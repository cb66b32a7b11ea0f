"""Synthetic pipelines for the benchmark: weekly series like co2_weekly, over a file source.

Every pipeline reads one CSV of ``MAX_SERIES`` columns (a trend, a yearly cycle and noise,
one column per series) and uses the same model as ``co2_weekly`` (STL + ARIMA, yearly
period, walk-forward backtest), so the benchmark measures the shipped workload at any
series count without a network or a large data set in the repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

MAX_SERIES = 32
WEEKS = 1040  # co2_weekly's max_history: twenty years of weeks
CO2_LIKE = {
    "frequency": "W-SAT",
    "window": {"max_history": WEEKS},
    "validation": {"min_rows": 156, "max_null_fraction": 0.05},
    "model": {"kind": "stl_arima", "order": [1, 1, 1], "trend": "t", "period": 52},
    "split": {"test_size": 52, "refit_on_full": True},
    "evaluation": {
        "metrics": ["mae", "rmse", "mape"],
        "backtest_folds": 3,
        "primary_metric": "mae",
        "baseline": "seasonal_naive",
        "season_length": 52,
    },
}


def series_names(count: int) -> list[str]:
    return [f"s{i:02d}" for i in range(count)]


def weekly_frame(weeks: int = WEEKS, columns: int = MAX_SERIES, seed: int = 3) -> pd.DataFrame:
    """``columns`` co2-like series: level 300-400, slow trend, yearly cycle, noise."""
    rng = np.random.default_rng(seed)
    index = pd.date_range(end="2025-12-27", periods=weeks, freq="W-SAT")
    t = np.arange(weeks)
    data = {"week": index.strftime("%Y-%m-%d")}
    for i, name in enumerate(series_names(columns)):
        level = (
            300 + 3 * i + 0.03 * t + 3 * np.sin(2 * np.pi * t / 52.18 + i) + rng.normal(0, 0.4, weeks).cumsum() * 0.1
        )
        data[name] = level.round(3)
    return pd.DataFrame(data)


def write_csv(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    weekly_frame().to_csv(path, index=False)
    return path


def spec(name: str, series: int, csv: Path) -> dict:
    return {
        "name": name,
        "description": f"Benchmark pipeline: {series} synthetic weekly series, the co2_weekly model.",
        "schedule": "0 6 * * 1",
        "start_date": "2024-01-01",
        "source": {"kind": "file", "path": str(csv), "time_column": "week"},
        "series": [{"name": s, "target": s} for s in series_names(series)],
        **CO2_LIKE,
        "tags": ["benchmark"],
    }


def write_pipeline(name: str, series: int, csv: Path, pipelines: Path, dags: Path | None) -> Path:
    """The spec in ``pipelines``; with ``dags``, also the one-line DAG file that builds it."""
    pipelines.mkdir(parents=True, exist_ok=True)
    path = pipelines / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec(name, series, csv), sort_keys=False))
    if dags is not None:
        dags.mkdir(parents=True, exist_ok=True)
        (dags / f"retrain_{name}.py").write_text(
            f'"""Benchmark pipeline {name}."""\n\nfrom include.retrain_airflow.factory import build_retrain_dag\n\n'
            f'dag = build_retrain_dag("{name}")\n'
        )
    return path
