"""How long the dag-processor spends parsing each DAG file, and the whole folder.

The dag-processor parses every file in a fresh child process that already has Airflow
imported, so "cold" here is that: a new interpreter, ``airflow.sdk`` preloaded, then one
file parsed. "Warm" re-parses in the same process (what a DagBag refresh costs).

    .venv/bin/python benchmarks/parse_time.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, sys, time
import airflow.sdk  # preloaded in the dag-processor before it forks a parser
from airflow.dag_processing.dagbag import DagBag
path = sys.argv[1]
t0 = time.perf_counter(); bag = DagBag(path); cold = time.perf_counter() - t0
warm = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter(); DagBag(path); warm.append(time.perf_counter() - t0)
heavy = [m for m in ("pandas", "numpy", "sklearn", "statsmodels", "boto3", "pyarrow") if m in sys.modules]
print(json.dumps({"cold": cold, "warm": min(warm), "dags": len(bag.dags), "errors": len(bag.import_errors),
                  "heavy": heavy}))
"""


def measure(path: Path, repeat: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(repeat)], capture_output=True, text=True, cwd=BUNDLE, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    files = sorted((BUNDLE / "dags").glob("*.py"))
    print(f"{'file':<28} {'cold ms':>8} {'warm ms':>8}  dags  heavy imports")
    colds, warms = [], []
    for path in files:
        runs = [measure(path, args.repeat) for _ in range(args.repeat)]
        cold = statistics.median(r["cold"] for r in runs) * 1000
        warm = min(r["warm"] for r in runs) * 1000
        colds.append(cold)
        warms.append(warm)
        heavy = ",".join(runs[0]["heavy"]) or "none"
        print(f"{path.name:<28} {cold:8.1f} {warm:8.1f}  {runs[0]['dags']:>4}  {heavy}")
    print(f"{'whole folder':<28} {sum(colds):8.1f} {sum(warms):8.1f}")


if __name__ == "__main__":
    main()
