"""The Alembic migrations build exactly the schema the models describe (several features add
tables at once: a model change without its migration, or a migration that drifts from the
model, fails here rather than in production), and the revisions form one chain."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import hotline.storage.engine as engine_module
from hotline.storage.engine import migrate
from hotline.storage.models import Base


def test_migrations_match_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_one_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(engine_module.__file__).parent / "migrations"))
    assert len(ScriptDirectory.from_config(cfg).get_heads()) == 1
