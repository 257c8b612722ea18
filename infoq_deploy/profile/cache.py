"""Content-addressed cache of finished sensitivity tables, and resumable partial state.

DESIGN.md: "the sensitivity table is the expensive artefact; it is cached by a content
hash of (model weights, data, settings)". The key is a sha256 over a canonical JSON of
everything the table depends on (see ``profile/infoq.py``'s ``_cache_parts``). Under the cache
directory (``$INFOQ_DEPLOY_CACHE``, else ``~/.cache/infoq-deploy``):

- ``<key>.json``: the finished table (``sensitivity.SensitivityTable`` format);
- ``<key>.partial.json``: the sweep's state, rewritten atomically after every completed
  unit of work, so a run killed at any instant (SIGKILL included) resumes from its last
  completed layer. It is removed once the table is written.

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


class ProfileCache:
    def __init__(self, cache_dir: str | Path | None, key: str):
        self.dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.key = key
        self.table_path = self.dir / f"{key}.json"
        self.partial_path = self.dir / f"{key}.partial.json"

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

    def load_partial(self) -> dict | None:
        if not self.partial_path.is_file():
            return None
        try:
            state = json.loads(self.partial_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("format") != PARTIAL_FORMAT or state.get("key") != self.key:
            return None
        return state

    def save_partial(self, state: dict) -> None:
        self._writable()
        write_json(self.partial_path, {**state, "format": PARTIAL_FORMAT, "key": self.key})

    def drop_partial(self) -> None:
        try:
            self.partial_path.unlink()
        except FileNotFoundError:
            pass
