"""Fixtures: a live dashboard (uvicorn on a free loopback port) over a registry holding two recorded runs,
keys of every role, and a real chromium to look at it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.registry.fake_runs import eval_items, fake_run
from tests.ui.browser import browser_page, chromium  # noqa: F401 (fixtures)
from tunelab.registry.db import open_registry
from tunelab.registry.ingest import ingest_run
from tunelab.registry.keys import create_key
from tunelab.security.roles import ROLES
from tunelab.serve.local import app_in_thread
from tunelab.ui.app import UiSettings, build_ui_app


class Dashboard:
    def __init__(self, url: str, keys: dict[str, str], runs: dict[str, Path], registry, root: Path):
        self.url, self.keys, self.runs, self.registry, self.root = url, keys, runs, registry, root

    def http(self, role: str | None = None):
        """An httpx client logged in as ``role`` (its session cookie set), or anonymous."""
        import httpx

        client = httpx.Client(base_url=self.url, timeout=60, follow_redirects=False)
        if role is not None:
            answer = client.post("/ui/login", data={"key": self.keys[role], "next": "/ui/runs"})
            assert answer.status_code == 303, answer.text
        return client


def with_curves(run: Path, steps: int, loss_scale: float) -> None:
    """A train_log.jsonl as a run with periodic validation loss writes it."""
    rows = []
    for step in range(1, steps + 1):
        rows.append({"step": step, "epoch": round(step / steps, 4), "loss": loss_scale * 2.0 / step ** 0.5,
                     "learning_rate": 2e-4 * (1 - step / (steps + 1)), "tokens": 512 * step, "elapsed": step * 0.5})
        if step % 5 == 0 or step == steps:
            rows.append({"step": step, "epoch": round(step / steps, 4), "val_loss": loss_scale * 2.2 / step ** 0.4,
                         "tokens": 512 * step})
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def two_runs(root: Path) -> dict[str, Path]:
    """Two finished runs on the same 24 held-out items: 'baseline-lora' right on 14, 'wider-lora' on 18, with
    items that flip both ways."""
    items = eval_items(24)
    first = [i % 12 < 7 for i in range(24)]  # 14 right
    second = [2 <= i % 12 <= 10 for i in range(24)]  # 18 right: 4 items lost, 8 gained
    base = [i % 3 == 0 for i in range(24)]
    runs = {"baseline": fake_run(root, "baseline-lora", first, items, base_correct=base, steps=40),
            "wider": fake_run(root, "wider-lora", second, items, base_correct=base, steps=40)}
    with_curves(runs["baseline"], 40, 1.0)
    with_curves(runs["wider"], 40, 0.8)
    return runs


@pytest.fixture
def dashboard(tmp_path):
    registry = open_registry()
    runs = two_runs(tmp_path / "runs")
    for run in runs.values():
        ingest_run(registry, run)
    with registry.session() as session:
        keys = {role: create_key(session, f"ui-{role}", role)[1] for role in ROLES}
    settings = UiSettings(runs_root=tmp_path / "runs", data_roots=[tmp_path / "data"])
    with app_in_thread(build_ui_app(settings)) as url:
        yield Dashboard(url, keys, runs, registry, tmp_path)
