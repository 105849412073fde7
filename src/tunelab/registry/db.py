"""Opening the registry: the database URL, engine settings, and migrations to the newest schema.

The default is ``$TUNELAB_HOME/registry.db``, a SQLite file in WAL mode with a busy timeout, so several
processes (two runs, a sweep and a dashboard) write at once without losing anything.
``TUNELAB_REGISTRY_URL`` (or ``registry_url=``) points it elsewhere, e.g. PostgreSQL for a team.
Alembic migrations bring any database, new or older, to the newest schema on open.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home

URL_VARIABLE = "TUNELAB_REGISTRY_URL"
MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 30_000
PG_MIGRATION_LOCK = 7_301_946  # pg_advisory_lock key: one process migrates at a time


def registry_url(url: str | None = None) -> str:
    """``url``, else ``$TUNELAB_REGISTRY_URL``, else the SQLite file ``$TUNELAB_HOME/registry.db``."""
    chosen = url or os.environ.get(URL_VARIABLE)
    if chosen:
        return chosen
    home = tunelab_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunelabError(f"cannot create {home} for the registry ({exc.strerror}); set TUNELAB_HOME to a "
                           f"writable folder or TUNELAB_REGISTRY_URL to a database") from None
    return f"sqlite:///{home / 'registry.db'}"


class Registry:
    """An open registry: an engine and its sessions. Functions in the registry modules take one."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


def get_or_create(session: Session, table, **keys):
    """The row of ``table`` with these unique ``keys``, inserted when missing. Another process inserting
    the same row at the same moment is found, not doubled (the insert runs in a savepoint)."""
    for _ in range(2):
        found = session.scalars(select(table).filter_by(**keys)).first()
        if found is not None:
            return found
        try:
            with session.begin_nested():
                row = table(**keys)
                session.add(row)
                session.flush()
                return row
        except IntegrityError:
            continue
    raise TunelabError(f"could not record {table.__tablename__} {keys}: it kept changing; try again")


def open_registry(url: str | None = None) -> Registry:
    """The registry at ``url`` (see ``registry_url``), migrated to the newest schema."""
    url = registry_url(url)
    try:
        engine = _engine(url)
        _migrate(engine)
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc).splitlines()[0]
        raise TunelabError(f"cannot open the registry at {_shown(url)}: {reason}") from None
    return Registry(engine)


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _sqlite_settings(connection, _record):
        # The driver's own transaction handling off, so that "begin" below decides how transactions start.
        connection.isolation_level = None
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not left in free pages (erasure)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _write_lock_first(connection):
        # A transaction that read and then writes cannot wait for a lock that another process's commit
        # made stale (SQLite answers "database is locked" at once). Taking the write lock at the start
        # makes writers queue within the busy timeout instead; readers are not blocked (WAL).
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _migrate(engine: Engine) -> None:
    """Upgrade to head unless already there; one process at a time (a file lock for SQLite, an advisory
    lock for PostgreSQL), so two commands started together never race on a new database."""
    head = head_revision()
    if current_revision(engine) == head:
        return
    with _migration_lock(engine):
        if current_revision(engine) == head:
            return
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_MIGRATION_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_MIGRATION_LOCK})
                connection.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
