"""``validate``, ``preprocess`` and ``split``: from the raw snapshot to train and test windows."""

from __future__ import annotations

from include.retrain import features, registry
from include.retrain import validate as rules
from include.retrain.spec import SklearnModel
from include.retrain.split import time_split
from include.retrain.stages.context import StageContext
from include.retrain.stages.refs import Extracted, Preprocessed, Split, Validated


def validate(ctx: StageContext, ref: Extracted) -> Validated:
    """Schema, row count, timestamps, nulls, value bounds, frequency and gaps; the report is kept."""
    series = ref["series"]
    with ctx.about(series):
        frame = ctx.get_frame(ref["raw"])
        target = ctx.spec.series_by_name(series).target
        report = rules.run_rules(frame, ctx.spec, target, ctx.run.window_end)
        ctx.store.write(ctx.key(series, "validation.json"), registry.to_json(report))
        return Validated(**ref, validation=report)


def preprocess(ctx: StageContext, ref: Validated) -> Preprocessed:
    """A regular frequency with gaps filled; the feature table for scikit-learn models."""
    series = ref["series"]
    with ctx.about(series):
        frame = ctx.get_frame(ref["raw"])
        clean = features.regularize(frame, ctx.spec.series_by_name(series).target, ctx.spec)
        out = Preprocessed(**ref, clean=ctx.put_frame(series, "clean.parquet", clean))
        if isinstance(ctx.spec.model, SklearnModel):
            table = features.build_table(clean, ctx.spec.model)
            out["features"] = ctx.put_frame(series, "features.parquet", table)
        return out


def split(ctx: StageContext, ref: Preprocessed) -> Split:
    """Time-ordered: the model never sees the window it is scored on."""
    series = ref["series"]
    with ctx.about(series):
        clean = ctx.get_series(ref["clean"])
        train, test = time_split(clean, ctx.spec.split.test_size, min_train=ctx.min_train())
        return Split(
            **ref,
            train=ctx.put_frame(series, "train.parquet", train),
            test=ctx.put_frame(series, "test.parquet", test),
            rows_train=len(train),
            rows_test=len(test),
        )
