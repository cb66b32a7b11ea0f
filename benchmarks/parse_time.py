"""How long parsing the DAG files takes, cold and warm, against one empty DAG.

"Cold" is what a dag-processor parse child or a task pays: a fresh interpreter that has
``airflow.sdk`` loaded already (both get it from their parent), then the files parsed.
"Warm" re-parses in the same process (a DagBag refresh). Each figure is the median of
``--repeat`` fresh processes.

    .venv/bin/python benchmarks/parse_time.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1]
EMPTY_DAG = '"""One empty DAG."""\nfrom airflow.sdk import DAG\n\ndag = DAG("empty", schedule=None)\n'
CHILD = r"""
import json, sys, time
import airflow.sdk  # loaded in the dag-processor and the task's parent before they fork
from airflow.dag_processing.dagbag import DagBag
path = sys.argv[1]
t0 = time.perf_counter(); bag = DagBag(path); cold = time.perf_counter() - t0
t0 = time.perf_counter(); DagBag(path); warm = time.perf_counter() - t0
heavy = [m for m in ("pandas", "numpy", "sklearn", "statsmodels", "boto3", "pyarrow") if m in sys.modules]
print(json.dumps({"cold": cold, "warm": warm, "dags": len(bag.dags), "errors": len(bag.import_errors),
                  "heavy": heavy}))
"""


def measure(path: Path, repeat: int) -> dict:
    """Median cold and warm seconds of parsing ``path`` (a file or a folder)."""
    runs = []
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, cwd=BUNDLE, check=True
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "cold_s": statistics.median(r["cold"] for r in runs),
        "warm_s": statistics.median(r["warm"] for r in runs),
        "dags": runs[0]["dags"],
        "errors": runs[0]["errors"],
        "heavy_imports": runs[0]["heavy"],
    }


def parse_times(dags: Path, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty_dag.py"
        empty.write_text(EMPTY_DAG)
        result = {"folder": measure(dags, repeat), "empty_dag": measure(empty, repeat)}
    result["files"] = {path.name: measure(path, repeat) for path in sorted(dags.glob("*.py"))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    result = parse_times(BUNDLE / "dags", args.repeat)
    print(f"{'what':<28} {'cold ms':>8} {'warm ms':>8}  dags  heavy imports")
    rows = [
        ("one empty DAG", result["empty_dag"]),
        ("dags/ (whole folder)", result["folder"]),
        *result["files"].items(),
    ]
    for name, row in rows:
        heavy = ",".join(row["heavy_imports"]) or "none"
        print(f"{name:<28} {row['cold_s'] * 1000:8.1f} {row['warm_s'] * 1000:8.1f}  {row['dags']:>4}  {heavy}")


if __name__ == "__main__":
    main()
