"""The registry fixtures give working, separate databases on both backends."""

from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, inspect, select, text

SEEN_URLS: set[str] = set()


@contextmanager
def engine_for(url):
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def runs_table(metadata):
    return Table("runs", metadata, Column("id", Integer, primary_key=True), Column("name", String(100), nullable=False))


def test_registry_url_is_a_working_database(registry_url):
    metadata = MetaData()
    runs = runs_table(metadata)
    with engine_for(registry_url) as first, engine_for(registry_url) as second:
        metadata.create_all(first)
        with first.begin() as conn:
            conn.execute(runs.insert(), [{"name": "alpha"}, {"name": "beta"}])
        # A second engine (its own connection) sees the committed rows and adds its own.
        with second.begin() as conn:
            assert conn.execute(select(runs.c.name).order_by(runs.c.id)).scalars().all() == ["alpha", "beta"]
            conn.execute(runs.insert(), {"name": "gamma"})
        with first.connect() as conn:
            assert conn.execute(select(runs.c.name).order_by(runs.c.id)).scalars().all() == [
                "alpha", "beta", "gamma"]
        if first.dialect.name == "postgresql":
            with first.connect() as conn:
                assert "PostgreSQL" in conn.execute(text("select version()")).scalar_one()
        else:
            assert first.dialect.name == "sqlite"


def test_backend_matches_parameter(request, registry_url):
    backend = request.node.callspec.params["registry_url"]
    assert registry_url.startswith({"sqlite": "sqlite:///", "postgresql": "postgresql+psycopg://"}[backend])


# Both tests below find their database empty and leave a table in it: whichever runs second would fail if
# two tests shared a database.
def _claim_fresh_database(url):
    assert url not in SEEN_URLS
    SEEN_URLS.add(url)
    with engine_for(url) as engine:
        assert "marker" not in inspect(engine).get_table_names()
        metadata = MetaData()
        Table("marker", metadata, Column("id", Integer, primary_key=True))
        metadata.create_all(engine)
        assert "marker" in inspect(engine).get_table_names()


def test_each_test_gets_its_own_database(registry_url):
    _claim_fresh_database(registry_url)


def test_each_test_gets_its_own_database_too(registry_url):
    _claim_fresh_database(registry_url)


def test_new_postgres_database_is_empty(postgres_server):
    first = postgres_server.create_database("registry_isolation_a")
    second = postgres_server.create_database("registry_isolation_b")
    with engine_for(first) as engine:
        metadata = MetaData()
        runs_table(metadata)
        metadata.create_all(engine)
        assert inspect(engine).get_table_names() == ["runs"]
    with engine_for(second) as engine:
        assert inspect(engine).get_table_names() == []
