"""Fixtures of the acceptance tests: the example setup, as a user has it after cloning."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path, repo_root: Path) -> Path:
    """A copy of the example setup: config.toml and examples/leads.csv in a fresh directory."""
    shutil.copy(repo_root / "config.example.toml", tmp_path / "config.toml")
    (tmp_path / "examples").mkdir()
    shutil.copy(repo_root / "examples" / "leads.csv", tmp_path / "examples" / "leads.csv")
    return tmp_path
