"""State: SQLAlchemy 2 tables, engine/session setup, Alembic migrations, and one repository
per aggregate behind a unit of work (plus in-memory twins for stage unit tests)."""
