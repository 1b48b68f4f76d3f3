"""Migrations: an empty database upgrades to head, downgrades to base and upgrades again.

The head schema must equal the SQLAlchemy models, so no change to schema.py goes without a migration.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from vidserve import db
from vidserve.schema import Base

TABLES = {
    "jobs",
    "job_events",
    "webhook_deliveries",
    "webhook_attempts",
    "api_keys",
    "idempotency_keys",
    "webhook_endpoints",
}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _enum_types(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(text("SELECT typname FROM pg_type WHERE typtype = 'e'")))
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_an_empty_database_upgrades_to_head(empty_database: str) -> None:
    db.upgrade(empty_database)

    assert _tables(empty_database) == TABLES
    assert _enum_types(empty_database) == {"job_status", "delivery_status"}
    head = ScriptDirectory.from_config(db.alembic_config(empty_database)).get_current_head()
    assert _revision(empty_database) == head


def test_the_head_schema_matches_the_models(empty_database: str) -> None:
    db.upgrade(empty_database)

    engine = create_engine(empty_database)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()

    assert differences == []


def test_downgrade_to_base_removes_every_table_and_type_and_upgrade_works_again(empty_database: str) -> None:
    db.upgrade(empty_database)

    db.downgrade(empty_database, "base")
    assert _tables(empty_database) == set()
    assert _enum_types(empty_database) == set()
    assert _revision(empty_database) is None

    db.upgrade(empty_database)
    assert _tables(empty_database) == TABLES
