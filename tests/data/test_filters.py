"""Quality filters: each check and its reason, no false positives on real data, HTML stripping,
token counting with a tokenizer and with the estimate."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from tunelab.data.filters import (
    REASON_CATEGORIES,
    FilterSettings,
    approximate_tokens,
    build_filter,
    degenerate_text_reason,
    html_to_text,
)
from tunelab.data.formats import read_records
from tunelab.data.records import Record
from tunelab.errors import TunelabError

MOVIE_DATA = Path(__file__).resolve().parents[2] / "data" / "examples" / "movie_sentiment.jsonl"

GERMAN = ("Der Film war leider eine große Enttäuschung, die Schauspieler wirkten gelangweilt und "
          "die Handlung war vorhersehbar.")
FRENCH = ("Ce film est une belle surprise, les acteurs sont excellents et l'histoire nous tient en "
          "haleine jusqu'à la fin.")
ENGLISH = ("The film was a pleasant surprise, the actors are excellent and the story keeps you "
           "guessing until the very end.")


def chat(*contents: str, system: str | None = None) -> Record:
    turns = [{"role": "system", "content": system}] if system else []
    roles = ("user", "assistant")
    turns += [{"role": roles[i % 2], "content": text} for i, text in enumerate(contents)]
    return Record(kind="chat", messages=turns, source="data.jsonl", line=7)


def text(value: str) -> Record:
    return Record(kind="text", text=value, source="data.jsonl", line=3)


def labeled(value: str, label: str = "positive") -> Record:
    return Record(kind="labeled", text=value, label=label, source="data.jsonl", line=5)


def category(reason: str) -> str | None:
    return next((name for name, pattern in REASON_CATEGORIES if pattern.search(reason)), None)


# Degenerate rows.

DEGENERATE = [
    ("a" * 61, 'one character repeated 61 times ("a")', "degenerate: repetition"),
    ("This answer is fine until " + "z" * 55 + " and then ends.", 'one character repeated 55 times ("z")',
     "degenerate: repetition"),
    ("Wow" + "!" * 30, 'one character repeated 30 times ("!")', "degenerate: repetition"),
    ("lol " * 12, '"lol " repeated 12 times', "degenerate: repetition"),
    ("ha" * 12, '"ha" repeated 12 times', "degenerate: repetition"),
    ("I love it. " * 4, '"I love it. " repeated 4 times', "degenerate: repetition"),
    (" ".join(f"Sentence number {i} says something else." for i in range(12)) + " the end" * 40,
     '"the end " repeated 40 times', "degenerate: repetition"),
    ("abba baab abab baba abab bbaa abab ab", "low character diversity (2 distinct characters in 30)",
     "degenerate: low character diversity"),
    ("!!?? ... ,,, ;;; ::: --- *** ### ok", "mostly symbols (7% letters or digits)",
     "degenerate: mostly symbols"),
    ('{"prompt": "What is the capital of Fr', "broken JSON (starts like a JSON object but does not parse: "
     "Unterminated string starting at column 12)", "degenerate: broken JSON or markup"),
    ('[{"role": "user", "content": "hi"}, {"role"', "broken JSON (starts like a JSON object but does not "
     "parse: Expecting ':' delimiter at column 44)", "degenerate: broken JSON or markup"),
    ("The symbol is \\u00", 'ends mid-escape ("\\\\u00")', "degenerate: broken JSON or markup"),
    ("The path ends in a lone \\", 'ends mid-escape ("\\\\")', "degenerate: broken JSON or markup"),
    ('Read more at <a href="https://example.com/rev', 'ends inside an HTML tag ("<a href=\\"https://example.com/rev")',
     "degenerate: broken JSON or markup"),
]


@pytest.mark.parametrize("value, problem, expected_category", DEGENERATE)
def test_degenerate_text_is_rejected_with_a_specific_reason(value, problem, expected_category):
    assert degenerate_text_reason(value) == problem
    reason = build_filter(FilterSettings())(text(value))
    assert reason == f'degenerate: {problem} in "text"'
    assert category(reason) == expected_category


NORMAL = [
    "Great movie!",
    "positive",
    "1",
    "No.",
    "You see the movie and you think, zzzzzzzzz.",
    "I could just feel the screenwriter 'Tap, tap, tap, tap, tapping away' on this screenplay.",
    "This is one baaaaaaaaad movie.",
    "Noooooooooooo!",
    "ha ha ha ha",
    "It just goes on and on and on and on.",
    'print("hello, world")',
    "2 + 2 = 4",
    '{"name": "Ada", "born": 1815} is a JSON object with two fields.',
    '[{"role": "user"}]',
    "A LaTeX line break is written \\\\",
    "if a<b && c>d then swap them",
    "Regards,\n" + "_" * 32 + "\nSent from a phone, with a long signature under the separator line above it.",
    "def f(x):\n    return [0, 0, 0, 0, 0, 0]  # six zeros",
    "Die Antwort ist 42.",
    "東京は日本の首都です。",
]


@pytest.mark.parametrize("value", NORMAL)
def test_normal_short_texts_are_kept(value):
    assert degenerate_text_reason(value) is None
    record = text(value)
    assert build_filter(FilterSettings(strip_html=True))(record) is record


def test_long_texts_need_more_distinct_characters():
    octal = " ".join(format(i * 7919 % 4096, "o") for i in range(60))  # 8 digits, no repeats
    visible = octal.replace(" ", "")
    assert len(visible) >= 200
    assert degenerate_text_reason(octal) == f"low character diversity (8 distinct characters in {len(visible)})"
    assert degenerate_text_reason(octal[:120]) is None  # shorter: 8 distinct characters are enough


def test_degenerate_field_is_named_in_chats_and_labels():
    keep = build_filter(FilterSettings())
    assert keep(chat("Say something", "lol " * 10)) == 'degenerate: "lol " repeated 10 times in "messages"[1].content'
    assert keep(chat("q", "a", system="#" * 40)) == (
        'degenerate: one character repeated 40 times ("#") in "messages"[0].content')
    assert keep(labeled("A fine film.", "x" * 20)) == 'degenerate: one character repeated 20 times ("x") in "label"'
    assert build_filter(FilterSettings(drop_degenerate=False))(text("a" * 61)).text == "a" * 61


def test_answer_that_echoes_its_prompt_is_degenerate():
    keep = build_filter(FilterSettings())
    echo = chat("What is the capital of France?", "what is the  capital of France?")
    reason = keep(echo)
    assert reason == 'degenerate: answer "messages"[1].content repeats the prompt "messages"[0].content'
    assert category(reason) == "degenerate: answer repeats prompt"
    later = chat("Hi", "Hello!", "Please repeat after me: the cat sat.", "Please repeat after me: the cat sat.")
    assert keep(later) == 'degenerate: answer "messages"[3].content repeats the prompt "messages"[2].content'
    greeting = chat("Hi", "Hi")
    assert keep(greeting) is greeting


def test_bundled_movie_data_has_no_false_positives():
    records, _ = read_records(MOVIE_DATA)
    keep = build_filter(FilterSettings(strip_html=True, min_tokens=1, max_tokens=512))
    results = [keep(record) for record in records]
    rejected = [(r.line, result) for r, result in zip(records, results, strict=True) if isinstance(result, str)]
    assert rejected == []
    changed = [(r, result) for r, result in zip(records, results, strict=True) if result is not r]
    # The only markup in the file is a few HTML entities ("Lilo &amp; Stitch"); they are unescaped.
    assert 0 < len(changed) < 50
    assert all("&amp;" in r.text and result.text == html.unescape(r.text) for r, result in changed)


# Length.


@pytest.mark.parametrize("value, tokens", [
    ("Hello, world!", 4), ("don't", 3), ("  ", 0), ("Tokens: 3.14 and x_1", 7), ("日本語です", 1),
])
def test_approximate_tokens_count_words_and_punctuation(value, tokens):
    assert approximate_tokens(value) == tokens


def test_length_limits_with_the_estimate():
    record = chat("How many legs does a spider have?", "Eight.", system="Be brief.")  # 3 + 8 + 2 tokens
    assert build_filter(FilterSettings(min_tokens=13, max_tokens=13))(record) is record
    too_long = build_filter(FilterSettings(max_tokens=12))(record)
    assert too_long == "too long: about 13 tokens > max_tokens 12"
    too_short = build_filter(FilterSettings(min_tokens=14))(record)
    assert too_short == "too short: about 13 tokens < min_tokens 14"
    assert (category(too_long), category(too_short)) == ("too long", "too short")
    # Labeled rows count the label too.
    assert build_filter(FilterSettings(max_tokens=3))(labeled("Great movie!", "positive")) == (
        "too long: about 4 tokens > max_tokens 3")


@pytest.fixture
def tokenizer_dir(tmp_path, tiny_tokenizer):
    """A model folder holding only the tiny tokenizer and a config: all a token counter loads."""
    tiny_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    return tmp_path


def test_length_with_a_tokenizer(tokenizer_dir, tiny_tokenizer):
    record = chat("What is the capital of France?", "Paris is the capital of France.", system="Answer briefly.")
    expected = sum(len(tiny_tokenizer(t["content"], add_special_tokens=False).input_ids) for t in record.messages)
    assert expected != sum(approximate_tokens(t["content"]) for t in record.messages)
    keep = build_filter(FilterSettings(max_tokens=expected - 1, tokenizer=str(tokenizer_dir)))
    assert keep(record) == f"too long: {expected} tokens > max_tokens {expected - 1}"
    assert keep(record) == f"too long: {expected} tokens > max_tokens {expected - 1}"  # counted from the cache
    exact = build_filter(FilterSettings(min_tokens=expected, max_tokens=expected, tokenizer=str(tokenizer_dir)))
    assert exact(record) is record


def test_unknown_tokenizer_model_fails_before_any_row(tmp_path):
    with pytest.raises(TunelabError, match="has no config.json"):
        build_filter(FilterSettings(max_tokens=10, tokenizer=str(tmp_path)))


@pytest.mark.parametrize("kwargs, message", [
    ({"min_tokens": 0}, "min_tokens must be a whole number of at least 1"),
    ({"max_tokens": 2.5}, "max_tokens must be a whole number of at least 1"),
    ({"min_tokens": 10, "max_tokens": 5}, r"min_tokens \(10\) is above max_tokens \(5\)"),
    ({"languages": "en"}, "languages must be a list of codes"),
])
def test_invalid_settings_fail_early(kwargs, message):
    with pytest.raises(TunelabError, match=message):
        FilterSettings(**kwargs)


# Language.


def test_language_filter_rejects_other_languages_with_the_probability():
    keep = build_filter(FilterSettings(languages=("EN",)))
    reason = keep(text(GERMAN))
    assert reason.startswith("language: detected 'de' (")
    assert reason.endswith("), keeping en")
    assert float(reason.split("(")[1].split(")")[0]) >= 0.9
    assert category(reason) == "other language"
    english = text(ENGLISH)
    assert keep(english) is english
    short = text("Ein guter Film.")  # too few letters to judge
    assert keep(short) is short
    both = build_filter(FilterSettings(languages=("en", "fr")))
    assert both(text(FRENCH)).text == FRENCH
    assert both(text(GERMAN)).endswith("keeping en, fr")


def test_language_is_judged_on_user_and_assistant_turns_only():
    keep = build_filter(FilterSettings(languages=("en",)))
    english_chat = chat("Summarize the review.", ENGLISH, system=GERMAN)
    assert keep(english_chat) is english_chat
    assert keep(chat("Fasse die Kritik zusammen.", GERMAN, system="Be brief.")).startswith("language: detected 'de'")
    # Labels are not language: a German label on English text is kept.
    assert keep(labeled(ENGLISH, "positiv")).label == "positiv"


def test_language_filter_on_real_english_data_rejects_almost_nothing():
    records, _ = read_records(MOVIE_DATA)
    sample = records[::10]
    keep = build_filter(FilterSettings(languages=("en",)))
    rejected = [result for result in map(keep, sample) if isinstance(result, str)]
    assert len(rejected) <= len(sample) // 1000


def test_unknown_language_code_is_refused():
    with pytest.raises(TunelabError, match="unknown language code\\(s\\) 'english'"):
        build_filter(FilterSettings(languages=("english",)))


# HTML.


def test_html_to_text_keeps_text_and_paragraphs():
    page = (
        "<!DOCTYPE html><html><head><title>Review</title><style>p {color: red}</style>"
        "<script>var tracking = 1;</script></head><body><h1>A fine film</h1>"
        "<p>Funny &amp; <b>moving</b>,\n   with a   great cast.</p><p>Line one<br>line two</p>"
        "<ul><li>acting</li><li>music</li></ul><!-- a comment -->"
        "<pre>  code\n    stays indented</pre></body></html>"
    )
    assert html_to_text(page) == (
        "Review\n\nA fine film\n\nFunny & moving, with a great cast.\n\nLine one\nline two\n\n"
        "acting\nmusic\n\n  code\n    stays indented"
    )


@pytest.mark.parametrize("value, expected", [
    ("No markup here,   spacing  kept.\n\nSecond paragraph.", "No markup here,   spacing  kept.\n\nSecond paragraph."),
    ("Tom &amp; Jerry &#8211; a classic&nbsp;duo", "Tom & Jerry – a classic duo"),
    ("if a<b && c>d then swap", "if a<b && c>d then swap"),
    ("First paragraph\n\nSecond with <i>italics</i>\nand a wrapped line", 
     "First paragraph\n\nSecond with italics and a wrapped line"),
    ("<div>one</div><div>two</div><span>three</span> <span>four</span>", "one\n\ntwo\n\nthree four"),
    ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>", "a b\nc d"),
    ("AT&T and R&D stay", "AT&T and R&D stay"),
])
def test_html_to_text_cases(value, expected):
    assert html_to_text(value) == expected


def test_strip_html_on_records():
    keep = build_filter(FilterSettings(strip_html=True))
    record = chat("<p>What is <b>HTML</b>?</p>", "A markup language.")
    stripped = keep(record)
    assert [t["content"] for t in stripped.messages] == ["What is HTML?", "A markup language."]
    assert record.messages[0]["content"] == "<p>What is <b>HTML</b>?</p>"  # the input is not changed
    assert (stripped.source, stripped.line) == (record.source, record.line)
    plain = text("Nothing to strip < here.")
    assert keep(plain) is plain
    reason = keep(chat("Show the image", '<img src="cat.png"><script>alert(1)</script>'))
    assert reason == 'html: nothing left of "messages"[1].content after removing markup'
    assert category(reason) == "empty after HTML removal"
    assert keep(labeled("<p>Dull.</p>", "<b>negative</b>")).to_json() == {"text": "Dull.", "label": "negative"}
    # Without strip_html the markup stays.
    assert build_filter(FilterSettings())(record) is record


def test_every_category_pattern_is_reachable_and_distinct():
    reasons = {
        "too short": "too short: about 2 tokens < min_tokens 3",
        "too long": "too long: 812 tokens > max_tokens 512",
        "other language": "language: detected 'de' (0.97), keeping en",
        "empty after HTML removal": 'html: nothing left of "text" after removing markup',
        **{expected: f'degenerate: {problem} in "text"' for _, problem, expected in DEGENERATE},
        "degenerate: answer repeats prompt":
            'degenerate: answer "messages"[1].content repeats the prompt "messages"[0].content',
    }
    assert {category(reason) for reason in reasons.values()} == {name for name, _ in REASON_CATEGORIES}
    assert all(category(reason) == name for name, reason in reasons.items())
