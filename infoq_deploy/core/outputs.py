"""Where output goes: paths claimed before any long work, OS errors said in one sentence, run directories locked.

Every command claims its outputs first (`claim_file`, `claim_dir`): an empty ``-o``, a
directory where a file is wanted, a file where a directory is wanted or a location that
cannot be written is refused before a sweep or a training run starts, not after. Writes then
go through `infoq_deploy.core.atomic`, which turns the operating system's errors (full disk,
read-only file system, permissions) into the same kind of sentence via `os_error_message`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from infoq_deploy.core.errors import UserError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EEXIST: "it already exists",
}


def os_error_message(exc: OSError, path: str | os.PathLike, option: str | None = None) -> str:
    reason = _REASONS.get(exc.errno, exc.strerror or type(exc).__name__)
    fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the permissions"
    what = f"{option} {path} cannot be written" if option else f"cannot write {path}"
    return f"{what}: {reason}; {fix} or pick another output location"


def _named(path, option: str) -> Path:
    if path is None or not str(path).strip():
        raise UserError(f"{option} is empty; name the output to write")
    return Path(path)


def _probe(path: Path, option: str, folder: Path) -> None:
    """Check that the nearest existing folder of ``folder`` takes a new file, for output ``path``
    (root ignores mode bits, so this writes and removes one rather than asking os.access)."""
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is a file, not a directory; pick another output location")
    try:
        fd, probe = tempfile.mkstemp(prefix=".infoq-deploy-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(os_error_message(exc, path, option)) from None


def claim_file(path, option: str = "-o") -> Path:
    """``path`` as a file this command may write; UserError now rather than after the work."""
    p = _named(path, option)
    if p.is_dir():
        raise UserError(f"{option} {p} is a directory; name a file to write (for example {p / 'out.json'})")
    _probe(p, option, p.parent)
    return p


def claim_dir(path, option: str = "-o") -> Path:
    """``path`` as a directory this command may fill; UserError now rather than after the work."""
    p = _named(path, option)
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {p} exists and is not a directory; pick another output directory")
    _probe(p, option, p)
    return p


@contextmanager
def run_lock(run_dir: Path, holder: str) -> Iterator[None]:
    """Hold ``run_dir`` for one run. The lock is the kernel's (flock on the directory), so it
    goes with the process, even a killed one; ``holder`` says who has it (e.g. its pid)."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{run_dir} is being written by another infoq-deploy run ({holder}); "
                            "wait for it to finish or pick another -o RUN_DIR") from None
        yield
    finally:
        os.close(fd)
