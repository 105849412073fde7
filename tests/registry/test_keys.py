"""API keys: shown once, stored as an HMAC, checked in constant time, revocable; and the schema migration
that added them, applied to a registry that already holds runs."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from datetime import datetime, timezone

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, select

from tests.registry.fake_runs import eval_items, fake_run
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.registry.db import alembic_config, current_revision, head_revision, open_registry
from tunelab.registry.ingest import ingest_run
from tunelab.registry.keys import PEPPER_FILE, create_key, list_keys, revoke_key, verify_key
from tunelab.registry.schema import ApiKey, Run


def test_a_key_is_shown_once_stored_as_an_hmac_and_verified(registry_url):
    registry = open_registry(registry_url)
    with registry.session() as session:
        row, key = create_key(session, "support app", "inference")
    assert key.startswith(f"tl-{row.id}-") and len(key) > 50
    pepper = (os.environ["TUNELAB_HOME"] + "/" + PEPPER_FILE)
    assert stat.S_IMODE(os.stat(pepper).st_mode) == 0o600
    with registry.session() as session:
        stored = session.get(ApiKey, row.id)
        expected = hmac.new(open(pepper, "rb").read().strip(), key.encode(), hashlib.sha256).hexdigest()
        assert stored.digest == expected and key not in json.dumps(list_keys(session))
        assert verify_key(session, key).role == "inference"
        assert session.get(ApiKey, row.id).last_used is not None
        wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
        for bad in (wrong, key + "x", "tl-000000000000-" + key.split("-", 2)[2], "", None, "Bearer " + key):
            assert verify_key(session, bad) is None
        revoke_key(session, row.id)
        assert verify_key(session, key) is None
    with registry.session() as session, pytest.raises(TunelabError, match="role 'root': use one of admin, trainer, "
                                                                          "viewer, inference$"):
        create_key(session, "x", "root")
    with registry.session() as session, pytest.raises(TunelabError, match="role '': use one of"):
        create_key(session, "x", "")
    with registry.session() as session:  # the old name of inference, and the default
        assert [create_key(session, "x", role)[0].role for role in ("user", None)] == ["inference", "inference"]


def test_the_pepper_can_come_from_the_environment_and_must_not_be_readable_by_others(registry_url, monkeypatch):
    registry = open_registry(registry_url)
    monkeypatch.setenv("TUNELAB_KEY_PEPPER", "a team secret")
    with registry.session() as session:
        _, key = create_key(session, "shared", "admin")
    with registry.session() as session:
        assert verify_key(session, key).role == "admin"
    monkeypatch.setenv("TUNELAB_KEY_PEPPER", "another secret")  # a server with the wrong pepper
    with registry.session() as session:
        assert verify_key(session, key) is None
    monkeypatch.delenv("TUNELAB_KEY_PEPPER")
    with registry.session() as session:
        create_key(session, "local", "inference")  # makes the pepper file
    path = os.environ["TUNELAB_HOME"] + "/" + PEPPER_FILE
    os.chmod(path, 0o644)
    with registry.session() as session, pytest.raises(TunelabError, match="chmod 600"):
        create_key(session, "local", "inference")


def test_the_keys_migration_upgrades_a_registry_that_already_holds_runs(registry_url, tmp_path):
    config = alembic_config()
    engine = create_engine(registry_url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    assert "api_keys" not in inspect(engine).get_table_names()
    registry = open_registry(registry_url)  # opening migrates to head
    assert current_revision(registry.engine) == head_revision()
    run_id = ingest_run(registry, fake_run(tmp_path, "kept", [True] * 3, eval_items(3)))
    with registry.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
        command.upgrade(config, "head")
    with registry.session() as session:
        assert session.get(Run, run_id).name == "kept"
        assert session.scalars(select(ApiKey)).all() == []


def test_the_roles_migration_renames_user_keys_to_inference_and_back(registry_url):
    registry = open_registry(registry_url)
    config = alembic_config()

    def roles() -> dict[str, str]:
        with registry.session() as session:
            return {k.name: k.role for k in session.scalars(select(ApiKey))}

    with registry.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    with registry.engine.begin() as connection:  # keys as the release with two roles wrote them
        for key_id, role in [("0000000000a1", "user"), ("0000000000a2", "admin")]:
            connection.execute(ApiKey.__table__.insert().values(id=key_id, name=role, role=role, digest="0" * 64,
                                                                created=datetime.now(timezone.utc)))
    registry.close()
    registry = open_registry(registry_url)  # opening migrates to head
    assert roles() == {"user": "inference", "admin": "admin"}
    with registry.session() as session:
        create_key(session, "watcher", "viewer")
    with registry.engine.begin() as connection:  # down: inference is user again; a viewer stays a viewer (which
        config.attributes["connection"] = connection  # the older release refuses everywhere)
        command.downgrade(config, "0003")
    assert roles() == {"user": "user", "admin": "admin", "watcher": "viewer"}


def test_keys_commands(capsys):
    assert main(["keys", "create", "--name", "ci bot", "--role", "admin"]) == 0
    printed = capsys.readouterr().out
    key = printed.splitlines()[0]
    assert key.startswith("tl-") and "shown once" in printed
    assert main(["keys", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["name"], k["role"], k["revoked"]) for k in listed] == [("ci bot", "admin", None)]
    assert key not in json.dumps(listed)
    assert main(["keys", "revoke", key]) == 0
    assert "revoked key" in capsys.readouterr().out
    assert main(["keys", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["revoked"] is not None
    assert main(["keys", "revoke", "tl-ffffffffffff"]) == 2
    assert "no key 'ffffffffffff'" in capsys.readouterr().err
    assert main(["keys", "create", "--name", "old script", "--role", "user"]) == 0  # the old name of inference
    assert "role inference:" in capsys.readouterr().out
    assert main(["keys", "create", "--name", "app"]) == 0
    assert "role inference:" in capsys.readouterr().out
    assert main(["keys", "create", "--name", "x", "--role", "root"]) == 2
    err = capsys.readouterr().err
    assert "role 'root': use one of admin, trainer, viewer, inference" in err and len(err.strip().splitlines()) == 1
