"""With a master key set, no user content reaches the disk in plaintext.

Canary strings are planted in a dataset; then data prepare, train, eval, models register, a server answering
and storing feedback, and export all run for real (CLI processes, a uvicorn server on loopback). Every byte
under the home folder (registry, audit log), the working folder (prepared data, the run, the eval output, the
export) and the temporary folder is scanned: no 16-byte window of any canary may appear. The raw input file,
which the user wrote, lies outside the scanned folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.serve.servers import running_server
from tunelab.registry.db import open_registry
from tunelab.registry.schema import Feedback, ServedResponse
from tunelab.security import files
from tunelab.security.crypto import is_encrypted_file

CANARIES = [f"zq{n}x-canary-{word}-7b1e9d3f" for n, word in enumerate(["ocelot", "marimba", "quokka", "zither"])]
WINDOW = 16


def windows(text: str) -> set[bytes]:
    raw = text.encode("utf-8")
    return {raw[i:i + WINDOW] for i in range(len(raw) - WINDOW + 1)}


def leaks(folders: list[Path], needles: set[bytes]) -> list[str]:
    found = []
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    continue
                data = path.read_bytes()
                hits = [n for n in needles if n in data]
                if hits:
                    found.append(f"{path}: {hits[0]!r}")
    return found


def cli(*args: str, env: dict, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"tunelab {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_no_canary_reaches_the_disk_in_plaintext(tmp_path, monkeypatch, tiny_model_dir):
    home, work, temp, raw = (tmp_path / name for name in ("home", "work", "tmp", "raw"))
    for folder in (home, work, temp, raw):
        folder.mkdir()
    key = os.urandom(32).hex()
    env = {**os.environ, "TUNELAB_HOME": str(home), "TUNELAB_KEY": key, "TMPDIR": str(temp),
           "TUNELAB_KEY_PEPPER": "", "HF_HOME": str(temp / "hf")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("tempfile.tempdir", None)  # the test process's own temporary files go under TMPDIR too

    words = ["great", "dull", "wonderful", "tedious", "fun", "awful"]
    rows = [{"text": f"the movie was {words[i % 6]} {CANARIES[i % len(CANARIES)]}",
             "label": "positive" if i % 2 == 0 else "negative"} for i in range(60)]
    data = raw / "reviews.jsonl"
    broken = f'{{"text": "a row cut short {CANARIES[0]}\n'  # quarantined, with its raw text
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + broken, encoding="utf-8")

    cli("data", "prepare", str(data), "--out", "prepared", env=env, cwd=work)
    assert is_encrypted_file(work / "prepared" / "train.jsonl")
    cli("train", "/dev/null", f"model={tiny_model_dir}", "data.train=prepared/train.jsonl",
        "data.val=prepared/val.jsonl", "data.test=prepared/test.jsonl", "output_dir=runs", "run_name=canary",
        "train.max_steps=2", "train.batch_size=4", "train.max_length=256", "train.precision=fp32",
        "train.compile=false", "eval.max_examples=4", "eval.max_new_tokens=2", "lora.r=4", env=env, cwd=work)
    run = work / "runs" / "canary"
    cli("eval", "--model", str(run), "--data", "prepared/test.jsonl", "--max-examples", "4", env=env, cwd=work)
    cli("models", "register", str(run), "--name", "canary-model", env=env, cwd=work)

    with running_server(tiny_model_dir, [("canary", run)]) as server:
        client = server.client()
        answer = client.chat.completions.create(
            model="canary", max_tokens=4, messages=[{"role": "user", "content": f"review: {CANARIES[1]}"}])
        client.post("/feedback", cast_to=object, body={"response_id": answer.id, "rating": "down",
                                                       "corrected": f"fixed {CANARIES[2]}",
                                                       "comment": f"note {CANARIES[3]}"})
        server.state.responses.flush()
    cli("export", str(run), "--out", "exported", env=env, cwd=work)
    weights = [path for folder in (run, work / "exported") for path in folder.rglob("*.safetensors")]
    assert weights and [path for path in weights if not is_encrypted_file(path)] == []  # the weights too

    # what was written reads back through tunelab with the key
    registry = open_registry()
    with registry.session() as session:
        assert CANARIES[1] in json.dumps(session.get(ServedResponse, answer.id).prompt)
        assert CANARIES[2] in session.query(Feedback).one().corrected
    assert any(CANARIES[0] in line for line in files.iter_lines(work / "prepared" / "train.jsonl"))
    assert files.read_jsonl(run / "predictions.jsonl")

    needles = set().union(*(windows(c) for c in CANARIES))
    found = leaks([home, work, temp], needles)
    assert not found, "plaintext user content on disk:\n" + "\n".join(found[:20])
