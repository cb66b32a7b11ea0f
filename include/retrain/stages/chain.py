"""The chain in order, for whoever runs it outside Airflow (benchmarks, tests)."""

from __future__ import annotations

from include.retrain.stages import gating, prepare, publishing, snapshots, training

CHAIN = (
    snapshots.extract,
    prepare.validate,
    prepare.preprocess,
    prepare.split,
    training.train,
    training.evaluate,
    gating.gate,
    publishing.publish,
    publishing.promote,
)
