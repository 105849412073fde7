"""Quality filters for ``tunelab data prepare``: HTML stripping, token length, language and
degenerate rows.

``build_filter(settings)`` returns one function that takes a Record and returns it (changed only
by HTML stripping) or the reason it should be quarantined. Every reason names the check, the field
and the value measured, so a user can see why a row went and which setting would keep it.

What each check looks at:
- every text of a record: each message content of a chat (system included), the text, the label;
- length: the whole record, summed over those texts (chat-template tokens are not counted). With
  ``tokenizer`` the model's tokenizer counts; without, a fast estimate counts words and
  punctuation marks (``\\w+|[^\\w\\s]``), which undercounts subword tokens: on the bundled movie
  reviews SmolLM2's tokenizer gives 1.09 tokens per estimated one, more on rare words, code and
  languages other than English;
- language: the user and assistant turns together (or the text; never the label), cut to the
  first 1,000 characters; texts with fewer than 40 letters are not judged, because langid is
  unreliable on them, and a row is rejected only when langid gives another language a
  probability of at least 0.9.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from html import unescape
from html.parser import HTMLParser

from tunelab.data.records import Record
from tunelab.errors import TunelabError
from tunelab.model_files import resolve_model, tokenizer_options

LANGUAGE_MIN_LETTERS = 40  # below this many letters langid's guess is not trusted
LANGUAGE_MIN_PROBABILITY = 0.9  # a row goes only when another language is at least this likely
LANGUAGE_SAMPLE_CHARS = 1000  # langid's cost grows with length; its accuracy does not, past this
TOKEN_CACHE_SIZE = 100_000  # texts whose token counts are remembered (system prompts repeat)

# Degenerate-row thresholds. Normal short texts ("Great movie!", a one-word label, "zzzzzzzzz.",
# "Tap, tap, tap, tap, tapping away") stay well below them.
CHAR_RUN_ANYWHERE = 50  # one letter or digit this many times in a row, wherever it appears
CHAR_RUN_DOMINANT = 16  # one character this many times in a row, covering half the text or more
PATTERN_MIN_CHARS = 24  # a repeated pattern covering half the text must be at least this long
PATTERN_ANYWHERE_CHARS = 200  # a pattern repeated 10+ times this long is rejected wherever it is
PATTERN_ANYWHERE_REPEATS = 10
DIVERSITY_LIMITS = ((30, 5), (200, 10))  # (at least N visible characters, at most K distinct)
SYMBOLS_MIN_CHARS = 20  # texts shorter than this are not judged for symbols
SYMBOLS_MIN_ALNUM_SHARE = 0.25  # a longer text needs this share of letters or digits
ECHO_MIN_WORDS = 5  # an answer identical to a prompt this long is an echo ("Hi" -> "Hi" is not)

REASON_CATEGORIES: tuple[tuple[str, re.Pattern], ...] = (
    ("too short", re.compile(r"^too short: ")),
    ("too long", re.compile(r"^too long: ")),
    ("other language", re.compile(r"^language: ")),
    ("empty after HTML removal", re.compile(r"^html: ")),
    ("degenerate: answer repeats prompt", re.compile(r"^degenerate: answer ")),
    ("degenerate: repetition", re.compile(r"^degenerate: .* repeated \d+ times")),
    ("degenerate: low character diversity", re.compile(r"^degenerate: low character diversity")),
    ("degenerate: mostly symbols", re.compile(r"^degenerate: mostly symbols")),
    ("degenerate: broken JSON or markup", re.compile(r"^degenerate: (broken JSON|ends mid-escape|ends inside)")),
)

_APPROX_TOKEN = re.compile(r"\w+|[^\w\s]")
_WHITESPACE = re.compile(r"\s+")
_NOT_ALNUM = re.compile(r"[\W_]+")
_NOT_LETTER = re.compile(r"[\W\d_]+")
_CHAR_RUN = re.compile(rf"(\S)\1{{{CHAR_RUN_DOMINANT - 1},}}")
# 2-50 characters three times or more, starting where a word does (4x faster than anywhere; runs
# of one character inside a word are _CHAR_RUN's job).
_PATTERN_RUN = re.compile(r"(?<!\w)(\S.{1,49}?)\1\1", re.S)
_JSON_START = re.compile(r'\s*\[?\s*\{\s*"')
_PARTIAL_UNICODE_ESCAPE = re.compile(r"\\u[0-9a-fA-F]{0,3}\Z")
_OPEN_TAG = re.compile(r"<[a-zA-Z][\w:-]*\s+[\w:-]+\s*=\s*[^<>]*\Z")
_JSON = json.JSONDecoder()

_TAG_NAMES = (
    "a|abbr|address|article|aside|b|big|blockquote|body|br|button|caption|center|cite|code|col|"
    "colgroup|dd|del|div|dl|dt|em|figcaption|figure|font|footer|form|h[1-6]|head|header|hr|html|i|"
    "iframe|img|input|ins|label|li|link|main|mark|meta|nav|noscript|ol|option|p|pre|q|s|script|"
    "section|select|small|span|strike|strong|style|sub|sup|svg|table|tbody|td|template|textarea|"
    "tfoot|th|thead|title|tr|tt|u|ul|wbr"
)
_ATTRIBUTE = r"""\s+[\w:.-]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+))?"""
# A real tag (known name, well-formed attributes), a comment or doctype; "a<b && c>d" is not one.
_TAG = re.compile(rf"</?(?:{_TAG_NAMES})(?:{_ATTRIBUTE})*\s*/?>|<!--|<!doctype", re.I)
_ENTITY = re.compile(r"&(?:#\d{1,7}|#x[0-9a-f]{1,6}|[a-z][a-z0-9]{1,31});", re.I)
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_SKIP_TAGS = frozenset({"script", "style", "template", "noscript"})
_LINE_TAGS = frozenset({"br", "li", "tr", "dt", "dd", "option"})
_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "body", "div", "dl", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "html", "main", "nav",
    "ol", "p", "section", "table", "title", "ul",
})
_CELL_TAGS = frozenset({"td", "th"})


@dataclass(frozen=True)
class FilterSettings:
    """Which quality filters run; the defaults drop degenerate rows and nothing else."""

    strip_html: bool = False
    min_tokens: int | None = None
    max_tokens: int | None = None
    tokenizer: str | None = None  # a model whose tokenizer counts tokens; None: the estimate
    languages: tuple[str, ...] = ()  # ISO 639-1 codes to keep; empty: no language filter
    drop_degenerate: bool = True

    def __post_init__(self):
        for name in ("min_tokens", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TunelabError(f"{name} must be a whole number of at least 1 (or unset), got {value!r}")
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise TunelabError(f"min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})")
        if isinstance(self.languages, str):
            raise TunelabError(f"languages must be a list of codes such as ('en', 'fr'), got {self.languages!r}")
        object.__setattr__(self, "languages", tuple(code.strip().lower() for code in self.languages))


def build_filter(settings: FilterSettings) -> Callable[[Record], Record | str]:
    """One function applying every filter ``settings`` turns on: it returns the record (HTML
    stripped where asked) or the reason it is rejected. Loads the tokenizer and the language model
    once, here, so a bad model name or language code fails before any row is read."""
    count_tokens = _token_counter(settings.tokenizer) if _checks_length(settings) else None
    identify = _language_identifier(settings.languages) if settings.languages else None

    def apply(record: Record) -> Record | str:
        if settings.strip_html:
            record = _strip_record_html(record)
            if isinstance(record, str):
                return record
        if settings.drop_degenerate:
            problem = degenerate_reason(record)
            if problem:
                return problem
        if count_tokens is not None:
            problem = _length_reason(count_tokens(_texts(record)), settings, exact=settings.tokenizer is not None)
            if problem:
                return problem
        if identify is not None:
            problem = _language_reason(identify, record, settings.languages)
            if problem:
                return problem
        return record

    return apply


def approximate_tokens(text: str) -> int:
    """The estimate used without a tokenizer: one token per word and per punctuation mark."""
    return len(_APPROX_TOKEN.findall(text))


# Length.


def _checks_length(settings: FilterSettings) -> bool:
    return settings.min_tokens is not None or settings.max_tokens is not None


def _length_reason(tokens: int, settings: FilterSettings, exact: bool) -> str | None:
    counted = f"{tokens} tokens" if exact else f"about {tokens} tokens"
    if settings.min_tokens is not None and tokens < settings.min_tokens:
        return f"too short: {counted} < min_tokens {settings.min_tokens}"
    if settings.max_tokens is not None and tokens > settings.max_tokens:
        return f"too long: {counted} > max_tokens {settings.max_tokens}"
    return None


def _token_counter(model: str | None) -> Callable[[list[str]], int]:
    """Total tokens of a list of texts: the model's tokenizer (each text without special tokens,
    unseen texts encoded in one batch, counts remembered) or the word/punctuation estimate."""
    if model is None:
        return lambda texts: sum(approximate_tokens(text) for text in texts)
    tokenizer = _load_tokenizer(model)
    cache: dict[str, int] = {}

    def count(texts: list[str]) -> int:
        unseen = list({text for text in texts if text not in cache})
        if unseen:
            if len(cache) + len(unseen) > TOKEN_CACHE_SIZE:
                cache.clear()
            encoded = tokenizer(unseen, add_special_tokens=False, return_attention_mask=False, verbose=False)
            cache.update(zip(unseen, map(len, encoded["input_ids"]), strict=True))
        return sum(cache[text] for text in texts)

    return count


def _load_tokenizer(model: str):
    from transformers import AutoTokenizer  # start-up time: only --tokenizer needs transformers

    folder = resolve_model(model)
    try:
        return AutoTokenizer.from_pretrained(folder, **tokenizer_options(folder))
    except (OSError, ValueError) as error:
        raise TunelabError(f"cannot load a tokenizer for {model!r} from {folder}: {error}") from None


# Language.


def _language_identifier(languages: tuple[str, ...]) -> Callable[[str], tuple[str, float]]:
    identifier = _load_langid()
    unknown = [code for code in languages if code not in identifier.nb_classes]
    if unknown:
        raise TunelabError(
            f"unknown language code(s) {', '.join(map(repr, unknown))}; use ISO 639-1 codes langid "
            f"knows, such as {', '.join(sorted(identifier.nb_classes)[:12])}, ..."
        )
    return identifier.classify


@cache
def _load_langid():
    """langid's model with probabilities (about a second to load, so once per process)."""
    from langid.langid import LanguageIdentifier, model

    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def _language_reason(identify, record: Record, languages: tuple[str, ...]) -> str | None:
    if record.kind == "chat":
        text = "\n".join(t["content"] for t in record.messages if t["role"] != "system")
    else:
        text = record.text
    sample = text[:LANGUAGE_SAMPLE_CHARS]
    if len(_NOT_LETTER.sub("", sample)) < LANGUAGE_MIN_LETTERS:
        return None
    language, probability = identify(sample)
    if language in languages or probability < LANGUAGE_MIN_PROBABILITY:
        return None
    return f"language: detected {language!r} ({probability:.2f}), keeping {', '.join(languages)}"


# HTML.


def html_to_text(text: str) -> str:
    """``text`` without HTML: tags, comments, scripts and styles removed, entities unescaped,
    blocks and line breaks kept as paragraph and line breaks. Text without markup comes back
    unchanged; text with entities but no tags is only unescaped."""
    if _TAG.search(text):
        extractor = _TextExtractor()
        extractor.feed(text)
        extractor.close()
        return extractor.text()
    if _ENTITY.search(text):
        return unescape(text).replace("\xa0", " ")
    return text


class _TextExtractor(HTMLParser):
    """Collects the visible text of an HTML fragment, spacing it the way a browser would."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.pending_break = 0  # newlines owed before the next text
        self.skip_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP_TAGS:
            self.skip_depth += 1
        elif tag == "pre":
            self.pre_depth += 1
            self._break(2)
        else:
            self._mark(tag)

    def handle_startendtag(self, tag, attrs):
        if tag not in _SKIP_TAGS and tag != "pre":
            self._mark(tag)

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            self._break(2)
        elif tag != "br":
            self._mark(tag)

    def handle_data(self, data):
        if self.skip_depth:
            return
        if self.pre_depth:
            self._emit(data)
            return
        for i, paragraph in enumerate(_BLANK_LINE.split(data)):
            if i:
                self._break(2)
            self._emit(_WHITESPACE.sub(" ", paragraph))

    def text(self) -> str:
        return "".join(self.parts).strip()

    def _mark(self, tag: str) -> None:
        if tag in _LINE_TAGS:
            self._break(1)
        elif tag in _BLOCK_TAGS:
            self._break(2)
        elif tag in _CELL_TAGS:
            self._emit(" ")

    def _break(self, newlines: int) -> None:
        self.pending_break = max(self.pending_break, newlines)

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.pre_depth:
            self._flush_break()
            self.parts.append(text)
            return
        if text.isspace():  # a space between inline elements, unless a break or line start is next to it
            if not self.pending_break and self.parts and not self.parts[-1].endswith((" ", "\n")):
                self.parts.append(" ")
            return
        self._flush_break()
        if not self.parts or self.parts[-1].endswith((" ", "\n")):
            text = text.lstrip(" ")
        self.parts.append(text)

    def _flush_break(self) -> None:
        if self.pending_break and self.parts:
            self.parts[-1] = self.parts[-1].rstrip(" ")
            self.parts.append("\n" * self.pending_break)
        self.pending_break = 0


def _strip_record_html(record: Record) -> Record | str:
    if record.kind == "chat":
        messages = []
        for i, turn in enumerate(record.messages):
            content = html_to_text(turn["content"])
            if not content:
                return f'html: nothing left of "messages"[{i}].content after removing markup'
            messages.append({**turn, "content": content} if content != turn["content"] else turn)
        return replace(record, messages=messages)
    text = html_to_text(record.text)
    if not text:
        return 'html: nothing left of "text" after removing markup'
    if record.kind == "text":
        return replace(record, text=text) if text != record.text else record
    label = html_to_text(record.label)
    if not label:
        return 'html: nothing left of "label" after removing markup'
    return replace(record, text=text, label=label) if (text, label) != (record.text, record.label) else record


# Degenerate rows.


def degenerate_reason(record: Record) -> str | None:
    """Why ``record`` looks broken rather than written (long repeats, hardly any distinct
    characters, mostly symbols, broken JSON or markup, an answer that echoes its prompt), or None."""
    for where, text in _fields(record):
        problem = degenerate_text_reason(text)
        if problem:
            return f"degenerate: {problem} in {where}"
    if record.kind == "chat":
        messages = record.messages
        for i in range(1, len(messages)):
            if messages[i]["role"] == "assistant" and messages[i - 1]["role"] == "user":
                answer, prompt = _comparable(messages[i]["content"]), _comparable(messages[i - 1]["content"])
                if answer == prompt and answer.count(" ") + 1 >= ECHO_MIN_WORDS:
                    return (f'degenerate: answer "messages"[{i}].content repeats the prompt '
                            f'"messages"[{i - 1}].content')
    return None


def degenerate_text_reason(text: str) -> str | None:
    """What makes one text degenerate, without its field name, or None for normal text."""
    visible = _WHITESPACE.sub("", text)
    for match in _CHAR_RUN.finditer(text):
        run, char = len(match.group()), match.group(1)
        if (char.isalnum() and run >= CHAR_RUN_ANYWHERE) or run * 2 >= len(visible):
            return f"one character repeated {run} times ({_show(char)})"
    for match in _PATTERN_RUN.finditer(text):
        unit = match.group(1)
        if unit == unit[0] * len(unit):
            continue  # a single character's run: judged above
        end, repeats = match.end(), 3
        while text.startswith(unit, end):
            end, repeats = end + len(unit), repeats + 1
        last = unit.rstrip()
        if last != unit and text.startswith(last, end):  # "lol lol lol": the last one has no space
            end, repeats = end + len(last), repeats + 1
        stretch = end - match.start()
        if (stretch >= PATTERN_MIN_CHARS and stretch * 2 >= len(text)) or (
            stretch >= PATTERN_ANYWHERE_CHARS and repeats >= PATTERN_ANYWHERE_REPEATS
        ):
            return f"{_show(unit)} repeated {repeats} times"
    distinct = len(set(visible))
    for min_chars, max_distinct in DIVERSITY_LIMITS:
        if len(visible) >= min_chars and distinct <= max_distinct:
            return f"low character diversity ({distinct} distinct characters in {len(visible)})"
    if len(visible) >= SYMBOLS_MIN_CHARS:
        share = len(_NOT_ALNUM.sub("", visible)) / len(visible)
        if share < SYMBOLS_MIN_ALNUM_SHARE:
            return f"mostly symbols ({share:.0%} letters or digits)"
    if _JSON_START.match(text):
        try:
            _JSON.raw_decode(text.lstrip())
        except json.JSONDecodeError as error:
            problem = f"{error.msg.removesuffix(' at')} at column {error.colno}"
            return f"broken JSON (starts like a JSON object but does not parse: {problem})"
        except RecursionError:
            return "broken JSON (starts like a JSON object but is nested too deeply to parse)"
    escape = _open_escape(text)
    if escape:
        return f"ends mid-escape ({_show(escape)})"
    last_tag = text.rfind("<")
    tag = _OPEN_TAG.match(text, last_tag) if last_tag >= 0 else None
    if tag:
        return f"ends inside an HTML tag ({_show(tag.group())})"
    return None


def _open_escape(text: str) -> str | None:
    """The unfinished escape a text ends with: a lone backslash or a short \\u escape."""
    if _trailing_backslashes(text) % 2:
        return "\\"
    partial = _PARTIAL_UNICODE_ESCAPE.search(text, max(0, len(text) - 6))
    if partial and _trailing_backslashes(text[: partial.start()]) % 2 == 0:
        return partial.group()
    return None


def _trailing_backslashes(text: str) -> int:
    return len(text) - len(text.rstrip("\\"))


def _fields(record: Record) -> list[tuple[str, str]]:
    """Each text of a record with the name the user's file gives it."""
    if record.kind == "chat":
        return [(f'"messages"[{i}].content', turn["content"]) for i, turn in enumerate(record.messages)]
    if record.kind == "text":
        return [('"text"', record.text)]
    return [('"text"', record.text), ('"label"', record.label)]


def _texts(record: Record) -> list[str]:
    return [text for _, text in _fields(record)]


def _comparable(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip().casefold()


def _show(text: str) -> str:
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= 40 else shown[:36] + '..."'
