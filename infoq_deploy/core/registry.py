"""Plug-ins by name: the helper behind each stage's registry (methods, export formats, back ends).

A stage's registry is a dict of `Entry` built with `by_name`; an entry's module is imported on
first use, so listing what exists (``--help``) costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from infoq_deploy.core.errors import UserError


@dataclass(frozen=True)
class Entry:
    name: str
    module: str  # dotted module path
    summary: str  # one line for --help


def by_name(*entries: Entry) -> dict[str, Entry]:
    return {e.name: e for e in entries}


def load(entries: dict[str, Entry], name: str, kind: str) -> ModuleType:
    """The module registered as ``name``; a UserError listing the names for anything else."""
    if name not in entries:
        raise UserError(f"unknown {kind} {name!r}; use one of {', '.join(entries)}")
    return importlib.import_module(entries[name].module)
