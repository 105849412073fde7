"""Find and redact personal data and secrets in training text.

Each detector pairs a pattern with a check that turns away look-alikes (Luhn for cards, mod-97 for
IBANs, address parsing for IPs, the invalid SSN ranges), so years, version numbers and plain ids
are not flagged. Redaction swaps each find for a typed placeholder such as ``<EMAIL>``.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from tunelab.data.records import Record
from tunelab.errors import TunelabError

# Also the order in which types are listed in reports and reasons.
PII_TYPES = ("email", "phone", "credit_card", "iban", "ip_address", "national_id", "secret")
REDACT_MODES = ("report", "redact", "drop")
# When two finds of equal length overlap, the earlier type here wins.
_SPECIFICITY = ("secret", "credit_card", "iban", "national_id", "email", "ip_address", "phone")

Span = tuple[int, int]


@dataclass(frozen=True)
class Match:
    type: str
    start: int
    end: int
    text: str


def placeholder(pii_type: str) -> str:
    """The text that replaces a find of ``pii_type``: ``<EMAIL>``, ``<CREDIT_CARD>``, ..."""
    return f"<{pii_type.upper()}>"


def find_pii(text: str) -> list[Match]:
    """Every PII find in ``text``, in order and without overlaps; where finds overlap the longer
    one wins, then the more specific type."""
    candidates = [Match(pii_type, start, end, text[start:end])
                  for pii_type, find in _DETECTORS for start, end in find(text)]
    candidates.sort(key=lambda m: (m.start - m.end, _SPECIFICITY.index(m.type), m.start))
    chosen: list[Match] = []
    starts: list[int] = []
    for match in candidates:
        i = bisect.bisect_right(starts, match.start)
        if (i and chosen[i - 1].end > match.start) or (i < len(chosen) and chosen[i].start < match.end):
            continue
        chosen.insert(i, match)
        starts.insert(i, match.start)
    return chosen


def redact(text: str) -> tuple[str, Counter]:
    """``text`` with each find replaced by its placeholder, and the number of finds per type."""
    pieces, counts, position = [], Counter(), 0
    for match in find_pii(text):
        pieces += [text[position:match.start], placeholder(match.type)]
        counts[match.type] += 1
        position = match.end
    pieces.append(text[position:])
    return "".join(pieces), counts


def redact_record(record: Record, mode: str) -> tuple[Record | None, Counter]:
    """Check every text field of ``record`` (chat turn contents or text; labels are not text).

    ``report`` returns the record unchanged, ``redact`` returns it with placeholders, ``drop``
    returns None when anything was found, so the caller can quarantine the row. The counts of
    finds per type come back in every mode.
    """
    if mode not in REDACT_MODES:
        raise TunelabError(f'PII mode must be report, redact or drop, got "{mode}"')
    counts: Counter = Counter()
    if record.kind == "chat":
        messages = []
        for turn in record.messages:
            content, found = redact(turn["content"])
            counts.update(found)
            messages.append({**turn, "content": content})
        redacted = replace(record, messages=messages)
    else:
        text, counts = redact(record.text)
        redacted = replace(record, text=text)
    if not counts or mode == "report":
        return record, counts
    return (None if mode == "drop" else redacted), counts


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries in its last digit."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Right length for its country and the ISO 13616 mod-97 check (spaces ignored)."""
    compact = iban.replace(" ", "")
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _scan(pattern: re.Pattern, check: Callable[[str, re.Match], bool] | None = None,
          group: int | str = 0) -> Callable[[str], Iterator[Span]]:
    """A detector: the spans of ``group`` in each match of ``pattern`` that pass ``check``."""
    def find(text: str) -> Iterator[Span]:
        for match in pattern.finditer(text):
            if check is None or check(text, match):
                yield match.span(group)
    return find


def _find_ibans(text: str) -> Iterator[Span]:
    """IBANs written compact or in groups: exactly the country's length, then a word boundary."""
    for start in _IBAN_START.finditer(text):
        length = _IBAN_LENGTHS.get(start.group(1))
        if length is None:
            continue
        count, end = 4, start.end()
        while count < length and end < len(text):
            char = text[end]
            if char in _IBAN_CHARS:
                count += 1
            elif not (char == " " and text[end - 1] != " " and text[end + 1:end + 2] in _IBAN_CHARS):
                break
            end += 1
        following = text[end:end + 1]
        if count == length and not following.isalnum() and iban_valid(text[start.start():end]):
            yield start.start(), end


def _card_check(text: str, match: re.Match) -> bool:
    digits = re.sub(r"[ -]", "", match.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _phone_check(text: str, match: re.Match) -> bool:
    return 8 <= sum(char.isdigit() for char in match.group()) <= 15


def _ipv4_check(text: str, match: re.Match) -> bool:
    if _VERSION_BEFORE.search(text, max(0, match.start() - 12), match.start()):
        return False
    try:
        ipaddress.IPv4Address(match.group())
    except ValueError:
        return False
    return True


def _ipv6_check(text: str, match: re.Match) -> bool:
    candidate = match.group()
    groups = [g for g in re.split(r"[:.]", candidate) if g]
    # "1::2" in a Python slice parses as an address; real ones have a longer group
    if len(groups) < 2 or max(len(g) for g in groups) < 3:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _token_check(text: str, match: re.Match) -> bool:
    token = match.group()
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token[3:])


def _assigned_secret_check(text: str, match: re.Match) -> bool:
    value = match.group("value")
    return len(set(value)) > 2 and value[0] not in "$%"  # not "******" nor a $VARIABLE


# Lookarounds keep finds from starting or ending inside a longer word or number.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_PHONE_INTERNATIONAL = re.compile(
    r"(?<![\w+])\+[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,6}(?![\w-]|\.\d)"
)
_PHONE_US = re.compile(r"(?<![\w+.-])(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)")
_CREDIT_CARD = re.compile(
    r"(?<![\w.,-])(?<!\d[ -])(?:[2-6]\d{12,18}"  # compact
    r"|[2-6]\d{3}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?"  # 4-4-4-4 and 4-4-4-4-3
    r"|3\d{3}([ -])\d{6}\2\d{4,5})"  # American Express and Diners: 4-6-5 and 4-6-4
    r"(?![\w-]|[.,]\d|[ -]\d)"  # not part of a longer run of digit groups
)
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})")
_IBAN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(  # candidates only: ipaddress decides
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?![\w:]|\.\d)"
)
_VERSION_BEFORE = re.compile(r"(?i)\b(?:version|ver\.?|v)\s*$")
# US Social Security numbers; area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
_SSN = re.compile(r"(?<![\w-])(?!000|666|9)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-]|\.\d)")
_AWS_KEY = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_GITHUB_TOKEN = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")
_SLACK_TOKEN = re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,250}")
_OPENAI_KEY = re.compile(r"(?<![\w-])sk-[A-Za-z0-9_-]{20,250}")
_VALUE = r"[^\s\"'`,;()\[\]{}<>]"
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|(?:access|auth|api)[_-]?token"
    r"|password|passwd|pwd)[\"']?\s*[:=]\s*[\"']?"
    rf"(?P<value>{_VALUE}{{5,}}[^\s\"'`,;()\[\]{{}}<>.])(?=[\s\"'`,;.]|\Z)"
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)"
)

_DETECTORS: tuple[tuple[str, Callable[[str], Iterator[Span]]], ...] = (
    ("email", _scan(_EMAIL)),
    ("phone", _scan(_PHONE_INTERNATIONAL, _phone_check)),
    ("phone", _scan(_PHONE_US)),
    ("credit_card", _scan(_CREDIT_CARD, _card_check)),
    ("iban", _find_ibans),
    ("ip_address", _scan(_IPV4, _ipv4_check)),
    ("ip_address", _scan(_IPV6, _ipv6_check)),
    ("national_id", _scan(_SSN)),
    ("secret", _scan(_AWS_KEY)),
    ("secret", _scan(_GITHUB_TOKEN)),
    ("secret", _scan(_SLACK_TOKEN)),
    ("secret", _scan(_OPENAI_KEY, _token_check)),
    ("secret", _scan(_ASSIGNED_SECRET, _assigned_secret_check, "value")),
    ("secret", _scan(_PRIVATE_KEY)),
)

# IBAN length per country (ISO 13616 registry).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
