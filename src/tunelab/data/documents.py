"""Documents from a folder (.txt, .md, .html, .pdf) and their chunks with character offsets.

Every file under the folder (hidden ones aside) is either read into a Document or listed as skipped
with a reason (an unsupported type, undecodable text, a broken or encrypted PDF, no text at all), so
no document is left out silently and one bad file never stops the rest. Chunks keep their document, index and exact
character span: ``document.text[chunk.start:chunk.end] == chunk.text``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tunelab.errors import TunelabError

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
PDF_SUFFIXES = (".pdf",)
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + PDF_SUFFIXES

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_WORD = re.compile(r"\S+")


@dataclass
class Document:
    path: str  # relative to the folder, with forward slashes
    text: str


@dataclass
class Skipped:
    path: str
    reason: str

    def to_json(self) -> dict:
        return {"stage": "document", "source_doc": self.path, "reason": self.reason}


@dataclass
class Chunk:
    doc: str
    index: int  # position within its document
    start: int  # character offsets into the document's text
    end: int
    text: str


def read_documents(folder: str | Path) -> tuple[list[Document], list[Skipped]]:
    """Every document under ``folder`` (recursively, in path order), and the files skipped with why."""
    root = Path(folder)
    if not root.is_dir():
        raise TunelabError(f"{folder}: not a folder; pass a folder of .txt, .md, .html or .pdf documents")
    documents, skipped = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden files and folders (.git, .DS_Store) are not documents
        try:
            text = read_document(path)
        except _Unreadable as problem:
            skipped.append(Skipped(relative, str(problem)))
            continue
        if not text.strip():
            skipped.append(Skipped(relative, "no text (empty, or a PDF of scanned images)"))
            continue
        documents.append(Document(relative, text))
    if not documents:
        found = f"; skipped {len(skipped)} file(s), first: {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise TunelabError(f"{folder}: no readable documents ({', '.join(DOCUMENT_SUFFIXES)}){found}")
    return documents, skipped


class _Unreadable(Exception):
    """Why one file could not be read; the file is skipped with this reason."""


def read_document(path: Path) -> str:
    """The text of one document; raises _Unreadable with a reason for a file that cannot be read."""
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        raise _Unreadable(f"unsupported file type {suffix or '(none)'}; supported: {', '.join(DOCUMENT_SUFFIXES)}")
    if suffix in PDF_SUFFIXES:
        return _tidy(_pdf_text(path))
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise _Unreadable(f"not valid UTF-8 (byte {error.start}); re-save the file as UTF-8") from None
    except OSError as error:
        raise _Unreadable(f"cannot read: {error.strerror or error}") from None
    return _tidy(html_to_text(raw)) if suffix in HTML_SUFFIXES else raw


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader  # only PDFs need it

    # pypdf logs each repair it attempts on a damaged file; the skip reason already says what matters.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise _Unreadable("encrypted PDF")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except _Unreadable:
        raise
    except Exception as error:  # pypdf raises many types for damaged files; each only skips this file
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _Unreadable(f"unreadable PDF: {detail}") from None


def _tidy(text: str) -> str:
    """Trim spaces at line ends and collapse runs of blank lines, which extraction leaves behind."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page: tags dropped, script/style contents dropped, blocks kept apart."""

    HIDDEN = {"script", "style", "noscript", "template"}
    BLOCKS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
              "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "title", "dt", "dd", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden_depth += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden_depth = max(0, self.hidden_depth - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.hidden_depth:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Visible text, one blank line between blocks (paragraphs, headings, list items)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    blocks = (block.strip() for block in _PARAGRAPH_BREAK.split("".join(parser.parts)))
    return "\n\n".join(re.sub(r"[ \t]+", " ", block) for block in blocks if block)


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences in text[start:end], whitespace trimmed."""
    end = len(text) if end is None else end
    spans, position = [], start
    for match in _SENTENCE_END.finditer(text, start, end):
        spans.append((position, match.start()))
        position = match.end()
    spans.append((position, end))
    return [_trim(text, s, e) for s, e in spans if text[s:e].strip()]


def chunk_document(document: Document, max_words: int, overlap_words: int) -> list[Chunk]:
    """Consecutive chunks of up to ``max_words`` words, cut at paragraph and sentence ends.

    Paragraphs are kept whole where they fit; a longer one is split into sentences, and a sentence
    longer than ``max_words`` into word windows. Each chunk after the first repeats the last whole
    units of the one before, up to ``overlap_words`` words, so a fact on a boundary is seen whole.
    """
    units = _units(document.text, max_words)
    chunks: list[Chunk] = []
    first = 0
    while first < len(units):
        last, words = first, units[first][2]
        while last + 1 < len(units) and words + units[last + 1][2] <= max_words:
            last += 1
            words += units[last][2]
        start, end = units[first][0], units[last][1]
        chunks.append(Chunk(document.path, len(chunks), start, end, document.text[start:end]))
        if last + 1 == len(units):
            break
        following, overlap = last + 1, 0
        while following - 1 > first and overlap + units[following - 1][2] <= overlap_words:
            following -= 1
            overlap += units[following][2]
        first = following
    return chunks


def _units(text: str, max_words: int) -> list[tuple[int, int, int]]:
    """(start, end, words) pieces no longer than max_words: paragraphs, else sentences, else word windows."""
    units = []
    for para_start, para_end in _paragraph_spans(text):
        if _count_words(text, para_start, para_end) <= max_words:
            units.append((para_start, para_end, _count_words(text, para_start, para_end)))
            continue
        for sent_start, sent_end in sentence_spans(text, para_start, para_end):
            words = [m.span() for m in _WORD.finditer(text, sent_start, sent_end)]
            for i in range(0, len(words), max_words):
                window = words[i:i + max_words]
                units.append((window[0][0], window[-1][1], len(window)))
    return units


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans, position = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        spans.append((position, match.start()))
        position = match.end()
    spans.append((position, len(text)))
    return [_trim(text, s, e) for s, e in spans if text[s:e].strip()]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _count_words(text: str, start: int, end: int) -> int:
    return sum(1 for _ in _WORD.finditer(text, start, end))
