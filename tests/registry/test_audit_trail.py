"""The audit trail as commands write it: entries for registry actions, checkpoints signed into the registry every
64 entries and at every promotion, and ``tunelab audit verify`` naming what was altered (exit 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.registry.fake_runs import eval_items, fake_run, review, write_data
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.registry import commands
from tunelab.registry.audit_trail import KEY_FILE, audit_key, record, sign, verify_log
from tunelab.registry.db import open_registry
from tunelab.registry.recorder import record_eval, recording
from tunelab.registry.schema import AuditCheckpoint
from tunelab.security.audit import CHECKPOINT_EVERY, AuditLog, canonical, entry_hash


def pattern(n: int, right: int) -> list[bool]:
    return [i < right for i in range(n)]


@pytest.fixture
def url(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("TUNELAB_REGISTRY_URL", url)
    return url


def cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def rewrite(entries: list[dict]) -> None:
    AuditLog().path.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))


def test_checkpoints_every_64_entries_and_verify_names_a_truncated_tail(url, capsys):
    for i in range(CHECKPOINT_EVERY * 2 + 5):
        record("test.action", run=f"run{i}")
    registry = open_registry(url)
    with registry.session() as session:
        lengths = session.scalars(select(AuditCheckpoint.length).order_by(AuditCheckpoint.id)).all()
    assert lengths == [CHECKPOINT_EVERY, CHECKPOINT_EVERY * 2]
    code, out, _ = cli(capsys, "audit", "verify")
    assert code == 0 and out.strip().startswith(f"ok: {CHECKPOINT_EVERY * 2 + 5} entries, 2 checkpoints, head ")
    code, out, _ = cli(capsys, "audit", "checkpoint")
    assert code == 0 and out.startswith(f"checkpoint 3: {CHECKPOINT_EVERY * 2 + 5} entries")
    entries = AuditLog().entries()
    rewrite(entries[:100])
    code, out, _ = cli(capsys, "audit", "verify")
    assert code == 1 and out.count("\n") == 1
    assert out.startswith("tampered: log has 100 entries but checkpoint 2 (signed ") and "covers 128" in out
    verdict = json.loads(cli(capsys, "audit", "verify", "--json")[1])
    assert verdict["ok"] is False and verdict["first_bad_entry"] == CHECKPOINT_EVERY


def test_an_edited_entry_is_named_and_no_checkpoint_is_signed_over_it(url, capsys):
    for i in range(20):
        record("test.action", run=f"run{i}")
    entries = AuditLog().entries()
    entries[17]["actor"] = "local:mallory"
    rewrite(entries)
    code, out, _ = cli(capsys, "audit", "verify")
    assert (code, out) == (1, "tampered: entry 17: hash does not match its content\n")
    entries[17]["hash"] = entry_hash(entries[17])
    rewrite(entries)
    assert cli(capsys, "audit", "verify")[1] == "tampered: entry 18: prev does not match entry 17\n"
    code, _, err = cli(capsys, "audit", "checkpoint")
    assert code == 2 and "not signing a checkpoint of a log that fails verification: entry 18" in err
    assert record("models.promote", checkpoint=True, model="m") is not None  # recorded, but not signed
    assert "no checkpoint signed after entry 20" in capsys.readouterr().err


def test_a_rechained_rewrite_fails_the_checkpoint(url, capsys):
    for i in range(10):
        record("test.action", run=f"run{i}")
    sign(open_registry(url))
    entries = AuditLog().entries()
    entries[3]["objects"]["run"] = "forged"
    for index in range(3, 10):
        entries[index]["prev"] = entries[index - 1]["hash"]
        entries[index]["hash"] = entry_hash(entries[index])
    rewrite(entries)
    code, out, _ = cli(capsys, "audit", "verify")
    assert code == 1 and out.startswith("tampered: entry 9 does not hash to the head of checkpoint 1 (signed ")
    with open_registry(url).session() as session:  # a forger who also rewrites the checkpoint lacks the key
        row = session.scalars(select(AuditCheckpoint)).one()
        row.head = entries[9]["hash"]
    assert cli(capsys, "audit", "verify")[1].startswith("tampered: checkpoint 1 signature is invalid")


def test_verify_reports_an_incomplete_last_entry_and_repair_cuts_it(url, capsys):
    for i in range(3):
        record("test.action", run=f"run{i}")
    with open(AuditLog().path, "ab") as f:
        f.write(b'{"action":"keys.cre')
    code, out, _ = cli(capsys, "audit", "verify")
    assert code == 0 and "incomplete last entry (19 bytes" in out
    code, out, _ = cli(capsys, "audit", "verify", "--repair")
    assert code == 0 and out.startswith("repaired: cut 19 bytes") and "ok: 4 entries" in out
    assert AuditLog().entries()[-1]["action"] == "audit.repair"


def test_show_lists_the_last_entries(url, capsys):
    for i in range(5):
        record("keys.create", key=f"{i:012x}", role="admin")
    code, out, _ = cli(capsys, "audit", "tail", "-n", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3 and lines[0].split() == ["seq", "time", "(UTC)", "actor", "action", "objects"]
    assert lines[1].startswith("3 ") and "keys.create" in lines[1] and "key=000000000003 role=admin" in lines[1]
    assert [e["seq"] for e in json.loads(cli(capsys, "audit", "show", "--json")[1])] == [0, 1, 2, 3, 4]


def test_the_audit_key_is_32_bytes_from_an_owner_only_file_or_the_environment(monkeypatch):
    key = audit_key()
    path = Path(os.environ["TUNELAB_HOME"]) / KEY_FILE
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600 and audit_key() == key
    monkeypatch.setenv("TUNELAB_AUDIT_KEY", "ab" * 32)
    assert audit_key() == bytes.fromhex("ab" * 32)
    monkeypatch.setenv("TUNELAB_AUDIT_KEY", "not hex")
    with pytest.raises(TunelabError, match="64 hex digits"):
        audit_key()


def test_registry_commands_record_ids_never_secrets_or_reasons(url, tmp_path, capsys):
    commands.keys_create(url, "ci robot", "admin", as_json=True)
    created = json.loads(capsys.readouterr().out)
    commands.keys_revoke(url, created["key"], as_json=False)  # revoking by the whole key: only its id is logged
    items = eval_items(40)
    one = fake_run(tmp_path, "one", pattern(40, 30), items, base_correct=pattern(40, 10))
    two = fake_run(tmp_path, "two", pattern(40, 10), items)
    with recording(tmp_path / "three", url=url):
        fake_run(tmp_path, "three", pattern(40, 12), items)
    for run in (one, two):
        commands.models_register(url, str(run), "support", {}, as_json=False)
    commands.models_promote(url, "support", 1, "production", "better", 0.0, None, False, None, as_json=False)
    with pytest.raises(TunelabError, match="REFUSED"):
        commands.models_promote(url, "support", 2, "production", "better", 0.0, None, False, None, as_json=False)
    commands.models_promote(url, "support", 2, "production", "better", 0.0, None, True, "hotfix for the demo", False)
    commands.models_rollback(url, "support", "production", as_json=False)
    record_eval(tmp_path / "one", str(one), str(tmp_path / "one-test.jsonl"), url=url)
    entries = AuditLog().entries()
    assert [e["action"] for e in entries] == [
        "keys.create", "keys.revoke", "train.start", "train.finish", "models.register", "models.register",
        "models.promote", "models.promote", "models.promote", "models.rollback", "eval"]
    assert all(e["actor"].startswith("local:") for e in entries)
    by_action = {e["action"]: e["objects"] for e in entries}
    assert entries[0]["objects"] == {"key": created["id"], "role": "admin"}
    assert entries[1]["objects"] == {"key": created["id"]}
    finish = entries[3]["objects"]
    assert finish["status"] == "finished" and finish["run_name"] == "three" and len(finish["data_hash"]) == 64
    assert [e["objects"]["outcome"] for e in entries if e["action"] == "models.promote"] == [
        "promoted", "not promoted", "forced"]
    assert by_action["models.rollback"] == {"model": "support", "alias": "production", "from_version": 2,
                                            "to_version": 1}
    assert by_action["eval"]["model"] == "one" and len(by_action["eval"]["eval_set"]) == 1
    text = AuditLog().path.read_text()
    assert created["key"] not in text and "hotfix" not in text and "ci robot" not in text
    verdict = verify_log(open_registry(url))
    assert verdict.ok and verdict.checkpoints == 4  # every promotion (refused too) and the rollback


def test_data_prepare_records_the_dataset_version_and_its_content_hash(url, tmp_path, capsys):
    write_data(tmp_path / "reviews.jsonl", [review(i, "movie") for i in range(40)])
    assert main(["data", "prepare", str(tmp_path / "reviews.jsonl"), "--out", str(tmp_path / "prepared")]) == 0
    entry = AuditLog().entries()[-1]
    assert entry["action"] == "data.prepare" and entry["objects"]["dataset"] == "prepared"
    assert entry["objects"]["version"] == 1 and len(entry["objects"]["data_hash"]) == 64
    assert f"v1 ({entry['objects']['data_hash'][:12]})" in capsys.readouterr().out  # what the registry printed
