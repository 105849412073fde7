"""``tunelab data erase``: the rows leave every dataset version and run copy, lineage taints what learned from
them, the server refuses tainted adapters, the receipt holds hashes and counts only, and it is audited."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.serve.conftest import tiny_lora_run
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.registry.audit_trail import verify_log
from tunelab.registry.db import open_registry
from tunelab.registry.ingest import ingest_run
from tunelab.registry.schema import DatasetVersion, ModelVersion, Run
from tunelab.registry.serving import record_responses
from tunelab.security import files
from tunelab.security.crypto import DecryptError, decrypt
from tunelab.security.master_key import keyring
from tunelab.serve.pool import check_adapter

SECRET = "zz-secret-customer-text-4471"


def rows() -> list[dict]:
    words = ["great", "dull", "wonderful", "tedious", "fun", "awful"]
    return [{"text": f"movie {i} was {words[i % 6]} {SECRET if i % 5 == 2 else ''}".strip(),
             "label": "positive" if i % 2 == 0 else "negative", "meta": {"customer_id": f"C-{i % 5}"}}
            for i in range(60)]


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("TUNELAB_KEY", os.urandom(32).hex())
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    assert main(["data", "prepare", str(raw), "--out", "prepared"]) == 0
    run = tiny_lora_run(tmp_path / "runs", tiny_model_dir, tmp_path / "prepared" / "train.jsonl", "run-x", 5e-2,
                        f"data.val={tmp_path / 'prepared' / 'val.jsonl'}",
                        f"data.test={tmp_path / 'prepared' / 'test.jsonl'}", "train.max_length=128",
                        "eval.max_examples=null")
    ingest_run(open_registry(), run)
    assert main(["models", "register", str(run), "--name", "reviews"]) == 0
    return tmp_path, run


def lines_of(path: Path) -> list[dict]:
    return files.read_jsonl(path)


def test_erase_by_match_removes_taints_and_leaves_a_receipt(project, capsys, tiny_model_dir):
    root, run = project
    prepared = root / "prepared"
    before = {name: lines_of(prepared / name) for name in ("train.jsonl", "val.jsonl", "test.jsonl")}
    matching = sum(1 for rows_ in before.values() for r in rows_ if r["meta"]["customer_id"] == "C-2")
    assert matching > 0
    old_handle = open(prepared / "train.jsonl", "rb")  # the old file, as its freed blocks would be found later
    capsys.readouterr()

    assert main(["data", "erase", "--match", "customer_id=C-2", "--json"]) == 0
    receipt = json.loads(capsys.readouterr().out)

    for name, old_rows in before.items():
        now = lines_of(prepared / name)
        assert now == [r for r in old_rows if r["meta"]["customer_id"] != "C-2"]
    assert receipt["rows_removed"] == matching, receipt["files"]
    for path in (run / "eval_set.jsonl", run / "predictions.jsonl", prepared / "summary.json", prepared / "report.md"):
        assert SECRET not in files.read_text(path), path
    # the old encrypted file is crypto-shredded: its data key is gone even where its bytes survive
    with pytest.raises(DecryptError):
        decrypt(old_handle.read(), keyring())
    old_handle.close()

    registry = open_registry()
    with registry.session() as session:
        versions = session.query(DatasetVersion).order_by(DatasetVersion.id).all()
        assert versions[0].erased == receipt["erasure"] and versions[-1].erased is None
        assert versions[-1].rows["train"] == len(lines_of(prepared / "train.jsonl"))
        assert session.query(Run).one().tainted == receipt["erasure"]
        assert session.query(ModelVersion).one().tainted == receipt["erasure"]
    assert receipt["tainted"]["model_versions"] == ["reviews@1"]

    stored = Path(receipt["receipt"]).read_text()
    assert "C-2" not in stored and SECRET not in stored and "movie" not in stored
    assert receipt["request"]["sha256"] in stored

    with pytest.raises(TunelabError, match="tainted"):
        check_adapter(str(run), str(tiny_model_dir), registry, roots=None)
    assert check_adapter(str(run), str(tiny_model_dir), registry, roots=None, allow_tainted=True).version
    assert main(["models", "promote", "reviews", "1", "--no-parity"]) == 2  # refused: tainted

    verdict = verify_log(registry)
    assert verdict.ok
    entries = [json.loads(line) for line in (Path(os.environ["TUNELAB_HOME"]) / "audit.jsonl").read_text().splitlines()]
    erase_entries = [e for e in entries if e["action"] == "data.erase"]
    assert erase_entries and erase_entries[-1]["objects"]["erasure"] == receipt["erasure"]
    assert "C-2" not in json.dumps(entries)


def test_dry_run_changes_nothing(project, capsys):
    root, _ = project
    before = (root / "prepared" / "train.jsonl").read_bytes()
    assert main(["data", "erase", "--match", "customer_id=C-1", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out
    assert (root / "prepared" / "train.jsonl").read_bytes() == before
    with open_registry().session() as session:
        assert session.query(Run).one().tainted is None


def test_erase_by_subject_deletes_served_answers_and_feedback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    registry = open_registry()
    row = {"endpoint": "chat", "model": "m", "served_model": "m", "model_version": None, "ab_test": None,
           "arm": None, "key_id": None, "prompt": [{"role": "user", "content": "hi"}], "response": ["yo"],
           "prompt_tokens": 1, "completion_tokens": 1, "latency_ms": 1.0, "finish_reasons": ["stop"]}
    with registry.session() as session:
        record_responses(session, [row | {"id": "a", "user_hash": "u1"}, row | {"id": "b", "user_hash": "u2"}])
    assert main(["data", "erase", "--subject", "u1"]) == 0
    assert "1 served answer(s)" in capsys.readouterr().out
    from tunelab.registry.schema import ServedResponse
    with registry.session() as session:
        assert [r.id for r in session.query(ServedResponse).all()] == ["b"]


def test_selector_errors_are_one_line():
    from tunelab.data.erase import Selector

    with pytest.raises(TunelabError, match="FIELD=VALUE"):
        Selector.parse(None, "customer_id")
    with pytest.raises(TunelabError, match="exactly one"):
        Selector.parse("u", "a=b")


def test_files_it_cannot_rewrite_are_named_in_the_receipt(tmp_path, monkeypatch, capsys):
    from tunelab.registry.ingest import _dataset_version

    monkeypatch.chdir(tmp_path)
    source = tmp_path / "reviews.csv"
    source.write_text("text,label,customer_id\ngood film,positive,C-9\nbad film,negative,C-1\n", encoding="utf-8")
    other = tmp_path / "other.csv"
    other.write_text("text,label\nfine,positive\n", encoding="utf-8")
    registry = open_registry()
    with registry.session() as session:
        for path, rows in ((source, ["a", "b"]), (other, ["c"])):
            _dataset_version(session, path.stem, {"train": rows}, kind="labeled", path=str(path), origin="run",
                             settings={}, report=None)
    assert main(["data", "erase", "--match", "customer_id=C-9", "--json"]) == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["not_rewritten"] == [str(source)]
    assert "C-9" in source.read_text()  # left for the user, and said so
