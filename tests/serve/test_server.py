"""The OpenAI-compatible server, through the official ``openai`` client against a real uvicorn on loopback."""

from __future__ import annotations

import json
import shutil
import threading

import httpx
import openai
import pytest

from tunelab.registry.schema import Feedback, ServedResponse
from tunelab.registry.serving import user_hash
from tunelab.serve.completions import Limits
from tunelab.serve.pool import eos_ids

from tests.serve.servers import running_server


MESSAGES = [{"role": "user", "content": "the movie was great"}]


def chat(client, model="a", **options):
    return client.chat.completions.create(model=model, messages=MESSAGES, **{"max_tokens": 12, "temperature": 0,
                                                                             **options})


def test_models_chat_and_usage(served):
    client = served.client()
    names = {m.id for m in client.models.list().data}
    assert {"a", "b"} <= names and len(names) == 3
    answer = chat(client)
    assert answer.model == "a" and answer.object == "chat.completion"
    assert answer.system_fingerprint.startswith("run-a:")
    assert answer.choices[0].finish_reason in ("stop", "length")
    tokenizer = served.state.pool.get("a").tokenizer
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert answer.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= answer.usage.completion_tokens <= 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_streaming_gives_the_same_text_and_usage_last(served):
    client = served.client()
    whole = chat(client, max_tokens=20)
    chunks = list(chat(client, max_tokens=20, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_seeded_n_choices_repeat_and_differ(served):
    client = served.client()
    first = chat(client, n=3, temperature=1.5, seed=11, max_tokens=16)
    again = chat(client, n=3, temperature=1.5, seed=11, max_tokens=16)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1


def test_logprobs_name_the_greedy_token_as_most_likely(served):
    answer = chat(served.client(), logprobs=True, top_logprobs=3, max_tokens=8)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens or answer.choices[0].finish_reason == "stop"
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_json_schema_response_parses_and_validates(served):
    schema = {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative"]},
                                               "stars": {"type": "integer", "minimum": 1, "maximum": 5}},
              "required": ["sentiment", "stars"], "additionalProperties": False}
    client = served.client()
    for seed in range(3):
        answer = chat(client, model="b", max_tokens=40, temperature=1.0, seed=seed,
                      response_format={"type": "json_schema", "json_schema": {"name": "review", "schema": schema}})
        value = json.loads(answer.choices[0].message.content)
        assert set(value) == {"sentiment", "stars"}
        assert value["sentiment"] in ("positive", "negative") and 1 <= value["stars"] <= 5
        assert answer.choices[0].finish_reason == "stop"


def test_two_adapters_and_the_base_share_one_batch_with_their_own_answers(served):
    client = served.client()
    models = {"a": "a", "b": "b", "base": served.state.pool.base_name}
    alone = {key: chat(client, model=model, max_tokens=24).choices[0].message.content for key, model in models.items()}
    results, threads = {}, []
    for i in range(6):
        key = list(models)[i % 3]
        thread = threading.Thread(target=lambda k=key, i=i: results.__setitem__(
            (k, i), chat(client, model=models[k], max_tokens=24).choices[0].message.content))
        threads.append(thread)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[(k, i)] == alone[k] for k, i in results)
    assert len(set(alone.values())) == 3
    metrics = served.http("admin").get("/metrics").text
    mixed = [line for line in metrics.splitlines() if line.startswith("tunelab_batch_models_bucket")]
    below_two = next(float(line.split()[-1]) for line in mixed if 'le="1.0"' in line)
    total = next(float(line.split()[-1]) for line in mixed if 'le="+Inf"' in line)
    assert total > below_two  # some decode steps held rows of more than one model


def test_adapters_load_and_unload_at_run_time_inside_the_roots_only(served, adapter_runs, tmp_path):
    admin = served.http("admin")
    loaded = admin.post("/v1/admin/adapters", json={"name": "c", "source": str(adapter_runs["b"])})
    assert loaded.status_code == 201, loaded.text
    client = served.client()
    assert "c" in {m.id for m in client.models.list().data}
    assert chat(client, model="c").choices[0].message.content == chat(client, model="b").choices[0].message.content
    assert admin.delete("/v1/admin/adapters/c").status_code == 200
    with pytest.raises(openai.NotFoundError):
        chat(client, model="c")
    assert chat(client, model="b").choices  # the others still answer
    outside = tmp_path / "elsewhere"  # a real run, but outside the roots
    shutil.copytree(adapter_runs["a"], outside)
    link_inside = adapter_runs["a"].parent / "link-out"
    link_inside.symlink_to(tmp_path)
    try:
        for source in (str(outside), str(adapter_runs["a"].parent / ".." / "runs" / "run-a"), str(link_inside)):
            refused = admin.post("/v1/admin/adapters", json={"name": "d", "source": source})
            assert refused.status_code == 403, source
            assert refused.json()["error"]["param"] == "source"
    finally:
        link_inside.unlink()
    assert served.http("inference").post("/v1/admin/adapters", json={"name": "d", "source": "x"}).status_code == 403


def test_keys_are_required_and_roles_enforced(served):
    anonymous = served.http(None)
    assert anonymous.get("/health").status_code == 200
    assert anonymous.head("/health").status_code == anonymous.head("/ready").status_code == 200  # probes use HEAD
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"),
                         ("GET", "/v1/admin/adapters")]:
        response = anonymous.request(method, path, content=b"{not json")
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "authentication_error"
    wrong = served.keys["inference"][:-4] + "AAAA"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key=wrong, max_retries=0).models.list()
    user = served.http("inference")
    for method, path in [("GET", "/metrics"), ("GET", "/v1/admin/keys"), ("POST", "/v1/ab"), ("GET", "/v1/ab")]:
        assert user.request(method, path, json={}).status_code == 403, path
    assert served.http("admin").get("/metrics").status_code == 200
    created = served.http("admin").post("/v1/admin/keys", json={"name": "new", "role": "inference"}).json()
    fresh = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {created['key']}"})
    assert fresh.get("/v1/models").status_code == 200
    assert served.http("admin").delete(f"/v1/admin/keys/{created['id']}").status_code == 200
    assert fresh.get("/v1/models").status_code == 401


def test_bad_requests_get_openai_errors_never_500(served):
    user = served.http("inference")
    long_prompt = "the movie was great " * 200
    cases = [
        (b"{not json", 400, None),
        (json.dumps({"model": "a", "messages": MESSAGES, "temperature": "hot"}).encode(), 400, "temperature"),
        (json.dumps({"model": "a", "messages": "hello"}).encode(), 400, "messages"),
        (json.dumps({"model": "nope", "messages": MESSAGES}).encode(), 404, "model"),
        (json.dumps({"model": "a", "messages": MESSAGES, "n": 50}).encode(), 400, "n"),
        (json.dumps({"model": "a", "messages": MESSAGES, "max_tokens": 100000}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "a", "messages": [{"role": "user", "content": long_prompt}]}).encode(), 400, "messages"),
        (json.dumps({"model": "a", "messages": MESSAGES, "response_format": {"type": "xml"}}).encode(), 400,
         "response_format.type"),
        (json.dumps({"model": "a", "messages": MESSAGES, "response_format": {"type": "json_schema"}}).encode(), 400,
         None),
        (b"x" * (2 << 20), 413, None),
    ]
    for body, status, param in cases:
        response = user.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status, (body[:80], response.text)
        error = response.json()["error"]
        assert error["message"] and error["type"]
        if param:
            assert error["param"] == param, error
    assert user.post("/v1/completions", json={"model": "a", "prompt": "x", "echo": True}).status_code == 400


def test_feedback_is_stored_with_the_response_and_a_salted_user_hash(served):
    client = served.client()
    answer = chat(client, user="alice@example.com")
    stored = client.post("/feedback", cast_to=object, body={"response_id": answer.id, "rating": "up",
                                                             "corrected": "positive", "comment": "good"})
    assert stored["response_id"] == answer.id
    other = served.client("inference2")
    with pytest.raises(openai.NotFoundError):
        other.post("/feedback", cast_to=object, body={"response_id": answer.id, "rating": "down"})
    with pytest.raises(openai.BadRequestError):
        client.post("/feedback", cast_to=object, body={"response_id": answer.id, "score": 9})
    with served.state.registry.session() as session:
        response = session.get(ServedResponse, answer.id)
        assert response.user_hash == user_hash("alice@example.com") != "alice@example.com"
        assert response.prompt == MESSAGES and response.response == [answer.choices[0].message.content]
        assert response.model_version == "run-a"
        feedback = session.query(Feedback).filter_by(response_id=answer.id).one()
        assert (feedback.rating, feedback.corrected, feedback.user_hash) == ("up", "positive", response.user_hash)


def test_ab_test_is_sticky_per_user_and_reported(served):
    admin = served.http("admin")
    assert admin.post("/v1/ab", json={"name": "pick", "arms": {"a": 0.5, "b": 0.5}}).status_code == 201
    client = served.client()
    seen = {}
    for user in [f"user{i}" for i in range(12)]:
        arms = {chat(client, model="pick", user=user, max_tokens=2).model for _ in range(2)}
        assert len(arms) == 1
        seen[user] = arms.pop()
    assert set(seen.values()) == {"a", "b"}
    report = admin.get("/v1/ab/pick").json()
    assert sum(arm["requests"] for arm in report["arms"].values()) == 24


def test_flood_on_a_small_queue_gets_429_and_the_server_stays_up(tiny_model_dir):
    with running_server(tiny_model_dir, max_batch=1, max_queue=2) as running:
        client = running.client()
        base = running.state.pool.base_name
        statuses = []

        def call():
            try:
                chat(client, model=base, max_tokens=200)
                statuses.append(200)
            except openai.RateLimitError as error:
                assert error.response.headers["retry-after"] == "1"
                statuses.append(429)

        threads = [threading.Thread(target=call) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 429 in statuses and 200 in statuses
        assert running.http(None).get("/health").status_code == 200
        assert chat(client, model=base, max_tokens=4).choices


def test_client_gone_mid_stream_frees_its_row(served):
    user = served.http("inference")
    body = {"model": "a", "messages": MESSAGES, "max_tokens": 250, "stream": True, "temperature": 0}
    with user.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")
    engine = served.state.engine
    for _ in range(200):
        if engine.running == 0 and engine.queue_depth == 0:
            break
        threading.Event().wait(0.05)
    assert engine.running == 0
    assert chat(served.client()).choices


def test_eos_ids_include_the_generation_configs(served):
    served_a = served.state.pool.get("a")
    assert served_a.tokenizer.eos_token_id in eos_ids(served_a.tokenizer, served.state.pool.model)


def test_limits_are_configurable(tiny_model_dir):
    with running_server(tiny_model_dir, limits=Limits(max_tokens=8, max_n=1)) as running:
        base = running.state.pool.base_name
        with pytest.raises(openai.BadRequestError, match="at most 8"):
            chat(running.client(), model=base, max_tokens=9)
        with pytest.raises(openai.BadRequestError, match="at most 1"):
            chat(running.client(), model=base, n=2)
