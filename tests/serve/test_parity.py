"""``tunelab parity``: eval, merged export and a live server give the same greedy answers, and a difference fails."""

from __future__ import annotations

import json

import pytest

from tunelab.errors import TunelabError
from tunelab.serve.parity import check_parity, explain


def test_eval_merged_and_server_agree_on_a_tiny_run(adapter_runs):
    report = check_parity(adapter_runs["a"], limit=4)
    assert report.passed, explain(report)
    assert set(report.outputs) == {"eval", "adapter_fp32", "merged", "server"}
    assert report.prompts == 4 and report.prompt_tokens["eval"] == report.prompt_tokens["server"]
    assert any(report.outputs["eval"]), "every answer is empty: nothing was compared"
    saved = json.loads((adapter_runs["a"] / "parity.json").read_text())
    assert saved["passed"] and saved["prompts"] == 4
    assert "identical greedy outputs" in explain(report)


def test_a_server_with_another_template_fails_with_a_readable_diff(adapter_runs, tiny_model_dir, tmp_path):
    """A server whose adapter renders prompts differently (here: another system prompt) must be caught."""
    import shutil

    import yaml

    changed = tmp_path / "runs" / "changed"
    shutil.copytree(adapter_runs["a"], changed)
    config = yaml.safe_load((changed / "config.yaml").read_text())
    config["data"]["system_prompt"] = "You answer in French."
    (changed / "config.yaml").write_text(yaml.safe_dump(config))
    from tests.serve.servers import running_server

    with running_server(tiny_model_dir, [("a", changed)]) as running:
        report = check_parity(adapter_runs["a"], server=running.url, api_key=running.keys["inference"], model="a",
                              limit=3, merged=False)
    assert not report.passed
    assert report.differences[0]["what"] == "prompt"
    assert "renders a different prompt" in explain(report)


def test_parity_refuses_runs_it_cannot_compare(tmp_path):
    with pytest.raises(TunelabError):
        check_parity(tmp_path)


def test_parity_check_on_load_accepts_good_adapters_and_refuses_one_that_never_stops(
        adapter_runs, tiny_model_dir, monkeypatch):
    """--parity-check: adapters a and b pass at start-up; an adapter served without its end token (the peers'
    'model never stops' bug, simulated) answers past where eval stops, and loading it is refused."""
    from tests.serve.servers import running_server
    from tunelab.serve import pool

    root, stops = adapter_runs["a"].parent, adapter_runs["stops"]
    with running_server(tiny_model_dir, [("a", adapter_runs["a"]), ("b", adapter_runs["b"])],
                        adapter_roots=[root], parity_check=True) as running:
        admin = running.http("admin")
        assert admin.post("/v1/admin/adapters", json={"name": "long", "source": str(stops)}).status_code == 201
        assert admin.delete("/v1/admin/adapters/long").status_code == 200
        monkeypatch.setattr(pool, "eos_ids", lambda tokenizer, model: frozenset())
        refused = admin.post("/v1/admin/adapters", json={"name": "long", "source": str(stops)})
        assert refused.status_code == 422, refused.text
        assert "failed its parity check" in refused.json()["error"]["message"]
        assert "long" not in {m["id"] for m in running.http("inference").get("/v1/models").json()["data"]}
