"""Names a package exports but loads on first use (PEP 562), so importing the package (for
``dispatch --help``, or one submodule) does not import what those names need."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING to mypy and ruff; typing costs --help a few ms

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def exports(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each exported name to the
    submodule defining it (``".hub"``); a name, once loaded, is kept in ``namespace`` (the
    package's globals) so later lookups do not come here."""

    def load(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        from importlib import import_module  # not at import: `dispatch --help` needs none

        value = getattr(import_module(module, package), name)
        namespace[name] = value
        return value

    return load
