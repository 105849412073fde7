"""data synth: documents, chunks, retrieval, the support check, and the pipeline against a real HTTP server."""

from __future__ import annotations

import json
import re
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunelab.cli import main
from tunelab.data.documents import Document, chunk_document, html_to_text, read_documents
from tunelab.data.formats import read_records
from tunelab.errors import ConfigError, TunelabError
from tunelab.generate.generators import ServerGenerator, chat_completions_url
from tunelab.generate.synth import (
    Pair,
    ParseError,
    SupportChecker,
    output_paths,
    parse_input,
    parse_pairs,
    synth_config,
    synthesize,
    verdict,
)
from tunelab.modeling.embeddings import SentenceEncoder, top_k_similar

ESPRESSO = (
    "The Zephyr 3000 espresso machine heats water to 93 degrees Celsius in under forty seconds. "
    "Its steam wand can froth milk for cappuccinos.\n\n"
    "The drip tray should be emptied daily. The machine needs descaling every two months with the "
    "supplied citric acid tablets. The warranty covers two years of parts."
)
GARDEN = (
    "Tomato plants need deep watering twice a week during dry summer weeks. "
    "Mulch around the stems keeps the soil moist and cool.\n\n"
    "Pinch off the side shoots of cordon tomatoes so the plant puts its energy into the fruit."
)
BICYCLE_HTML = """<html><head><title>Bike care</title><style>p { color: red; }</style>
<script>var tracking = "do not keep this";</script></head>
<body><h1>Bicycle chain care</h1><p>Clean the bicycle chain with a degreaser &amp; a stiff brush.</p>
<p>Oil each link of the chain after cleaning, then wipe off the excess oil.</p></body></html>"""
LIGHTHOUSE = "The lighthouse keeper lit the lamp at dusk every evening."


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose content stream draws ``text`` in Helvetica, with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    (folder / "kitchen").mkdir(parents=True)
    (folder / "kitchen" / "espresso.md").write_text("# Zephyr 3000\n\n" + ESPRESSO, encoding="utf-8")
    (folder / "garden.txt").write_text(GARDEN, encoding="utf-8")
    (folder / "bike.html").write_text(BICYCLE_HTML, encoding="utf-8")
    (folder / "lighthouse.pdf").write_bytes(minimal_pdf(LIGHTHOUSE))
    (folder / "empty.txt").write_text("  \n", encoding="utf-8")
    (folder / "broken.pdf").write_bytes(b"this is not a pdf")
    (folder / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (folder / "notes.docx").write_bytes(b"PK\x03\x04")
    return folder


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder("minilm-l6")


def test_reads_every_type_and_lists_what_it_skips(docs):
    documents, skipped = read_documents(docs)
    texts = {d.path: d.text for d in documents}
    assert sorted(texts) == ["bike.html", "garden.txt", "kitchen/espresso.md", "lighthouse.pdf"]
    assert texts["garden.txt"] == GARDEN
    assert LIGHTHOUSE in texts["lighthouse.pdf"]
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {"empty.txt", "broken.pdf", "latin.txt", "notes.docx"}
    assert "no text" in reasons["empty.txt"]
    assert "unreadable PDF" in reasons["broken.pdf"]
    assert "UTF-8" in reasons["latin.txt"]
    assert "unsupported file type .docx" in reasons["notes.docx"]


def test_a_folder_without_documents_is_one_clear_error(tmp_path):
    (tmp_path / "only.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="no readable documents.*only.csv: unsupported"):
        read_documents(tmp_path)
    with pytest.raises(TunelabError, match="not a folder"):
        read_documents(tmp_path / "missing")


def test_html_keeps_visible_text_in_blocks_and_drops_script_and_style():
    text = html_to_text(BICYCLE_HTML)
    assert "tracking" not in text and "color" not in text
    assert text.split("\n\n") == ["Bike care", "Bicycle chain care",
                                  "Clean the bicycle chain with a degreaser & a stiff brush.",
                                  "Oil each link of the chain after cleaning, then wipe off the excess oil."]


def test_chunks_respect_the_size_overlap_and_exact_offsets():
    sentences = [f"Sentence number {i} talks about topic {i % 3} in five more words." for i in range(30)]
    text = " ".join(sentences[:12]) + "\n\n" + " ".join(sentences[12:20]) + "\n\n" + " ".join(sentences[20:])
    document = Document("doc.txt", text)
    chunks = chunk_document(document, max_words=40, overlap_words=12)
    assert len(chunks) > 5
    for i, chunk in enumerate(chunks):
        assert chunk.index == i and chunk.doc == "doc.txt"
        assert text[chunk.start:chunk.end] == chunk.text
        assert len(chunk.text.split()) <= 40
        assert chunk.text[0].isupper() and chunk.text.endswith(".")  # cut at sentence ends
    for before, after in zip(chunks, chunks[1:]):
        assert before.start < after.start <= before.end  # overlap, and always moving forward
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    # Everything is covered: no gap between one chunk's end and the next chunk's start.
    assert all(after.start <= before.end for before, after in zip(chunks, chunks[1:]))
    one = chunk_document(Document("short.txt", "One short paragraph."), max_words=40, overlap_words=10)
    assert [(c.start, c.end) for c in one] == [(0, 20)]


def test_retrieval_finds_the_truly_related_chunk(encoder):
    texts = [
        "Descale the espresso machine every two months with citric acid tablets.",
        "Water tomato plants deeply twice a week in dry weather.",
        "Oil the bicycle chain after cleaning it with degreaser.",
        "Limescale builds up inside coffee makers; a descaling tablet dissolves it.",
        "Lubricate each link of a bike chain and wipe off the excess.",
        "Pinch out tomato side shoots to get bigger fruit.",
    ]
    vectors = encoder.embed(texts)
    assert abs(float(vectors.norm(dim=1).mean()) - 1) < 1e-5
    neighbours = top_k_similar(vectors, vectors, k=1, exclude_self=True)
    assert [n[0][0] for n in neighbours] == [3, 5, 4, 0, 2, 1]
    query = encoder.embed(["How often should I descale my coffee machine?"])
    assert top_k_similar(query, vectors, k=2)[0][0][0] in (0, 3)


def test_support_check_keeps_supported_answers_and_rejects_others(encoder):
    chunks = chunk_document(Document("espresso.md", ESPRESSO), max_words=150, overlap_words=20)
    checker = SupportChecker(encoder, chunks)
    pairs = [Pair("How hot does the Zephyr 3000 get the water?",
                  "It heats water to 93 degrees Celsius in under forty seconds."),
             Pair("How often should I descale the machine?",
                  "Every two months, with the supplied citric acid tablets."),
             Pair("How did the stock market do?", "The stock market closed higher on Tuesday."),
             Pair("Who designed the Zephyr 3000?", "The Zephyr 3000 was designed in Milan by Giorgio Rossi in 1987."),
             # On topic (similar sentences), but with facts the text does not hold: caught by overlap.
             Pair("How does the steam wand froth milk?",
                  "Its steam wand froths milk using a patented turbine spinning at ten thousand rpm.")]
    scores = checker.score(pairs, [0] * len(pairs))
    config = synth_config()
    verdicts = [verdict(pair, score, config)[0] for pair, score in zip(pairs, scores)]
    assert verdicts == [None, None, "unsupported", "unsupported", "low_overlap"]
    assert scores[0].support > 0.5 > scores[2].support
    assert scores[4].support > 0.5 and scores[4].overlap < 0.6
    off = synth_config(min_support=0, min_overlap=0)
    assert [verdict(pair, score, off)[0] for pair, score in zip(pairs, scores)] == [None] * 5


def test_questions_must_fit_their_answers_and_answers_must_add_something(encoder):
    chunks = chunk_document(Document("espresso.md", ESPRESSO), max_words=150, overlap_words=20)
    pairs = [Pair("What does the warranty cover?", "The warranty covers parts for two years."),
             Pair("What is the capital of France?", "The warranty covers parts for two years."),
             Pair("What is the origin of the Zephyr 3000 espresso machine?",  # a real small-model answer
                  "The Zephyr 3000 espresso machine is a product of the Zephyr 3000 espresso machine.")]
    scores = SupportChecker(encoder, chunks).score(pairs, [0, 0, 0])
    config = synth_config()
    assert [verdict(p, s, config)[0] for p, s in zip(pairs, scores)] == [None, "off_topic_question",
                                                                         "restates_question"]
    assert scores[0].relevance > 0.3 > scores[1].relevance


def test_parsing_tolerates_markup_and_rejects_what_it_cannot_read():
    output = ("Sure! Here are the pairs:\n1. **Q1:** How hot does the water get?\n**A1:** 93 degrees\nCelsius.\n\n"
              "Question 2: What does the warranty cover?\nAnswer: \"Two years of parts.\"")
    pairs = parse_pairs(output, "qa")
    assert [(p.prompt, p.completion) for p in pairs] == [
        ("How hot does the water get?", "93 degrees\nCelsius."),
        ("What does the warranty cover?", "Two years of parts.")]
    pairs = parse_pairs("Instruction: Summarize the care steps.\nResponse: Clean, then oil.", "instruction")
    assert (pairs[0].prompt, pairs[0].completion) == ("Summarize the care steps.", "Clean, then oil.")
    with pytest.raises(ParseError, match="no labelled lines"):
        parse_pairs("I cannot help with that.", "qa")
    with pytest.raises(ParseError, match="without its answer"):
        parse_pairs("Q: What is it?", "qa")
    assert parse_input("Q: How do I descale it?", "qa") == "How do I descale it?"
    assert parse_input("How do I descale it?", "qa") == "How do I descale it?"
    with pytest.raises(ParseError):
        parse_input("", "qa")


def test_invalid_settings_fail_early_all_at_once():
    with pytest.raises(ConfigError) as error:
        synth_config(kind="poems", chunk_words=40, chunk_overlap_words=40, min_support=2.0)
    message = str(error.value)
    assert "kind" in message and "min_support" in message


def test_local_model_runs_and_its_unformatted_outputs_are_quarantined(docs, encoder, tiny_model_dir, tmp_path):
    out = tmp_path / "local.jsonl"
    summary = synthesize(docs, out, synth_config(model=str(tiny_model_dir), max_new_tokens=6), encoder=encoder)
    quarantine = [json.loads(line) for line in output_paths(out)["quarantine"].read_text().splitlines()]
    unparseable = [row for row in quarantine if row["reason"] == "unparseable"]
    # A random model never writes "Q: ... A: ...": every prompt is generated, and quarantined with its output.
    assert summary["generator"] == str(tiny_model_dir) and summary["kept"] == 0
    assert len(unparseable) == summary["prompts"] == summary["chunks"] > 0
    assert all(isinstance(row["output"], str) for row in unparseable)


# The pipeline against a real chat-completions server on loopback.

UNRELATED = "The stock market closed higher on Tuesday."


class FakeChatServer(BaseHTTPRequestHandler):
    """Answers from the prompt alone: the excerpt's first sentence, except for a few marked documents."""

    requests: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeChatServer.requests.append(body)
        if self.path != "/v1/chat/completions" or body["model"] == "missing-model":
            return self._send(404, {"error": {"message": f"model {body['model']} not found"}})
        self._send(200, {"model": "fake-writer", "choices": [{"message": {"role": "assistant",
                                                                          "content": self._answer(body)}}]})

    def _answer(self, body) -> str:
        prompt = body["messages"][-1]["content"]
        if golden := re.search(r'Reply:\n"""\n(.*?)\n"""', prompt, re.S):
            return f"Q: What should I know about: {' '.join(golden.group(1).split()[:6])}?"
        text = re.search(r'Excerpt:\n"""\n(.*?)\n"""', prompt, re.S).group(1)
        if "gibberish" in text:
            return "I would rather not."
        first_sentence = re.split(r"(?<=[.!?])\s+", text.split("\n\n")[-1])[0]
        answer = UNRELATED if "Sprockets" in text else first_sentence
        words = first_sentence.split()
        return f"Here you go:\nQ: What does the text say about {' '.join(words[:len(words) // 2])}?\nA: {answer}"

    def _send(self, status: int, payload: dict | bytes):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def serving(handler):
    """``handler`` served on a free loopback port; yields the server's address."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server():
    FakeChatServer.requests = []
    with serving(FakeChatServer) as address:
        yield f"{address}/v1"


def test_pipeline_against_a_chat_server(docs, server, encoder, tmp_path, capsys):
    (docs / "sprockets.txt").write_text("Sprockets are toothed wheels that mesh with a chain.", encoding="utf-8")
    (docs / "noise.txt").write_text("Some gibberish words that no model can use.", encoding="utf-8")
    out = tmp_path / "synth" / "qa.jsonl"
    config = synth_config(server=server, model="writer", context_chunks=2, chunk_words=40, chunk_overlap_words=8)
    summary = synthesize(docs, out, config, encoder=encoder)

    records, rejected = read_records(out)
    assert rejected == [] and all(r.kind == "chat" for r in records)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    kept_docs = {row["meta"]["source_doc"] for row in rows}
    assert {"garden.txt", "bike.html", "lighthouse.pdf", "kitchen/espresso.md"} <= kept_docs
    assert not kept_docs & {"sprockets.txt", "noise.txt"}
    documents, _ = read_documents(docs)
    texts = {d.path: d.text for d in documents}
    for row in rows:
        meta = row["meta"]
        start, end = meta["span"]
        assert row["completion"] in texts[meta["source_doc"]][start:end]  # the answer is in its source chunk
        assert meta["generator"] == "fake-writer" and meta["support"] >= 0.5 and meta["overlap"] >= 0.5
        assert len(meta["context_chunks"]) == 2
        assert all({"source_doc", "chunk", "similarity"} <= set(c) for c in meta["context_chunks"])
    # The excerpt and its context reach the server in the prompt.
    prompts = [r["messages"][-1]["content"] for r in FakeChatServer.requests]
    assert all(r["temperature"] == 0 and "top_p" not in r for r in FakeChatServer.requests)  # greedy
    assert any(LIGHTHOUSE in p and "Related excerpts" in p for p in prompts)

    quarantine = [json.loads(line) for line in output_paths(out)["quarantine"].read_text().splitlines()]
    by_reason = {}
    for row in quarantine:
        by_reason.setdefault(row["reason"], []).append(row)
    assert by_reason["unsupported"][0]["source_doc"] == "sprockets.txt"
    assert by_reason["unsupported"][0]["completion"] == UNRELATED and by_reason["unsupported"][0]["support"] < 0.5
    assert by_reason["unparseable"][0]["source_doc"] == "noise.txt"
    assert by_reason["unparseable"][0]["output"] == "I would rather not."
    assert len([r for r in quarantine if r["stage"] == "document"]) == 4

    assert summary == json.loads(output_paths(out)["summary"].read_text())
    assert summary["documents"] == 6 and summary["documents_skipped"] == 4
    assert summary["kept"] == len(rows) and summary["prompts"] == summary["chunks"] == len(FakeChatServer.requests)
    assert summary["rejected"]["unsupported"] == 1 and summary["rejected"]["unparseable"] == 1
    assert summary["generated"] == summary["kept"] + sum(
        n for reason, n in summary["rejected"].items() if reason not in ("unparseable", "unreadable_document"))
    # Every chunk of a good document gives one kept pair; only the two marked documents are rejected.
    assert summary["rejected"] == {"unreadable_document": 4, "unparseable": 1, "unsupported": 1}
    assert summary["kept"] == summary["chunks"] - 2


def test_golden_mode_writes_the_input_and_keeps_the_golden_output(docs, server, encoder, tmp_path):
    golden = tmp_path / "replies.jsonl"
    replies = ["You can descale the Zephyr 3000 with the supplied citric acid tablets every two months.",
               "Oil each link of the chain after cleaning and wipe off the excess oil.",
               "Our office is closed on public holidays."]
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(replies)] + ['{"id": 3}']  # line 4: no text
    golden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "golden.jsonl"
    summary = synthesize(docs, out, synth_config(server=server, context_chunks=1), golden=golden, encoder=encoder)

    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["completion"] for row in rows] == replies[:2]  # unchanged, in order
    assert [row["meta"]["golden_line"] for row in rows] == [1, 2]
    assert rows[0]["meta"]["source_doc"] == "kitchen/espresso.md" and rows[1]["meta"]["source_doc"] == "bike.html"
    assert rows[0]["prompt"].startswith("What should I know about: You can descale")
    quarantine = [json.loads(line) for line in output_paths(out)["quarantine"].read_text().splitlines()]
    holiday = [r for r in quarantine if r.get("golden_line") == 3]
    assert holiday[0]["reason"] == "unsupported"  # the documents say nothing about holidays
    unreadable = [r for r in quarantine if r["stage"] == "golden"]
    assert [(r["golden_line"], r["reason"]) for r in unreadable] == [(4, "unreadable_golden_row")]
    assert summary["mode"] == "golden" and summary["kept"] == 2 and summary["prompts"] == 3
    read_records(out)


def test_cli_runs_synth_and_reports_server_errors_in_one_line(docs, server, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    code = main(["data", "synth", "--docs", str(docs), "--out", str(out), "--server", server,
                 "--kind", "qa", "--pairs-per-chunk", "1", "--min-support", "0.4", "--seed", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "kept" in printed and f"rows to {out}" in printed and "skipped broken.pdf: unreadable PDF" in printed
    assert json.loads(output_paths(out)["summary"].read_text())["settings"]["min_support"] == 0.4

    code = main(["data", "synth", "--docs", str(docs), "--out", str(out), "--server", server,
                 "--model", "missing-model"])
    err = capsys.readouterr().err
    error = err[err.index("error: "):]  # after the progress bars
    assert code == 2 and error.startswith("error: server http://127.0.0.1:") and error.count("\n") == 1
    assert error.strip().endswith("answered HTTP 404: model missing-model not found")

    code = main(["data", "synth", "--docs", str(docs), "--out", str(out), "--server", "http://127.0.0.1:9/v1"])
    assert code == 2 and "cannot reach server http://127.0.0.1:9/v1/chat/completions" in capsys.readouterr().err


def test_server_addresses():
    full = "http://host:8000/v1/chat/completions"
    assert {chat_completions_url(u) for u in ("http://host:8000", "http://host:8000/v1/", full)} == {full}
    with pytest.raises(TunelabError, match="not an http"):
        chat_completions_url("host:8000")


class OddServer(FakeChatServer):
    """Replies a chat-completions client must turn into one clear line; the first path part picks which."""

    def do_GET(self):
        self._send(200, b'{"object": "list", "data": []}')  # a models list without models

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        route = self.path.split("/")[1]
        if route == "slow":
            return time.sleep(1)  # no answer before the client gives up
        replies = {"html": (200, b"<html>busy</html>"), "locked": (403, b'{"error": {"message": "forbidden"}}'),
                   "plain": (500, b"database\n  on fire"), "empty": (200, b'{"choices": []}')}
        self._send(*replies[route])


@pytest.fixture
def odd_server():
    with serving(OddServer) as address:
        yield address


@pytest.mark.parametrize("route, model, message", [
    ("html", "m", r"^server \S+/html/\S+ did not answer with JSON; is it a chat-completions endpoint\?$"),
    ("empty", "m", r"^server \S+/empty/v1/chat/completions sent a reply without choices\[0\]\.message\.content$"),
    ("empty", None, r"^server \S+/empty/v1/models lists no model; pass --model NAME$"),
    ("locked", "m", r"^server \S+/locked/v1/chat/completions answered HTTP 403: forbidden; set OPENAI_API_KEY$"),
    ("plain", "m", r"^server \S+/plain/v1/chat/completions answered HTTP 500: database on fire$"),
    ("slow", "m", r"^server \S+/slow/v1/chat/completions did not answer within 0\.2 s \(raise --timeout\)$"),
])
def test_bad_server_replies_are_one_clear_line(odd_server, route, model, message, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TunelabError, match=message):
        generator = ServerGenerator(f"{odd_server}/{route}/v1", model, seed=0, timeout=0.2, workers=2)
        generator.complete([[{"role": "user", "content": "Hello"}]] * 3, 8)
