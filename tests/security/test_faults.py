"""Fault injection: real tunelab processes killed with SIGKILL at 20 random moments of data prepare, training
(steps and checkpoint saves), registry writes, audit appends and key rotation, with a master key set.

After every kill: the SQLite registry passes ``PRAGMA integrity_check``, the audit log verifies (an unfinished
last line is the one state a kill may leave, and the next append repairs it), and every file a reader can see
is whole (each encrypted file authenticates to its last segment; each JSON file parses). Then the same command
(``train --resume RUN_DIR`` for training) runs again and finishes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tunelab.registry.audit_trail import verify_log
from tunelab.registry.db import open_registry
from tunelab.security import files
from tunelab.security.crypto import is_encrypted_file
from tunelab.security.rotation import DATABASE_SUFFIXES

KILLS = {"prepare": 4, "train": 8, "register": 3, "rotate": 5}
DELAYS = {"prepare": (0.5, 4.0), "train": (1.0, 9.0), "register": (1.0, 6.0), "rotate": (0.3, 2.0)}  # seconds
APPENDED = {"train_log.jsonl", "audit.jsonl"}  # append-only logs: a torn last line is expected, and skipped


def visible_files(folders: list[Path]):
    for folder in folders:
        for root, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in names:
                # atomic writers' temporary files are hidden until renamed; the registry database is checked by
                # SQLite itself (and opening it here would drop this process's locks on it: see rotation.py)
                if not name.startswith(".") and not name.endswith(DATABASE_SUFFIXES):
                    yield Path(root) / name


def check_whole(folders: list[Path]) -> None:
    for path in visible_files(folders):
        if is_encrypted_file(path):
            files.read_bytes(path)  # raises unless every segment authenticates, the last one sealed as last
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl" and path.name not in APPENDED:
            for line in path.read_text(encoding="utf-8").splitlines():
                json.loads(line)


def check_registry_and_audit(home: Path) -> None:
    database = home / "registry.db"
    if database.exists():
        with closing(sqlite3.connect(database)) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    if (home / "audit.jsonl").exists():
        verdict = verify_log(open_registry())
        assert verdict.ok, verdict


@pytest.mark.slow
def test_sigkill_at_twenty_random_points_loses_nothing(tmp_path, monkeypatch, tiny_model_dir):
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    monkeypatch.chdir(work)
    env = {**os.environ, "TUNELAB_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "tunelab.cli", "keys", "generate-master"], env=env, check=True,
                   capture_output=True)
    rows = [{"text": f"review {i}: the movie was {['great', 'dull', 'fun', 'awful'][i % 4]}",
             "label": "positive" if i % 4 in (0, 2) else "negative"} for i in range(400)]
    (work / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    train = ["train", "/dev/null", f"model={tiny_model_dir}", "data.train=prepared/train.jsonl",
             "data.val=prepared/val.jsonl", "data.test=prepared/test.jsonl", "output_dir=runs", "run_name=faults",
             "train.max_steps=12", "train.save_steps=2", "train.batch_size=4", "train.max_length=64",
             "train.precision=fp32", "train.compile=false", "eval.max_examples=4", "eval.max_new_tokens=2",
             "eval.baseline=false", "lora.r=4"]
    def command(stage: str) -> list[str]:
        if stage == "train":  # once the run folder has its config, only --resume continues it
            return ["train", "--resume", "runs/faults"] if (work / "runs/faults/config.yaml").exists() else train
        return {"prepare": ["data", "prepare", "raw.jsonl", "--out", "prepared"],
                "register": ["models", "register", "runs/faults", "--name", "faults"],
                "rotate": ["keys", "rotate", "--path", str(work)]}[stage]

    rng = random.Random(11)
    landed = 0
    for stage, kills in KILLS.items():
        for _ in range(kills):
            process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", *command(stage)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(*DELAYS[stage]))
            if process.poll() is None:
                landed += 1
            process.send_signal(signal.SIGKILL)
            process.wait()
            print(f"killed {stage} {' '.join(command(stage)[:3])}", file=sys.stderr)
            check_registry_and_audit(home)
            check_whole([work, home])
        done = subprocess.run([sys.executable, "-m", "tunelab.cli", *command(stage)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{stage} did not finish after the kills:\n{done.stderr[-3000:]}"
        print(f"finished {stage}", file=sys.stderr)
        check_registry_and_audit(home)
        check_whole([work, home])
    assert landed >= 12, f"only {landed} of {sum(KILLS.values())} kills landed while a process ran"
    status = json.loads((work / "runs" / "faults" / "status.json").read_text())
    assert status["status"] == "finished"
    assert files.read_jsonl(work / "prepared" / "train.jsonl")
