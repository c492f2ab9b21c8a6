from __future__ import annotations

import importlib
import inspect

import pytest

import dispatch
import strategies

PUBLIC_MODULES = [
    "dispatch.abc",
    "dispatch.clock",
    "dispatch.errors",
    "dispatch.hub",
    "dispatch.options",
    "dispatch.pacing",
    "dispatch.record",
    "dispatch.results",
    "dispatch.states",
]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_of_the_engine_is_exported(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = set(module.__all__) - set(dispatch.__all__)
    # Type aliases for implementers stay in dispatch.abc; everything else is top level.
    missing -= {"PollResult", "PollItem", "CallbackResult", "CallbackName"}
    assert not missing, f"{module_name} exports {sorted(missing)} but dispatch does not"


def test_every_name_in_all_exists() -> None:
    for package in (dispatch, strategies):
        for name in package.__all__:
            assert hasattr(package, name), f"{package.__name__}.{name}"


def test_the_builtin_strategies_are_exported() -> None:
    from strategies import csv, sql

    assert set(csv.__all__) | set(sql.__all__) <= set(strategies.__all__)


def test_every_error_derives_from_dispatch_error() -> None:
    for name in dispatch.errors.__all__:
        error = getattr(dispatch.errors, name)
        assert inspect.isclass(error)
        assert issubclass(error, dispatch.DispatchError)


def test_the_lazy_export_map_matches_all() -> None:
    assert set(dispatch._EXPORTS) | {"__version__"} == set(dispatch.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = dispatch.Nope  # type: ignore[attr-defined]


def test_the_command_line_starts_without_the_heavy_dependencies() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, dispatch.cli; "
        "print(sorted(m for m in ('sqlalchemy', 'pydantic', 'phonenumbers', 'anyio._backends', "
        "'importlib.metadata') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_the_version_is_the_installed_distributions() -> None:
    import subprocess
    import sys
    from importlib.metadata import version

    result = subprocess.run(
        [sys.executable, "-m", "dispatch.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.split()[-1] == version("pinecall-dispatch") == dispatch.__version__
