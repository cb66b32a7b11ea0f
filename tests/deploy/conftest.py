"""Fixtures of the deploy tests: a rendered local profile and its environment file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from deploy import envfile
from deploy.profile import BUNDLE, Profile, local_profile


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    """The local profile (its venv exists, so ExecStart paths are real) writing into tmp_path."""
    return replace(local_profile({"RETRAIN_STACK_DIR": str(tmp_path)}), venv=BUNDLE / ".venv")


@pytest.fixture
def env(profile: Profile) -> dict[str, str]:
    values, _ = envfile.ensure(profile, {})
    return values
