"""Adapter paths from admin requests, fuzzed: nothing outside the allowed roots is ever accepted.

The server is the one place where tunelab resolves a path that someone else supplies against allowed
roots (``tunelab serve --adapter-root``, checked by ``inside_roots`` / ``check_adapter`` in serve/pool.py).
Dataset paths are not checked against a root anywhere: they come from the user's own command line or
config, and the server never reads a dataset by a path a request names (parity reads the adapter run's own
eval_set.jsonl, inside the run folder this check has already confined).

Each source is either accepted, and then it and every file under it resolve inside a root, or refused
with a 4xx ``ApiError`` or a ``TunelabError`` (a 400 through the server), never another exception.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.serve.errors import ApiError
from tunelab.serve.pool import check_adapter
from tunelab.train.recipes import train

from tests.serve.servers import running_server

FULLWIDTH_DOTS = "\uff0e\uff0e"  # FULLWIDTH FULL STOP twice: NFKC turns it into ".."
LEADER_DOTS = "\u2024\u2024"  # ONE DOT LEADER twice: looks like ".."
TWO_DOT_LEADER = "\u2025"  # TWO DOT LEADER: looks like ".." in one character


@pytest.fixture(scope="module")
def tree(tmp_path_factory, tiny_model_dir):
    """base/runs: the allowed root, holding a real LoRA run and every kind of way out of it.

    Outside it: base/elsewhere/run-x (a valid run), base/runs-evil/run-a (a sibling whose name starts like the
    root's). Inside: symlinks to the outside run (directly, and under look-alike folder names), a run whose
    weights file links out, and a symlink loop.
    """
    base = tmp_path_factory.mktemp("fuzz")
    data = base / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"the movie was {w}", "label": lab}) + "\n"
                            for w, lab in [("great", "positive"), ("dull", "negative")] * 8), encoding="utf-8")
    root = base / "runs"
    with pytest.MonkeyPatch.context() as patch:  # built before any test's own TUNELAB_HOME exists
        patch.setenv("TUNELAB_HOME", str(base / "tunelab-home"))
        train(load_config(None, [f"model={tiny_model_dir}", f"data.train={data}", f"output_dir={root}",
                                 "run_name=run-a", "train.max_steps=1", "train.batch_size=2", "train.save_steps=100",
                                 "train.max_length=64", "train.precision=fp32", "train.compile=false",
                                 "eval.max_examples=2", "eval.max_new_tokens=1", "eval.baseline=false", "lora.r=2"]))
    outside = base / "elsewhere" / "run-x"
    shutil.copytree(root / "run-a", outside)
    shutil.copytree(root / "run-a", base / "runs-evil" / "run-a")
    (root / "link-out").symlink_to(outside)
    for name in (FULLWIDTH_DOTS, LEADER_DOTS, TWO_DOT_LEADER, "#", "%2e%2e"):
        (root / name).mkdir()
        (root / name / "x").symlink_to(outside)
    shutil.copytree(root / "run-a", root / "run-b")
    weights = root / "run-b" / "adapter" / "adapter_model.safetensors"
    weights.unlink()
    weights.symlink_to(outside / "adapter" / "adapter_model.safetensors")
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    return base


def accepted_inside(source: str, base: Path, model) -> bool:
    """True when ``source`` is accepted (and then confined to the root), False when refused as it should be."""
    root = (base / "runs").resolve()
    try:
        adapter = check_adapter(source, str(model), None, [root])
    except ApiError as refused:
        assert 400 <= refused.status < 500 and refused.param == "source", (source, refused.status, refused.message)
        return False
    except TunelabError:
        return False  # a 400 through the server (the error handler of serve/errors.py)
    folder = adapter.folder.resolve()
    assert folder.is_relative_to(root), (source, folder)
    assert all(p.resolve().is_relative_to(root) for p in folder.rglob("*")), source
    return True


def escapes(base: Path) -> list[str]:
    """Sources that name something outside the root, or that no file system can take."""
    root, outside = base / "runs", base / "elsewhere" / "run-x"
    return [
        "runs/../elsewhere/run-x", "runs/run-a/../../elsewhere/run-x", str(root / ".." / "elsewhere" / "run-x"),
        str(outside), f"//proc/self/root{outside}", f"/proc/self/root/{outside}", "/proc/self/cwd/elsewhere/run-x",
        "/proc/self/cwd/runs-evil/run-a", "runs-evil/run-a", str(base / "runs-evil" / "run-a"),
        "runs/link-out", f"runs/{FULLWIDTH_DOTS}/x", f"runs/{LEADER_DOTS}/x", f"runs/{TWO_DOT_LEADER}/x", "runs/#/x",
        "runs/%2e%2e/x", f"runs/{FULLWIDTH_DOTS}/{FULLWIDTH_DOTS}/elsewhere/run-x", "runs/run-b", "runs/loop1",
        "runs/loop1/run-a", "runs/run-a\x00", "runs/run-a\x00/../../elsewhere/run-x", "\x00", "runs/run-a\n",
        "runs/\x1b[2J", "runs/\ud800", "runs/" + "a" * 300, "runs/" + "a/" * 3000, "runs\\..\\elsewhere\\run-x",
        "~", "~/../../elsewhere/run-x", "runs/run-a#@1", "file:///etc/passwd", ".", "/", "//", "runs",
        "runs/run-a/adapter",
    ]


def good(base: Path) -> list[str]:
    """Sources that name the run inside the root, however they spell it."""
    root = base / "runs"
    return ["runs/run-a", str(root / "run-a"), "runs/./run-a", "runs//run-a", "./runs/run-a",
            f"//proc/self/root{root / 'run-a'}", "/proc/self/cwd/runs/run-a"]


def test_fixed_cases_stay_inside_the_roots(tree, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tree)  # relative sources resolve against the server's working folder
    refused = [s for s in escapes(tree) if accepted_inside(s, tree, tiny_model_dir)]
    assert refused == [], f"accepted, but should have been refused: {refused}"
    assert all(accepted_inside(s, tree, tiny_model_dir) for s in good(tree))


PIECES = ["..", ".", "", "runs", "run-a", "run-b", "elsewhere", "run-x", "runs-evil", "link-out", "loop1", "adapter",
          FULLWIDTH_DOTS, LEADER_DOTS, TWO_DOT_LEADER, "#", "%2e%2e", "x", "~", "proc", "self", "root", "cwd",
          "\x00", "a" * 300, "..\\..", "\u202e", "@1"]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(["", "runs/", "/", "//", "//proc/self/root", "/proc/self/cwd/", "./", "./runs/"]),
       parts=st.lists(st.sampled_from(PIECES) | st.text(max_size=12), min_size=1, max_size=5))
def test_fuzzed_sources_never_escape_and_never_crash(tree, tiny_model_dir, monkeypatch, prefix, parts):
    monkeypatch.chdir(tree)
    if prefix.startswith("//proc/self/root"):
        prefix += f"{tree}/"
    accepted_inside(prefix + "/".join(parts), tree, tiny_model_dir)


def test_the_admin_route_answers_4xx_and_never_500(tree, tiny_model_dir, monkeypatch):
    """The same sources through POST /v1/admin/adapters, plus bodies no JSON parser takes."""
    monkeypatch.chdir(tree)
    with running_server(tiny_model_dir, adapter_roots=[tree / "runs"]) as served:
        admin = served.http("admin")
        for source in escapes(tree):  # json.dumps escapes NUL, controls and lone surrogates
            response = admin.post("/v1/admin/adapters", content=json.dumps({"name": "d", "source": source}),
                                  headers={"Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (source, response.status_code, response.text)
            assert response.json()["error"]["message"], source
        for body in (b'{"name": "d", "source": "runs/run-a\\u0000"}', b'{"name": "d", "source": "\xff\xfe"}',
                     b'{"name": "d", "source": "runs/\\ud800"}', b'{"name": "d", "source": ""}',
                     b'{"name": "../d", "source": "runs/run-a"}'):
            response = admin.post("/v1/admin/adapters", content=body, headers={"Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        loaded = admin.post("/v1/admin/adapters", json={"name": "ok", "source": "runs/run-a"})
        assert loaded.status_code == 201, loaded.text
        assert admin.delete("/v1/admin/adapters/ok").status_code == 200
