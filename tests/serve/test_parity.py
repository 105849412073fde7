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


def test_near_ties_are_forgiven_only_when_close_and_rare():
    from tunelab.serve.golden import Case
    from tunelab.serve.parity import NEAR_TIE_NATS, ParityReport, forgive_near_ties

    cases = [Case(prompt=f"p{i}", messages=[], shown=f"p{i}", reference=None) for i in range(40)]
    margins = {"p1": NEAR_TIE_NATS / 2, "p2": 3.0}

    def report_with(*prompts):
        report = ParityReport("run", len(cases))
        report.differences = [{"prompt": p, "what": "eval vs server", "eval": "yes", "server": "no"} for p in prompts]
        return report

    report = report_with("p1", "p2")
    forgive_near_ties(report, cases, lambda case, a, b: margins[case.shown])
    assert [d["prompt"] for d in report.near_ties] == ["p1"] and [d["prompt"] for d in report.differences] == ["p2"]
    assert not report.passed  # the real difference still fails

    report = report_with("p1")
    forgive_near_ties(report, cases, lambda case, a, b: margins[case.shown])
    assert report.passed and report.near_ties[0]["margin_nats"] == round(NEAR_TIE_NATS / 2, 4)

    many = [f"p{i}" for i in range(10)]  # a quarter of the prompts flipping is not rounding
    report = report_with(*many)
    forgive_near_ties(report, cases, lambda case, a, b: 0.0)
    assert not report.passed and not report.near_ties


def test_token_margin_is_the_log_probability_gap_where_answers_part(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.serve.parity import token_margin

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = "the movie was"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        scores = model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    def survives(token: int) -> bool:  # a token whose text encodes back to it alone
        return tokenizer(tokenizer.decode([token]), add_special_tokens=False)["input_ids"] == [token]

    best, second = [t for t in scores.topk(100).indices.tolist() if survives(t)][:2]
    a, b = tokenizer.decode([best]), tokenizer.decode([second])
    assert token_margin(model, tokenizer, prompt, a, b) == pytest.approx(float(scores[best] - scores[second]),
                                                                           abs=1e-5)
    after = scores_after(model, ids + [best])
    ended = float(abs(after[second] - after[tokenizer.eos_token_id]))  # one answer ended: it chose its end token
    assert token_margin(model, tokenizer, prompt, a + b, a) == pytest.approx(ended, abs=1e-5)
    assert token_margin(model, tokenizer, prompt, a, a) is None


def scores_after(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
