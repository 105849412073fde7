"""Registry test fixtures: every test that takes ``registry_url`` runs on SQLite and on PostgreSQL.

PostgreSQL is one throwaway local server for the whole session (see ``postgres.py``), with a fresh database
for each test. Its tests are skipped only where the server binaries are missing (``make system-deps``
installs them on Debian); a missing psycopg is an error, because it is a dev dependency.
"""

from __future__ import annotations

import uuid

import pytest

from tests.registry.postgres import ThrowawayPostgres


@pytest.fixture(scope="session")
def postgres_server():
    """One local PostgreSQL server for the session, stopped and deleted at its end."""
    reason = ThrowawayPostgres.unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL registry tests skipped: {reason}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is missing: it is a dev dependency, install it with: pip install -e '.[dev]'",
                    pytrace=False)
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    """A SQLAlchemy URL to an empty registry database: a SQLite file, or a new database on the session server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"registry_{uuid.uuid4().hex[:16]}")
