"""The wheel carries what an installed package needs: the Alembic migrations and py.typed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(repo)],
        check=True,
        timeout=300,
    )
    [built] = out.glob("pinecall_dispatch-*.whl")
    return built


def test_the_wheel_ships_migrations_and_type_markers(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "dispatch/_migrations/env.py",
        "dispatch/_migrations/script.py.mako",
        "dispatch/_migrations/versions/0001_initial.py",
        "dispatch/py.typed",
        "strategies/py.typed",
    } <= names
    assert not any(name.startswith(("tests/", "migrations/")) for name in names)


def test_an_installed_package_migrates_from_its_own_copy(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.toml").write_text('[[strategies]]\nkind = "csv"\npath = "leads.csv"\n')
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dispatch.store.migrate import migrations_dir; print(migrations_dir())",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()) == target / "dispatch" / "_migrations"
    result = subprocess.run(
        [sys.executable, "-m", "dispatch.cli", "db", "upgrade", "-c", "config.toml"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (work / "dispatch.db").exists()
    shutil.rmtree(target)
