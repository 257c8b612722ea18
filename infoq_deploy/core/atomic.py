"""Atomic writes: an interrupted run never leaves a file that looks finished.

Written JSON is strict (no NaN or Infinity, which strict readers reject). Errors of the
operating system (full disk, read-only file system, permissions) become one `UserError`
sentence, and the temporary file is removed, so nothing half-written is left.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from infoq_deploy.core.errors import UserError
from infoq_deploy.core.outputs import os_error_message

# torch.save reports a failed write as a RuntimeError from its zip writer
_TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "file write failed", "inline_container")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success only."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise UserError(os_error_message(exc, path)) from None
    os.close(fd)
    # mkstemp makes the file private (0600); outputs get the mode a plain open() would give
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        raise UserError(os_error_message(exc, path)) from None
    except RuntimeError as exc:
        if any(s in str(exc) for s in _TORCH_WRITE_ERRORS):
            raise UserError(os_error_message(OSError(_errno_of(tmp_path), "write failed"), path)) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _errno_of(tmp: Path) -> int | None:
    """torch does not say why a write failed; a full disk is the usual cause."""
    import errno
    import shutil

    try:
        return errno.ENOSPC if shutil.disk_usage(tmp.parent).free < (1 << 20) else None
    except OSError:
        return None


def dumps(obj: Any) -> str:
    """Strict JSON text (ValueError on NaN or Infinity: a bug to fix where the value is made)."""
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = dumps(obj)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
