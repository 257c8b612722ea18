"""Content-addressed cache of finished sensitivity tables, and resumable partial state.

DESIGN.md: "the sensitivity table is the expensive artefact; it is cached by a content
hash of (model weights, data, settings)". The key is a sha256 over a canonical JSON of
everything the table depends on (see ``profile/infoq.py``'s ``_cache_parts``). Under the cache
directory (``$INFOQ_DEPLOY_CACHE``, else ``~/.cache/infoq-deploy``):

- ``<key>.json``: the finished table (``sensitivity.SensitivityTable`` format);
- ``<key>.partial.json``: the sweep's state, rewritten atomically after every completed
  unit of work, so a run killed at any instant (SIGKILL included) resumes from its last
  completed layer. It is removed once the table is written.
- ``<key>.partial.r<rank>.json``: the same, one per process of a ``torchrun`` sweep (each rank
  writes only its own file, so no two processes race on one). Resuming reads the union of
  every partial file of the key, whatever the number of processes was or is now.

Files that cannot be read back (truncated by hand, another format version) are ignored
and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from infoq_deploy.core.atomic import write_json
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.outputs import claim_dir
from infoq_deploy.profile.table import SensitivityTable, load_sensitivity

PARTIAL_FORMAT = "infoq-deploy/infoq-partial/1"


def default_cache_dir() -> Path:
    env = os.environ.get("INFOQ_DEPLOY_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "infoq-deploy"


def cache_key(parts: dict) -> str:
    """sha256 of a canonical JSON encoding of ``parts``."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def merge_states(states: list[dict]) -> dict:
    """The union of partial states: entries are keyed by the run they hold, and a run gives the
    same values whoever computed it (the profiler is deterministic), so nothing conflicts."""
    out: dict = {}
    for state in states:
        for name, value in (state or {}).items():
            if isinstance(value, dict) and isinstance(out.get(name), dict):
                out[name] = {**out[name], **value}
            elif name not in out:
                out[name] = value
    return out


class ProfileCache:
    def __init__(self, cache_dir: str | Path | None, key: str, rank: int | None = None):
        """``rank``: this process's rank in a distributed sweep (None: the only process)."""
        self.dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.key = key
        self.table_path = self.dir / f"{key}.json"
        self.partial_path = self.dir / f"{key}.partial.json"
        self.own_partial = self.partial_path if rank is None else self.dir / f"{key}.partial.r{rank}.json"

    def _partials(self) -> list[Path]:
        return [self.partial_path, *sorted(self.dir.glob(f"{self.key}.partial.r*.json"))]

    def claim(self) -> None:
        """Before the sweep: the cache is where it checkpoints, so an unwritable one fails now."""
        claim_dir(self.dir, "the profile cache (INFOQ_DEPLOY_CACHE, default ~/.cache/infoq-deploy)")

    def _writable(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the profile cache directory {self.dir} ({exc.strerror}); "
                "pass a writable cache directory or set INFOQ_DEPLOY_CACHE"
            ) from None

    def load_table(self) -> SensitivityTable | None:
        if not self.table_path.is_file():
            return None
        try:
            table = load_sensitivity(self.table_path)
        except UserError:
            return None
        if table.meta.get("cache_key") != self.key:
            return None
        return table

    def save_table(self, table: SensitivityTable) -> None:
        self._writable()
        table.save(self.table_path)
        self.drop_partial()

    def _read_partial(self, path: Path) -> dict | None:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("format") != PARTIAL_FORMAT or state.get("key") != self.key:
            return None
        return {k: v for k, v in state.items() if k not in ("format", "key")}

    def load_partial(self) -> dict | None:
        """Everything every partial file of this key holds (None when there is nothing usable)."""
        states = [s for s in (self._read_partial(p) for p in self._partials() if p.is_file()) if s]
        return merge_states(states) if states else None

    def save_partial(self, state: dict) -> None:
        self._writable()
        write_json(self.own_partial, {**state, "format": PARTIAL_FORMAT, "key": self.key})

    def drop_partial(self) -> None:
        for path in self._partials():
            try:
                path.unlink()
            except FileNotFoundError:
                pass
