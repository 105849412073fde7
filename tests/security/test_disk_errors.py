"""A full disk (a file-size limit, RLIMIT_FSIZE) or a permission error gives one clear line and leaves every
file either as it was or complete."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli import main


def raw_data(folder: Path, rows: int = 3000) -> Path:
    path = folder / "raw.jsonl"
    words = "the plot acting music pacing ending cast script camera score felt long short warm cold".split()
    path.write_text("".join(json.dumps({"text": f"review {i}: " + " ".join(words[(i * k) % len(words)]
                                                                            for k in range(1, 25)),
                                        "label": "positive" if i % 2 else "negative"}) + "\n"
                            for i in range(rows)), encoding="utf-8")
    return path


def limited(size: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


def test_a_file_size_limit_is_one_line_and_the_old_files_stay(tmp_path):
    env = {**os.environ, "TUNELAB_HOME": str(tmp_path / "home")}
    raw = raw_data(tmp_path)
    command = [sys.executable, "-m", "tunelab.cli", "data", "prepare", str(raw), "--out", str(tmp_path / "out")]
    subprocess.run(command, env=env, check=True, capture_output=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert len(before["train.jsonl"]) > 100_000

    failed = subprocess.run(command + ["--seed", "7"], env=env, capture_output=True, text=True,
                            preexec_fn=limited(100_000))
    assert failed.returncode == 2
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "file too large" in errors[0] and "Traceback" not in failed.stderr
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    for name, data in after.items():  # each visible file is the old one or a complete new one
        assert name in before, f"{name} appeared"
        if data != before[name] and name.endswith(".json"):
            json.loads(data)
    assert after["train.jsonl"] == before["train.jsonl"]


def test_permission_denied_is_one_line(tmp_path, monkeypatch, capsys):
    """Root ignores file modes, so the refusal is injected where the atomic writer renames its file."""
    raw = raw_data(tmp_path, rows=200)
    real_replace = os.replace

    def refuse(src, dst, *args, **kwargs):
        if str(dst).endswith("train.jsonl"):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refuse)
    assert main(["data", "prepare", str(raw), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: permission denied") and str(tmp_path / "out" / "train.jsonl") in err[-1]
    assert not (tmp_path / "out" / "train.jsonl").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".train.jsonl.")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line(tmp_path):
    raw = raw_data(tmp_path, rows=200)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        failed = subprocess.run([sys.executable, "-m", "tunelab.cli", "data", "prepare", str(raw), "--out", str(out)],
                                env={**os.environ, "TUNELAB_HOME": str(tmp_path / "home")}, capture_output=True,
                                text=True)
    finally:
        out.chmod(0o755)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert list(out.iterdir()) == []
