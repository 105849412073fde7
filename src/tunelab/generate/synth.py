"""`tunelab data synth`: a training set written from a folder of documents, grounded and checked.

documents -> chunks -> MiniLM embeddings -> for each seed chunk, its most similar other chunks as
context -> a model writes question/answer (or instruction/response) pairs in a strict format ->
each pair is parsed and kept only if it passes the checks below. With golden outputs (past answers,
replies, posts) the direction turns round: each golden output retrieves its most related chunks,
the model writes the question it answers, and the golden output stays the completion unchanged.

The checks, each against the source chunk (the seed chunk, or the chunk closest to a golden output;
context chunks help the model read the excerpt but are not support), each off at 0:
- support: cosine between the answer and the closest one- or two-sentence window of the source
  chunk >= ``min_support`` (0.5): catches answers about something else;
- overlap: the share of the answer's content words (stopwords dropped, words compared by their first
  five letters) found in the source chunk >= ``min_overlap`` (0.6): catches fluent answers with
  facts the text does not hold. Not applied to golden outputs, which a person wrote;
- relevance: cosine between the question and the answer >= ``min_relevance`` (0.3);
- and always: the answer brings new content words (it does not just restate the question), and no
  earlier kept pair has the same question.
Every rejected pair goes to the quarantine file with its reason and scores.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from tunelab.config import SynthConfig
from tunelab.data.documents import Chunk, chunk_document, read_documents, sentence_spans
from tunelab.data.formats import read_records
from tunelab.errors import ConfigError
from tunelab.generate.generators import LocalGenerator, ServerGenerator
from tunelab.io import atomic_write_json, atomic_write_jsonl
from tunelab.modeling.embeddings import SentenceEncoder, top_k_similar

SYSTEM_PROMPT = "You write training data for an assistant, using only the documentation you are given."

# The labels each kind writes, and the other labels a model may use for the same field when parsing.
LABELS = {
    "qa": (("Q", "Question"), ("A", "Answer")),
    "instruction": (("Instruction", "Request", "Task"), ("Response", "Answer", "Output")),
}
# The task comes after the text, and the format is described rather than shown: small models copy a
# filled-in example or "<question>" placeholders into their answers.
TASKS = {
    "qa": "Write {n} question(s) that the excerpt answers, each with its answer taken from the excerpt "
          "(one or two sentences, using its facts and words).",
    "instruction": "Write {n} instruction(s) a user could give an assistant that the excerpt lets it carry "
                   "out (explain, summarize, list, compare), each with the assistant's response, using only "
                   "facts stated in the excerpt.",
}
FORMATS = {
    "qa": 'Write each question on a line starting with "Q:" and its answer on the next line starting with "A:", '
          'and nothing else.',
    "instruction": 'Write each instruction on a line starting with "Instruction:" and its response on the next '
                   'line starting with "Response:", and nothing else.',
}
GOLDEN_TASKS = {
    "qa": "Below is a reply written for a user, and documentation it draws on. Write the one question "
          "the user asked that this reply answers.",
    "instruction": "Below is a response written for a user, and documentation it draws on. Write the one "
                   "instruction the user gave that this response carries out.",
}
# An answer must bring at least this share of content words that its question does not already have.
MIN_NEW_WORDS = 0.25
STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this "
    "that these those there their they them he she his her we our you your i me my not no do does did "
    "can could will would should may might must has have had so than then what which who whom when "
    "where why how also into about over under such any all each other more most some only very".split())


@dataclass
class Pair:
    prompt: str
    completion: str


class ParseError(Exception):
    """A model output that does not follow the requested format; the reason goes to quarantine."""


@dataclass
class Seed:
    """One generation request: its source chunk, its context chunks and the conversation that asks."""

    source: int  # index into the chunk list
    context: list[tuple[int, float]]  # other chunks shown, with their cosine to the seed
    messages: list[dict]
    source_similarity: float = 1.0  # of the source chunk to a golden output
    golden_text: str | None = None
    golden_line: int | None = None


def synth_config(**settings) -> SynthConfig:
    """A SynthConfig from the settings given (None means the default); all problems in one error."""
    try:
        return SynthConfig(**{key: value for key, value in settings.items() if value is not None})
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'synth'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(problems, "data synth") from None


def synthesize(docs: str | Path, out: str | Path, config: SynthConfig, golden: str | Path | None = None,
               generator=None, encoder: SentenceEncoder | None = None) -> dict:
    """Write OUT (prompt/completion rows with provenance), its quarantine and summary; return the summary.

    ``generator`` and ``encoder`` default to the ones the config names; pass loaded ones to reuse them.
    """
    started = time.time()
    out = Path(out)
    documents, skipped = read_documents(docs)
    chunks = [c for d in documents for c in chunk_document(d, config.chunk_words, config.chunk_overlap_words)]
    print(f"read {len(documents)} document(s) into {len(chunks)} chunk(s)"
          + (f"; skipped {len(skipped)} file(s)" if skipped else ""), flush=True)
    encoder = encoder or SentenceEncoder(config.embedding_model)
    chunk_vectors = encoder.embed([c.text for c in chunks], desc="embedding chunks")
    golden_rejected: list[dict] = []
    if golden is None:
        seeds = chunk_seeds(chunks, chunk_vectors, config)
    else:
        seeds, golden_rejected = golden_seeds(golden, chunks, chunk_vectors, encoder, config)
    generator = generator or make_generator(config)
    budget = config.max_new_tokens * (1 if golden else config.pairs_per_chunk)
    outputs = generator.complete([seed.messages for seed in seeds], budget)

    candidates, unparseable = parse_outputs(seeds, outputs, chunks, config)
    rows, rejected = check_pairs(candidates, SupportChecker(encoder, chunks), chunks, config, generator.name)
    quarantine = [s.to_json() for s in skipped] + golden_rejected + unparseable + rejected

    paths = output_paths(out)
    atomic_write_jsonl(out, rows)
    atomic_write_jsonl(paths["quarantine"], quarantine)
    summary = {
        "mode": "golden" if golden else "chunks", "kind": config.kind, "generator": generator.name,
        "documents": len(documents), "documents_skipped": len(skipped),
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "chunks": len(chunks), "prompts": len(seeds), "generated": len(candidates), "kept": len(rows),
        "rejected": _count_reasons(quarantine), "output": str(out), "quarantine_file": str(paths["quarantine"]),
        "seconds": round(time.time() - started, 1), "settings": config.model_dump(),
    }
    if golden:
        summary["golden_file"] = str(golden)
    atomic_write_json(paths["summary"], summary)
    return summary


def parse_outputs(seeds: list[Seed], outputs: list[str], chunks: list[Chunk],
                  config: SynthConfig) -> tuple[list[tuple[Seed, Pair]], list[dict]]:
    """The pairs parsed from each output (at most pairs_per_chunk), and quarantine rows for the unparseable."""
    candidates, quarantine = [], []
    for seed, output in zip(seeds, outputs):
        try:
            if seed.golden_text is None:
                pairs = parse_pairs(output, config.kind)[:config.pairs_per_chunk]
            else:
                pairs = [Pair(parse_input(output, config.kind), seed.golden_text)]
        except ParseError as problem:
            quarantine.append(_rejected(seed, chunks, "unparseable", str(problem), output=output))
            continue
        candidates += [(seed, pair) for pair in pairs]
    return candidates, quarantine


def check_pairs(candidates: list[tuple[Seed, Pair]], checker: SupportChecker, chunks: list[Chunk],
                config: SynthConfig, generator: str) -> tuple[list[dict], list[dict]]:
    """Output rows with provenance for the pairs that pass every check; quarantine rows for the rest."""
    all_scores = checker.score([pair for _, pair in candidates], [seed.source for seed, _ in candidates])
    rows, quarantine, seen = [], [], set()
    for (seed, pair), scores in zip(candidates, all_scores):
        reason, detail = verdict(pair, scores, config, golden=seed.golden_text is not None)
        key = _normalized(pair.prompt) + ("\n" + _normalized(pair.completion) if seed.golden_text else "")
        if reason is None and key in seen:
            reason, detail = "duplicate", "the same input was already kept"
        if reason:
            quarantine.append(_rejected(seed, chunks, reason, detail, pair=pair, scores=scores))
            continue
        seen.add(key)
        meta = provenance(seed, chunks, scores, generator, config.kind)
        rows.append({"prompt": pair.prompt, "completion": pair.completion, "meta": meta})
    return rows, quarantine


def output_paths(out: Path) -> dict[str, Path]:
    """The quarantine and summary files written next to OUT: OUT.quarantine.jsonl, OUT.summary.json."""
    stem = out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return {"quarantine": out.with_name(f"{stem}.quarantine.jsonl"), "summary": out.with_name(f"{stem}.summary.json")}


# Seeds: what each generation is grounded in.


def chunk_seeds(chunks: list[Chunk], vectors, config: SynthConfig) -> list[Seed]:
    """Each seed chunk (all, or a seeded subset) with its most similar other chunks as context."""
    chosen = list(range(len(chunks)))
    if config.max_chunks is not None and config.max_chunks < len(chunks):
        chosen = sorted(random.Random(config.seed).sample(chosen, config.max_chunks))
    # One neighbour more than needed, since a chunk is its own nearest neighbour and is dropped.
    related = top_k_similar(vectors[chosen], vectors, config.context_chunks + 1) if config.context_chunks else []
    seeds = []
    for position, index in enumerate(chosen):
        context = [(i, s) for i, s in related[position] if i != index][:config.context_chunks] if related else []
        messages = qa_messages(config.kind, config.pairs_per_chunk, chunks[index], [chunks[i] for i, _ in context])
        seeds.append(Seed(index, context, messages))
    return seeds


def golden_seeds(golden: str | Path, chunks: list[Chunk], vectors, encoder: SentenceEncoder,
                 config: SynthConfig) -> tuple[list[Seed], list[dict]]:
    """Each golden output with its most related chunks (the closest is its source chunk), and
    quarantine rows for the golden rows that could not be read."""
    records, rejected = read_records(golden, on_error="quarantine", extra_columns="keep")
    unreadable = [{"stage": "golden", "reason": "unreadable_golden_row", "detail": r.reason, "golden_line": r.line,
                   "raw": r.raw} for r in rejected]
    texts = [_golden_text(record) for record in records]
    related = top_k_similar(encoder.embed(texts, desc="embedding golden outputs"), vectors, config.context_chunks + 1)
    seeds = []
    for record, text, neighbours in zip(records, texts, related):
        messages = golden_messages(config.kind, text, [chunks[i] for i, _ in neighbours])
        (source, similarity), context = neighbours[0], neighbours[1:]
        seeds.append(Seed(source, context, messages, similarity, golden_text=text, golden_line=record.line))
    return seeds, unreadable


def _golden_text(record) -> str:
    """A golden output: the text of a text row, or the last assistant answer of a chat row."""
    if record.kind == "chat":
        return [m for m in record.messages if m["role"] == "assistant"][-1]["content"]
    return record.text


# Prompts and parsing.


def qa_messages(kind: str, n: int, chunk: Chunk, context: list[Chunk]) -> list[dict]:
    parts = [f'Excerpt:\n"""\n{chunk.text}\n"""']  # no file name: small models copy it into questions
    if context:
        background = "\n---\n".join(c.text for c in context)
        parts.append(f'Related excerpts, for background only:\n"""\n{background}\n"""')
    parts.append(f"{TASKS[kind].format(n=n)} {FORMATS[kind]}")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def golden_messages(kind: str, golden_text: str, passages: list[Chunk]) -> list[dict]:
    first = LABELS[kind][0][0]
    documentation = "\n---\n".join(c.text for c in passages)
    user = (f'{GOLDEN_TASKS[kind]}\n\nReply:\n"""\n{golden_text}\n"""\n\nDocumentation:\n"""\n{documentation}\n"""'
            f'\n\nWrite it on one line starting with "{first}:", and nothing else.')
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _label_pattern(labels: tuple[str, ...]) -> re.Pattern:
    # Tolerates list markers, numbering and markdown around the label: "1. **Q1:** ...", "- Answer: ...".
    names = "|".join(re.escape(label) for label in labels)
    return re.compile(rf"^\s*(?:[-*#>]+\s*)?(?:\d+[.)]\s*)?[*_]*\s*(?:{names})\s*\d*\s*[*_]*\s*:\s*[*_]*\s*(.*)$",
                      re.IGNORECASE)


def _fields(output: str, kind: str) -> list[list[str | None]]:
    """[input, output] field pairs in order of appearance; text after a label runs to the next label."""
    first, second = (_label_pattern(labels) for labels in LABELS[kind])
    found: list[list[str | None]] = []
    field = None
    for line in output.splitlines():
        if match := first.match(line):
            found.append([match.group(1), None])
            field = 0
        elif match := second.match(line):
            if not found or found[-1][1] is not None:
                found.append([None, ""])
            found[-1][1] = match.group(1)
            field = 1
        elif field is not None and line.strip():
            found[-1][field] = f"{found[-1][field]}\n{line}".strip()
    return [[_clean(value) for value in pair] for pair in found]


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().strip("*_").strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1].strip()
    return value or None


def parse_pairs(output: str, kind: str) -> list[Pair]:
    """Every complete pair in the output; ParseError when there is none."""
    found = _fields(output, kind)
    pairs = [Pair(first, second) for first, second in found if first and second]
    if not pairs:
        first, second = (labels[0] for labels in LABELS[kind])
        what = "an input without its answer" if found else "no labelled lines"
        raise ParseError(f"no complete {first}:/{second}: pair ({what})")
    return pairs


def parse_input(output: str, kind: str) -> str:
    """The one input (question or instruction) a golden prompt asks for; an unlabelled single line counts."""
    for first, _ in _fields(output, kind):
        if first:
            return first
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if len(lines) == 1 and not _label_pattern(LABELS[kind][1]).match(lines[0]):
        return _clean(lines[0])
    raise ParseError(f"no {LABELS[kind][0][0]}: line" + (" (empty output)" if not lines else ""))


# The support check.


@dataclass
class Scores:
    support: float  # cosine of the answer and the closest sentence window of the source chunk
    overlap: float  # share of the answer's content words found in the source chunk
    relevance: float  # cosine of the question and the answer

    def to_json(self) -> dict:
        return {"support": round(self.support, 4), "overlap": round(self.overlap, 4),
                "relevance": round(self.relevance, 4)}


class SupportChecker:
    """Scores pairs against their source chunks: best sentence-window cosine and content-word overlap."""

    def __init__(self, encoder: SentenceEncoder, chunks: list[Chunk]):
        self.encoder = encoder
        self.chunks = chunks
        self.window_vectors: dict[int, object] = {}

    def score(self, pairs: list[Pair], sources: list[int]) -> list[Scores]:
        """Scores for each pair against its source chunk (an index into the chunks)."""
        if not pairs:
            return []
        self._embed_windows(sorted(set(sources)))
        answers = self.encoder.embed([pair.completion for pair in pairs], desc="embedding answers")
        questions = self.encoder.embed([pair.prompt for pair in pairs], desc="embedding questions")
        return [Scores(support=float((self.window_vectors[source] @ answer).max()),
                       overlap=word_overlap(pair.completion, self.chunks[source].text),
                       relevance=float(question @ answer))
                for pair, source, answer, question in zip(pairs, sources, answers, questions)]

    def _embed_windows(self, indices: list[int]) -> None:
        missing = [i for i in indices if i not in self.window_vectors]
        windows = {i: sentence_windows(self.chunks[i].text) for i in missing}
        flat = [w for i in missing for w in windows[i]]
        vectors = self.encoder.embed(flat, desc="embedding sentences")
        position = 0
        for i in missing:
            self.window_vectors[i] = vectors[position:position + len(windows[i])]
            position += len(windows[i])


def sentence_windows(text: str) -> list[str]:
    """Every sentence and every two consecutive sentences (an answer may join two)."""
    sentences = [text[s:e] for s, e in sentence_spans(text)] or [text]
    return sentences + [f"{a} {b}" for a, b in zip(sentences, sentences[1:])]


def content_words(text: str) -> set[str]:
    """Lower-cased words that carry content, a crude stem: a plural s dropped, then cut to five letters,
    so 'heats' meets 'heat' and 'descaled' meets 'descaling'."""
    words = (word for word in re.findall(r"[^\W_]+", text.lower()) if word not in STOPWORDS)
    return {(word[:-1] if len(word) > 3 and word.endswith("s") else word)[:5] for word in words}


def word_overlap(answer: str, source: str) -> float:
    """Share of the answer's content words that occur in the source text (0 for an answer with none)."""
    words = content_words(answer)
    return len(words & content_words(source)) / len(words) if words else 0.0


def restates_question(pair: Pair) -> bool:
    """An answer that mostly repeats its question ("X is a product of X"), or a question that copies its answer."""
    answer = content_words(pair.completion)
    new = answer - content_words(pair.prompt)
    return not answer or len(new) / len(answer) < MIN_NEW_WORDS


def verdict(pair: Pair, scores: Scores, config: SynthConfig, golden: bool = False) -> tuple[str | None, str]:
    """(None, "") for a pair to keep, else (reason, detail with the scores).

    A golden output skips the overlap check: it was written by a person, not invented by the model.
    """
    if config.min_support and scores.support < config.min_support:
        return "unsupported", f"support {scores.support:.3f} < {config.min_support}"
    if not golden and config.min_overlap and scores.overlap < config.min_overlap:
        return "low_overlap", f"overlap {scores.overlap:.3f} < {config.min_overlap}"
    if config.min_relevance and scores.relevance < config.min_relevance:
        return "off_topic_question", f"relevance {scores.relevance:.3f} < {config.min_relevance}"
    if restates_question(pair):
        return "restates_question", f"under {MIN_NEW_WORDS:.0%} of the answer's content words are new"
    return None, ""


# Rows, quarantine and provenance.


def provenance(seed: Seed, chunks: list[Chunk], scores: Scores, generator: str, kind: str) -> dict:
    source = chunks[seed.source]
    meta = {
        "source_doc": source.doc, "chunk": source.index, "span": [source.start, source.end],
        "context_chunks": [{"source_doc": chunks[i].doc, "chunk": chunks[i].index, "similarity": round(s, 4)}
                           for i, s in seed.context],
        **scores.to_json(), "generator": generator, "kind": kind,
    }
    if seed.golden_line is not None:
        meta["golden_line"] = seed.golden_line
        meta["source_similarity"] = round(seed.source_similarity, 4)
    return meta


def _rejected(seed: Seed, chunks: list[Chunk], reason: str, detail: str, output: str | None = None,
              pair: Pair | None = None, scores: Scores | None = None) -> dict:
    source = chunks[seed.source]
    row = {"stage": "support" if pair else "generate", "reason": reason, "detail": detail,
           "source_doc": source.doc, "chunk": source.index}
    if seed.golden_line is not None:
        row["golden_line"] = seed.golden_line
    if pair:
        row |= {"prompt": pair.prompt, "completion": pair.completion, **scores.to_json()}
    if output is not None:
        row["output"] = output
    return row


def _count_reasons(quarantine: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in quarantine:
        key = "unreadable_document" if row["stage"] == "document" else row["reason"]  # documents: reasons vary
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def format_summary(summary: dict) -> str:
    """The short report `tunelab data synth` prints."""
    source = "golden outputs" if summary["mode"] == "golden" else "chunks"
    lines = [f"Read {summary['documents']} document(s) into {summary['chunks']} chunk(s)"
             + (f"; skipped {summary['documents_skipped']} file(s)" if summary["documents_skipped"] else ""),
             f"Generator {summary['generator']} ({summary['kind']}): {summary['prompts']} prompt(s) from {source}, "
             f"{summary['generated']} pair(s) parsed, {summary['kept']} kept"]
    for item in summary["skipped"]:
        lines.append(f"  skipped {item['path']}: {item['reason']}")
    rejected = summary["rejected"]
    if rejected:
        width = max(len(reason) for reason in rejected)
        lines.append(f"Quarantined {sum(rejected.values())} (see {summary['quarantine_file']}):")
        lines += [f"  {reason:<{width}}  {n}" for reason, n in rejected.items()]
    lines.append(f"Wrote {summary['kept']} rows to {summary['output']} in {summary['seconds']} s")
    return "\n".join(lines)


def make_generator(config: SynthConfig):
    """The generator the config names: a server when one is given, else the model run here."""
    if config.server:
        return ServerGenerator(config.server, config.model, seed=config.seed, timeout=config.timeout)
    return LocalGenerator(config.model, batch_size=config.batch_size, seed=config.seed)
