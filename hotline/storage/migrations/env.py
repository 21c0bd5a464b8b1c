"""Alembic environment: runs migrations against the URL handed over by ``hotline.storage.engine.migrate``."""

from alembic import context
from sqlalchemy import create_engine

from hotline.storage.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL: run migrations through hotline.storage.engine.migrate")
connectable = create_engine(url)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
