"""New SQLite databases in tests are copies of one migrated once, not migrated each time.

Why: most tests start from a fresh SQLite file that ``hotline.storage.engine.migrate`` brings
to the newest revision, and running the ten Alembic migrations (``batch_alter_table`` copies
tables on SQLite) costs 0.3-0.6 s each time: a third of the wall time of the web and API tests
(py-spy on a loaded run), minutes of the suite. The template *is* what the migrations build:
it is made by the real ``alembic.command.upgrade`` on the first fresh database a test asks for,
and ``tests/unit/test_migrations.py`` checks it against the models. Anything but "a new or
empty SQLite file to ``head``" (PostgreSQL, an older revision, a database that holds
something, a URL with options) goes to Alembic untouched.

Installed by ``tests/conftest.py`` for the test process only: processes the tests start
(``hotline serve``, the CLI) run their own migrations, usually on a database already migrated.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import alembic.command
from alembic.config import Config
from sqlalchemy.engine import make_url

_real_upgrade = alembic.command.upgrade
_lock = threading.Lock()
_template: Path | None = None  # in a directory of its own, removed by ``uninstall``


def _fresh_sqlite_file(config: Config, revision: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Path | None:
    """The file a plain upgrade to ``head`` would create, if that is what is asked."""
    raw = config.get_main_option("sqlalchemy.url")
    if revision != "head" or args or kwargs or not raw:
        return None
    url = make_url(raw)
    if not url.drivername.startswith("sqlite") or url.query or url.database in (None, "", ":memory:"):
        return None
    path = Path(str(url.database))
    if path.exists() and path.stat().st_size > 0:
        return None
    return path


def _made_template(config: Config) -> Path:
    global _template
    if _template is None:
        path = Path(tempfile.mkdtemp(prefix="hotline-test-schema-")) / "template.db"
        cfg = Config()
        cfg.set_main_option("script_location", str(config.get_main_option("script_location")))
        cfg.set_main_option("sqlalchemy.url", f"sqlite:///{path}".replace("%", "%%"))
        _real_upgrade(cfg, "head")
        _template = path
    return _template


def upgrade(config: Config, revision: str, *args: Any, **kwargs: Any) -> None:
    """``alembic.command.upgrade``, a fresh SQLite file to ``head`` copied from the template."""
    path = _fresh_sqlite_file(config, revision, args, kwargs)
    if path is None:
        _real_upgrade(config, revision, *args, **kwargs)
        return
    with _lock:
        template = _made_template(config)
    # The backup API, not a file copy: the copy is a consistent database whatever the
    # template's journal, and an empty file SQLite already created is written over.
    with closing(sqlite3.connect(template)) as src, closing(sqlite3.connect(path)) as dst:
        src.backup(dst)


def install() -> None:
    alembic.command.upgrade = upgrade


def uninstall() -> None:
    global _template
    alembic.command.upgrade = _real_upgrade
    if _template is not None:
        shutil.rmtree(_template.parent, ignore_errors=True)
    _template = None
