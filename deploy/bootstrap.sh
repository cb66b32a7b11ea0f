#!/usr/bin/env bash
# Create the virtualenv and install the pinned requirements. Says what it does.
# Usage: deploy/bootstrap.sh PYTHON VENV
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if ! command -v "$python" >/dev/null; then
  echo "[bootstrap] $python not found: install Python 3.11+ (apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "[bootstrap] $("$python" --version) is too old: Python 3.11+ is needed (set PYTHON=python3.11)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[bootstrap] the venv module is missing: installing python3-venv with apt-get"
      apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
      "$python" -m venv "$venv"
    else
      echo "[bootstrap] '$python -m venv' failed: install python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  echo "[bootstrap] created virtualenv $venv with $("$python" --version)"
fi
echo "[bootstrap] installing pinned requirements into $venv (constraints.txt)"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
echo "[bootstrap] $venv is ready: $("$venv/bin/airflow" version 2>/dev/null | tail -1 | sed 's/^/Airflow /')"
