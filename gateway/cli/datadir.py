"""Where ``gateway up`` keeps its data, so that every other command finds the same database.

``gateway up`` writes the absolute path of its data directory to a state file
(``$XDG_STATE_HOME/model-gateway/data-dir``, default ``~/.local/state``). A later command run
from another directory, with neither ``GATEWAY_DATA_DIR`` nor a database URL given, and no
database in its own ``./data``, uses that one and says so. Commands that only read refuse a
SQLite database that does not exist (rather than creating an empty one and reporting nothing).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from gateway.settings import Settings
from gateway.store.sqlite import sqlite_path

logger = logging.getLogger(__name__)


class MissingDatabaseError(Exception):
    """A read command found no database where the settings point."""


def state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "model-gateway" / "data-dir"


def remember(data_dir: Path) -> None:
    """Record ``gateway up``'s data directory for the other commands (best effort)."""
    path = state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(data_dir.resolve()) + "\n")
    except OSError as exc:
        logger.debug("could not record the data directory in %s: %s", path, exc)


def _sqlite_file(settings: Settings) -> Path | None:
    url = settings.database_url
    return sqlite_path(url) if url.startswith("sqlite:///") else None


def locate(settings: Settings, **overrides: object) -> Settings:
    """``settings``, or the same with ``gateway up``'s data directory when none was chosen and
    the default database does not exist here."""
    default_url = f"sqlite:///{settings.data_dir / 'gateway.db'}"
    if "data_dir" in settings.model_fields_set or settings.database_url != default_url:
        return settings  # the data's place was chosen
    here = _sqlite_file(settings)
    if here is None or here.exists():
        return settings
    try:
        recorded = Path(state_file().read_text().strip())
    except OSError:
        return settings
    if not (recorded / "gateway.db").exists():
        return settings
    sys.stderr.write(f"using the database of `gateway up` in {recorded} (set GATEWAY_DATA_DIR to choose)\n")
    return Settings.load(**overrides, data_dir=recorded)


def require_database(settings: Settings) -> None:
    """Raise ``MissingDatabaseError`` for a SQLite database that does not exist yet."""
    path = _sqlite_file(settings)
    if path is not None and not path.exists():
        raise MissingDatabaseError(
            f"no database at {path.resolve()}: run this where `gateway up` ran, or set "
            "GATEWAY_DATA_DIR (or GATEWAY_DATABASE_URL) to the one it uses"
        )
