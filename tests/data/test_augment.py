"""tunelab data augment: seeded word edits, model and server paraphrases, origin links, and the split
rule that keeps augmented copies with their source and out of val/test."""

from __future__ import annotations

import json
import random
import shutil
import threading
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunelab.cli import main
from tunelab.config import DataConfig
from tunelab.data.dataset import load_splits
from tunelab.data.formats import read_records
from tunelab.data.records import Record
from tunelab.data.split import HELD_OUT_COPY, is_augmented, origin, row_hash, split_records
from tunelab.errors import TunelabError
from tunelab.generate.augment import (
    augment_config,
    augment_file,
    augment_records,
    delete_words,
    paraphrase_problem,
    swap_words,
)

SENTENCE = "one two three four five six seven eight nine ten"
PARAPHRASE_REASONS = ("empty paraphrase", "paraphrase identical to the source",
                      "paraphrase repeats the source word for word", "degenerate paraphrase",
                      "paraphrase too short", "paraphrase too long",
                      "duplicate of another paraphrase of the same row")


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def labeled_rows(n: int) -> list[dict]:
    words = ["great", "wonderful", "dull", "tedious", "moving", "awful", "fun", "boring"]
    return [{"text": f"row {i} the film was {words[i % 8]} and the plot was thin",
             "label": "positive" if i % 2 == 0 else "negative"} for i in range(n)]


def check_links(rows: list[dict]) -> dict[str, dict]:
    """Every source row's row_hash is the hash of its content; every copy points at a source row."""
    sources = {}
    for row in rows:
        if "augmented_from" not in row["meta"]:
            content = {k: v for k, v in row.items() if k != "meta"}
            record, = read_records_from_row(content)
            assert row["meta"]["row_hash"] == row_hash(record)
            sources[row["meta"]["row_hash"]] = row
    for row in rows:
        if "augmented_from" in row["meta"]:
            assert row["meta"]["augmented_from"] in sources
            assert row["meta"]["augmentation"] in ("paraphrase", "swap", "delete")
    return sources


def read_records_from_row(row: dict) -> list[Record]:
    if "messages" in row:
        return [Record(kind="chat", messages=row["messages"])]
    if "label" in row:
        return [Record(kind="labeled", text=row["text"], label=row["label"])]
    return [Record(kind="text", text=row["text"])]


# Word edits -------------------------------------------------------------------------------------

@pytest.mark.parametrize("swaps", [1, 2, 3])
def test_swap_exchanges_the_asked_number_of_word_pairs_reproducibly(swaps):
    edited, made = swap_words(SENTENCE, swaps, random.Random(5))
    again, _ = swap_words(SENTENCE, swaps, random.Random(5))
    before, after = SENTENCE.split(), edited.split()
    assert made == swaps and edited == again
    assert sorted(after) == sorted(before)  # same words, only positions changed
    assert sum(a != b for a, b in zip(before, after, strict=True)) == 2 * swaps
    others = {swap_words(SENTENCE, swaps, random.Random(seed))[0] for seed in range(10)}
    assert len(others) > 1


def test_swap_is_capped_by_the_words_there_are_and_keeps_line_breaks():
    text = "alpha beta\ngamma  delta\n\nepsilon"
    edited, made = swap_words(text, 10, random.Random(0))
    assert made == 2  # five words hold two disjoint pairs
    assert edited.count("\n") == 3 and "  " in edited
    assert sorted(edited.split()) == sorted(text.split())
    assert swap_words("single", 1, random.Random(0)) == ("single", 0)


@pytest.mark.parametrize("deletions", [1, 3, 9, 50])
def test_delete_removes_the_asked_number_of_words_in_order(deletions):
    edited, made = delete_words(SENTENCE, deletions, random.Random(2))
    assert made == min(deletions, 9)  # at least one word always remains
    assert edited == delete_words(SENTENCE, deletions, random.Random(2))[0]
    remaining = edited.split()
    assert len(remaining) == 10 - made
    positions = [SENTENCE.split().index(w) for w in remaining]
    assert positions == sorted(positions)  # a subsequence of the source
    assert edited == " ".join(remaining)  # single spaces stay single, no stray spaces at the ends


def test_edited_copies_link_to_their_source_and_keep_answers_and_labels(tmp_path):
    rows = [
        {"prompt": "Name three colors of the rainbow please", "completion": "Red, orange and yellow."},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "first question here"},
                      {"role": "assistant", "content": "first answer"},
                      {"role": "user", "content": "what is the capital of France"},
                      {"role": "assistant", "content": "Paris"}], "id": 7},
        {"prompt": "Hello", "completion": "Hi!"},  # one word: nothing to swap or delete
    ]
    out = tmp_path / "aug.jsonl"
    config = augment_config(paraphrases=0, ops=["swap", "delete"], ops_per_row=2, seed=3)
    summary = augment_file(write_jsonl(tmp_path / "in.jsonl", rows), out, config)
    written = read_jsonl(out)
    sources = check_links(written)
    assert len(sources) == 3 and summary["augmented"] == {"swap": 2, "delete": 2}
    assert written[0]["meta"] == {"row_hash": written[0]["meta"]["row_hash"]}
    assert written[3]["meta"]["id"] == 7  # a source keeps its own meta
    for row in written:
        if "augmented_from" not in row["meta"]:
            continue
        source = sources[row["meta"]["augmented_from"]]
        assert row["messages"][-1] == source["messages"][-1]  # the answer is untouched
        assert row["messages"][:-2] == source["messages"][:-2]  # so is everything before the last question
        question, original = row["messages"][-2]["content"], source["messages"][-2]["content"]
        assert question != original
        if row["meta"]["augmentation"] == "swap":
            assert sorted(question.split()) == sorted(original.split()) and row["meta"]["edits"] == 2
        else:
            assert len(question.split()) == len(original.split()) - 2
    quarantined = read_jsonl(tmp_path / "aug.quarantine.jsonl")
    assert sorted(q["reason"] for q in quarantined) == ["too short to delete words: 1 word",
                                                        "too short to swap words: 1 word"]
    assert all(q["line"] == 3 for q in quarantined)
    assert summary["quarantined"] == 2
    # the output reads back as ordinary data, links included
    records, bad = read_records(out)
    assert not bad and sum(is_augmented(r) for r in records) == 4

    again = tmp_path / "again.jsonl"
    augment_file(tmp_path / "in.jsonl", again, config)
    assert again.read_bytes() == out.read_bytes()
    other = tmp_path / "other.jsonl"
    augment_file(tmp_path / "in.jsonl", other, augment_config(paraphrases=0, ops=["swap", "delete"],
                                                              ops_per_row=2, seed=4))
    assert other.read_bytes() != out.read_bytes()


# Paraphrases ------------------------------------------------------------------------------------

@pytest.mark.parametrize("paraphrase, reason", [
    ("", "empty paraphrase"),
    ("  The film was GREAT fun.  ", "paraphrase identical to the source"),
    ("Sure. The film was great fun, I think.", "paraphrase repeats the source word for word"),
    ("great great great great film", "degenerate paraphrase: it repeats itself"),
    ("a fine movie a fine movie a fine movie", "degenerate paraphrase: it repeats itself"),
    ("a fine \ufffd\x06movie indeed", "degenerate paraphrase: broken characters"),
    ("Rewrite the following text in different words please", "degenerate paraphrase: it repeats the instruction"),
    ("Fun.", "paraphrase too short: 1 word for a source of 5 words"),
    ("It was a film that I found to be really quite enjoyable and fun from start to end", "paraphrase too long"),
    ("I enjoyed this movie a lot.", None),
])
def test_paraphrase_checks_name_the_problem(paraphrase, reason):
    problem = paraphrase_problem("the film was great fun", paraphrase, augment_config())
    assert problem is None if reason is None else (problem or "").startswith(reason)


@pytest.fixture
def ascii_model_dir(tmp_path, tiny_model_dir):
    """The tiny random model, kept by its generation config to tokens that decode to printable ASCII, so
    some of its samples pass the paraphrase checks (unrestricted, it mostly writes broken bytes)."""
    from transformers import AutoTokenizer, GenerationConfig

    folder = tmp_path / "ascii-model"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    generation = GenerationConfig.from_pretrained(folder)
    generation.suppress_tokens = [i for i in range(len(tokenizer)) if i != tokenizer.eos_token_id
                                  and not all(" " <= c <= "~" for c in tokenizer.decode([i]))]
    generation.save_pretrained(folder)
    return folder


@contextmanager
def one_thread():
    """Sampling from the near-uniform tiny model is reproducible only if the logits are bit for bit the same,
    and a matmul split over a varying number of threads may round differently; one thread rules that out."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_paraphrases(tmp_path, model_dir, name: str) -> tuple[dict, list[dict], list[dict]]:
    source = write_jsonl(tmp_path / "in.jsonl", labeled_rows(6))
    config = augment_config(paraphrases=2, model=str(model_dir), max_new_tokens=16, batch_size=4, seed=1)
    with one_thread():
        summary = augment_file(source, tmp_path / f"{name}.jsonl", config)
        augment_file(source, tmp_path / f"{name}-again.jsonl", config)
    assert (tmp_path / f"{name}-again.jsonl").read_bytes() == (tmp_path / f"{name}.jsonl").read_bytes()
    return summary, read_jsonl(tmp_path / f"{name}.jsonl"), read_jsonl(tmp_path / f"{name}.quarantine.jsonl")


@pytest.mark.parametrize("restricted", [True, False])
def test_tiny_model_paraphrases_go_through_the_whole_pipeline(tmp_path, tiny_model_dir, ascii_model_dir,
                                                              restricted):
    model_dir = ascii_model_dir if restricted else tiny_model_dir
    summary, written, quarantined = run_paraphrases(tmp_path, model_dir, "aug")
    sources = check_links(written)
    paraphrases = [r for r in written if r["meta"].get("augmentation") == "paraphrase"]
    assert len(sources) == 6
    assert len(paraphrases) + len(quarantined) == 2 * 6  # every sample is kept or quarantined
    for row in paraphrases:
        source_row = sources[row["meta"]["augmented_from"]]
        assert row["label"] == source_row["label"] and row["text"] != source_row["text"]
        assert paraphrase_problem(source_row["text"], row["text"], augment_config()) is None
    for q in quarantined:
        assert q["reason"].startswith(PARAPHRASE_REASONS), q["reason"]
        assert json.loads(q["raw"])["meta"]["augmented_from"] in sources  # the rejected sample, linked
    assert summary["quarantined"] == len(quarantined)
    if restricted:
        assert len(paraphrases) >= 6  # kept samples are marked and linked
    else:
        assert any(q["reason"] == "degenerate paraphrase: broken characters" for q in quarantined)


class ChatServer(BaseHTTPRequestHandler):
    """A minimal OpenAI-style server whose replies depend on the text to paraphrase."""

    requests: list[dict] = []

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "para-1", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "no such route"}})

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "no such route"}})
        if self.headers.get("Authorization") != "Bearer secret":
            return self._send(401, {"error": {"message": "invalid api key", "type": "auth"}})
        type(self).requests.append(payload)
        text = payload["messages"][-1]["content"].split("Text: ", 1)[1]
        words = text.split()
        if "dull" in text:
            reply = text  # an echo
        elif "tedious" in text:
            reply = ""
        elif "awful" in text:
            reply = "awful " * 6
        elif "boring" in text:
            reply = " ".join(reversed(words))  # the same reply for every sample: a duplicate
        else:
            turn = payload["seed"] % 3 + 1  # a rotation that differs between seeds
            reply = " ".join(words[turn:] + words[:turn]) + " indeed"
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]})


@pytest.fixture
def chat_server():
    ChatServer.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_server_paraphrases_are_checked_and_linked(tmp_path, chat_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "secret")
    rows = labeled_rows(8)
    config = augment_config(paraphrases=2, server=chat_server, temperature=0.7, max_new_tokens=40, seed=10)
    augment_file(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "aug.jsonl", config)
    written = read_jsonl(tmp_path / "aug.jsonl")
    quarantined = read_jsonl(tmp_path / "aug.quarantine.jsonl")
    sources = check_links(written)
    requests = ChatServer.requests
    assert len(requests) == 16 and {r["model"] for r in requests} == {"para-1"}  # from GET /models
    assert {r["temperature"] for r in requests} == {0.7} and {r["max_tokens"] for r in requests} == {40}
    assert {r["top_p"] for r in requests} == {0.95}
    assert len({r["seed"] for r in requests}) == 16
    reasons = Counter(q["reason"].split(":")[0] for q in quarantined)
    assert reasons == {"paraphrase identical to the source": 2, "empty paraphrase": 2,
                       "degenerate paraphrase": 2, "duplicate of another paraphrase of the same row": 1}
    paraphrases = [r for r in written if r["meta"].get("augmentation") == "paraphrase"]
    assert len(paraphrases) == 16 - 7
    for row in paraphrases:
        source = sources[row["meta"]["augmented_from"]]
        assert row["label"] == source["label"]
        added = [] if "boring" in row["text"] else ["indeed"]  # the server's rotations add a word
        assert sorted(row["text"].split()) == sorted(source["text"].split() + added)


def test_server_errors_are_one_clear_line(tmp_path, chat_server, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data = write_jsonl(tmp_path / "in.jsonl", labeled_rows(2))
    config = augment_config(server=chat_server, model="para-1", api_key="wrong")
    with pytest.raises(TunelabError, match=r"HTTP 401: invalid api key; pass --api-key"):
        augment_file(data, tmp_path / "aug.jsonl", config)
    assert not (tmp_path / "aug.jsonl").exists()
    code = main(["data", "augment", data, "--out", str(tmp_path / "aug.jsonl"),
                 "--server", "http://127.0.0.1:9/v1", "--model", "x", "--timeout", "5"])
    err = capsys.readouterr().err  # after the progress bar
    assert code == 2 and "error: cannot reach server http://127.0.0.1:9/v1/chat/completions (" in err
    assert err.split("error: ", 1)[1].count("\n") == 1


def test_cli_writes_copies_and_rejects_bad_settings(tmp_path, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", labeled_rows(4))
    out = tmp_path / "aug.jsonl"
    assert main(["data", "augment", data, "--out", str(out), "--paraphrases", "0", "--ops", "swap,delete",
                 "--ops-per-row", "2", "--seed", "1"]) == 0
    assert "4 source rows and 4 swap, 4 delete" in capsys.readouterr().out
    assert len(read_jsonl(out)) == 12
    assert main(["data", "augment", data, "--out", str(out), "--ops", "shuffle"]) == 2
    assert "ops.0" in capsys.readouterr().err
    assert main(["data", "augment", data, "--out", str(out), "--paraphrases", "0"]) == 2
    assert "nothing to do" in capsys.readouterr().err


# Splits -----------------------------------------------------------------------------------------

def augmented_records(n: int) -> list[Record]:
    records = [Record(kind="labeled", text=r["text"], label=r["label"], source="in.jsonl", line=i + 1)
               for i, r in enumerate(labeled_rows(n))]
    return augment_records(records, augment_config(paraphrases=0, ops=["swap", "delete"]), [])


def test_augmented_copies_follow_their_source_and_never_reach_val_or_test():
    records = augmented_records(40)
    originals = [r for r in records if not is_augmented(r)]
    quarantine = []
    train, val, test = split_records(records, 0.2, 0.2, seed=3, quarantine=quarantine)
    assert not any(is_augmented(r) for r in val + test)
    train_origins = {origin(r) for r in train if not is_augmented(r)}
    held_out = {origin(r) for r in val + test}
    assert all(origin(r) in train_origins for r in train if is_augmented(r))
    copies_of_held_out = [r for r in records if is_augmented(r) and origin(r) in held_out]
    assert copies_of_held_out and len(quarantine) == len(copies_of_held_out)
    assert all(q.reason.startswith(HELD_OUT_COPY) for q in quarantine)
    assert {json.loads(q.raw)["meta"]["augmented_from"] for q in quarantine} == held_out
    assert len(train) + len(val) + len(test) + len(quarantine) == len(records)
    # the copies do not change which originals land where
    plain = split_records(originals, 0.2, 0.2, seed=3)
    for with_copies, without in zip((train, val, test), plain, strict=True):
        assert sorted(r.line for r in with_copies if not is_augmented(r)) == sorted(r.line for r in without)
    with pytest.raises(TunelabError, match="no quarantine list"):
        split_records(records, 0.2, 0.2, seed=3)


def test_load_splits_removes_copies_of_given_val_and_test_rows(tmp_path):
    records = augmented_records(20)
    train_file = write_jsonl(tmp_path / "train.jsonl", [r.to_json() for r in records])
    sources = [r for r in records if not is_augmented(r)]
    held_out = sources[:3]
    stray_copy = next(r for r in records if is_augmented(r) and origin(r) == origin(sources[5]))
    val_file = write_jsonl(tmp_path / "val.jsonl", [r.to_json() for r in held_out] + [stray_copy.to_json()])
    test_file = write_jsonl(tmp_path / "test.jsonl", [sources[4].to_json()])
    splits = load_splits(DataConfig(train=train_file, val=val_file, test=test_file), seed=0)
    assert not any(is_augmented(r) for r in splits.val + splits.test)
    held_out_origins = {origin(r) for r in held_out} | {origin(sources[4])}
    leaked = [r for r in splits.train if is_augmented(r) and origin(r) in held_out_origins]
    assert leaked == []
    removed = [r for r in records if is_augmented(r) and origin(r) in held_out_origins]
    reasons = Counter(q.reason.split(":")[0] for q in splits.quarantined)
    assert reasons == {HELD_OUT_COPY: len(removed), "augmented row in the val data": 1}
    assert len(removed) >= 4 and len(splits.train) == len(records) - len(removed)
    assert stray_copy.to_json() in [r.to_json() for r in splits.train]  # its source is not held out

    split_off = load_splits(DataConfig(train=train_file, val_fraction=0.2, test_fraction=0.2), seed=1)
    assert not any(is_augmented(r) for r in split_off.val + split_off.test)
    assert all(q.reason.startswith(HELD_OUT_COPY) for q in split_off.quarantined)
    held_out_origins = {origin(r) for r in split_off.val + split_off.test}
    assert len(split_off.quarantined) == sum(is_augmented(r) and origin(r) in held_out_origins for r in records)
