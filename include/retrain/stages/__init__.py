"""The retraining chain for one series, one stage per function, over a model store.

Each stage is ``stage(ctx, ref) -> ref``: it reads the artifacts its upstream stage wrote,
writes its own under the run's version, and returns a small typed dict of keys
(``refs``) for the next stage. That dict is what travels through XCom, never a frame or a
model. Keys depend only on the pipeline, the series and the run's version, so a retry or
a rerun overwrites the same keys. ``chain.CHAIN`` lists them in order.

    snapshots.extract → prepare.validate → prepare.preprocess → prepare.split
    → training.train → training.evaluate → gating.gate → publishing.publish → publishing.promote

The last three are the registry's: ``gate`` scores the champion on the candidate's
windows and decides, ``publish`` keeps every candidate as an immutable version (with the
decision and a drift profile), and ``promote`` moves ``champion.json`` when the gate said so.

Nothing is imported here: DAG files import ``refs`` (typing only) at parse time and must
not pull in pandas through this package.
"""
