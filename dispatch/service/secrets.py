"""Every secret a configuration holds, so the logs can leave them out (DESIGN guarantee 8).

Collected from the settings as a whole rather than section by section, so a new section's
secret is covered as soon as it uses the same shapes: a ``SecretStr`` field, a password in a
URL, a file named by ``api_key_file``/``password_file``/``secret_file``/``token_file``, an
environment variable named by ``token_env``, a plain value under ``password``, ``token`` and
the like in a free-form table; plus ``PINECALL_API_KEY`` and every systemd credential in
``$CREDENTIALS_DIRECTORY`` (all of them are secrets by definition).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel, SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["configured_secrets"]

SECRET_FILES = frozenset({"api_key_file", "password_file", "secret_file", "token_file"})
# Plain values under these names, as free-form tables hold them (a python strategy's
# `options`, an agent's `config`): secrets all the same.
SECRET_NAMES = frozenset({"api_key", "password", "secret", "token", "authorization"})
SECRET_ENVS = frozenset({"token_env"})
URLS = frozenset({"url"})
SECRET_ENVIRONMENT = ("PINECALL_API_KEY",)
MAX_SECRET_FILE = 64 * 1024  # a credential is small; anything bigger is not read


def configured_secrets(
    settings: BaseModel, base: Path, environ: Mapping[str, str] = os.environ
) -> set[str]:
    """The secret values ``settings`` holds or points at (files relative to ``base``). A file
    that cannot be read is left out: building the hub reports it."""
    found = set(_walk(settings, base, environ))
    found |= {environ[name].strip() for name in SECRET_ENVIRONMENT if environ.get(name)}
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        try:
            entries = list(Path(credentials).iterdir())
        except OSError:
            entries = []
        found |= {value for entry in entries if (value := _read(entry))}
    return {value for value in found if value}


def _walk(value: object, base: Path, environ: Mapping[str, str], name: str = "") -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            yield from _walk(getattr(value, field), base, environ, field)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item, base, environ, name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, base, environ, str(key))
    elif name.lower() in SECRET_NAMES and isinstance(value, str):
        yield value
    elif name in SECRET_FILES and isinstance(value, Path):
        if text := _read(value if value.is_absolute() else base / value):
            yield text
    elif name in SECRET_ENVS and isinstance(value, str) and environ.get(value):
        yield environ[value].strip()
    elif name in URLS and isinstance(value, str):
        try:
            password = make_url(value).password
        except (ArgumentError, ValueError):
            return
        if password:
            yield str(password)


def _read(path: Path) -> str:
    try:
        if not path.is_file() or path.stat().st_size > MAX_SECRET_FILE:
            return ""
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""
