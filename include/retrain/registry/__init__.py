"""The model registry: immutable versions, their manifests, and two pointers per series.

Every candidate that reaches the gate is kept as a version under its own prefix
(``model.pkl``, ``profile.json``, ``evaluation.json``, then the ``manifest.json`` that
vouches for them and records the gate's decision). ``latest.json`` names the newest
version whatever its decision; ``champion.json`` names the version consumers load and
moves only on promotion, force or rollback, with a conditional write so two writers can
never both move it.

Pickles are loaded only after their sha256 matches the manifest, and, when a signing key
is configured, after the manifest's HMAC matches too: unpickling runs code, and a swapped
or tampered file must be refused, not executed.

Where things are: ``artifacts`` (checksums, pickles, JSON, signatures), ``manifest`` (a
version's record), ``evaluation`` (its test-window forecast beside the recent actuals),
``pointers`` (``latest.json``, ``champion.json`` and their moves), ``versions`` (loading
and listing), ``targets`` (a pipeline's series and where it lives) and ``operations``
(what an operator does: list, show, promote, rollback, verify, repair), which the
registry CLI, the DAGs and the Models page call.
The names below are re-exported so ``registry.read_champion(...)`` needs no submodule.
"""

from include.retrain.registry.artifacts import (
    LIBRARIES,
    SIGNATURE_SCHEME,
    check_signature,
    dumps,
    library_versions,
    read_json,
    sha256,
    sign,
    to_json,
    verified_loads,
)
from include.retrain.registry.evaluation import (
    EVALUATION_FILE,
    actual_points,
    dump_evaluation,
    read_evaluation,
)
from include.retrain.registry.manifest import MANIFEST_FIELDS, build_manifest, check_manifest, read_manifest
from include.retrain.registry.pointers import (
    POINTER_FIELDS,
    agrees,
    move_champion,
    pointer_to,
    publish,
    read_champion,
    repair_champion,
)
from include.retrain.registry.versions import (
    list_versions,
    load_champion,
    load_model,
    load_version,
    overview,
    series_names,
    summary,
    version_dirs,
)

__all__ = [
    "EVALUATION_FILE",
    "LIBRARIES",
    "MANIFEST_FIELDS",
    "POINTER_FIELDS",
    "SIGNATURE_SCHEME",
    "actual_points",
    "agrees",
    "build_manifest",
    "check_manifest",
    "check_signature",
    "dump_evaluation",
    "dumps",
    "library_versions",
    "list_versions",
    "load_champion",
    "load_model",
    "load_version",
    "move_champion",
    "overview",
    "pointer_to",
    "publish",
    "read_champion",
    "read_evaluation",
    "read_json",
    "read_manifest",
    "repair_champion",
    "series_names",
    "sha256",
    "sign",
    "summary",
    "to_json",
    "verified_loads",
    "version_dirs",
]
