"""PII detection and redaction: each type found and replaced, look-alikes left alone."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tunelab.data.pii import find_pii, iban_valid, luhn_valid, redact, redact_record
from tunelab.data.prepare import prepare_data
from tunelab.data.records import Record
from tunelab.errors import TunelabError

GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5" * 3 + "f6G7h8"
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\nq2w3e4r5\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    "text, pii_type, found",
    [
        ("write to jane.doe+ml@example.co.uk.", "email", "jane.doe+ml@example.co.uk"),
        ("call +44 20 7946 0958 today", "phone", "+44 20 7946 0958"),
        ("call +1 (415) 555-0132 today", "phone", "+1 (415) 555-0132"),
        ("or +4915112345678", "phone", "+4915112345678"),
        ("office: (212) 555-0199", "phone", "(212) 555-0199"),
        ("cell 415.555.0132", "phone", "415.555.0132"),
        ("card 4111 1111 1111 1111 exp 12/27", "credit_card", "4111 1111 1111 1111"),
        ("card 5555-5555-5555-4444", "credit_card", "5555-5555-5555-4444"),
        ("amex 378282246310005", "credit_card", "378282246310005"),
        ("amex 3782 822463 10005", "credit_card", "3782 822463 10005"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "iban", "DE89 3704 0044 0532 0130 00"),
        ("to GB82WEST12345698765432.", "iban", "GB82WEST12345698765432"),
        ("server 192.168.10.254 is down", "ip_address", "192.168.10.254"),
        ("host 2001:db8:85a3::8a2e:370:7334 answers", "ip_address", "2001:db8:85a3::8a2e:370:7334"),
        ("link-local fe80::1.", "ip_address", "fe80::1"),
        ("SSN 536-22-1234 on file", "national_id", "536-22-1234"),
        ("SSN 536 22 1234 on file", "national_id", "536 22 1234"),
        ("aws AKIAIOSFODNN7EXAMPLE key", "secret", "AKIAIOSFODNN7EXAMPLE"),
        (f"token {GITHUB_TOKEN} here", "secret", GITHUB_TOKEN),
        ("slack xoxb-2048-17239-kq8sQ2 ok", "secret", "xoxb-2048-17239-kq8sQ2"),
        ("OPENAI_API_KEY sk-proj-4fT9aLq2Zx81mWcR0pYb", "secret", "sk-proj-4fT9aLq2Zx81mWcR0pYb"),
        ("api_key=abcd1234efgh", "secret", "abcd1234efgh"),
        ('{"password": "hunter22!"}', "secret", "hunter22!"),
        ("SECRET_KEY = 'dj4ngo-s3cret'", "secret", "dj4ngo-s3cret"),
        (f"key:\n{PRIVATE_KEY}\nend", "secret", PRIVATE_KEY),
    ],
)
def test_each_type_is_found_and_redacted(text, pii_type, found):
    matches = find_pii(text)
    assert [(m.type, m.text) for m in matches] == [(pii_type, found)]
    assert text[matches[0].start:matches[0].end] == found
    redacted, counts = redact(text)
    assert redacted == text.replace(found, f"<{pii_type.upper()}>")
    assert counts == Counter({pii_type: 1})


@pytest.mark.parametrize(
    "text",
    [
        "In 2024 the team grew from 12 to 345 people.",
        "Upgrade to version 1.2.3 or v2.10.4.1, then version 1.2.3.4 of the plugin.",
        "pi is 3.14159, e is 2.71828 and 10,000,000 rows took 1.5s",
        "Released 2023-10-15; patched 2024-01-02.",
        "card 4111 1111 1111 1112",  # fails the Luhn check
        "card 4111-1111-1111-1112 and 1234567890123",  # Luhn; no issuer starts with 1
        "IBAN DE89 3704 0044 0532 0130 01",  # wrong check digits
        "IBAN DE89 3704 0044 0532 0130",  # too short for Germany
        "XX89370400440532013000",  # no such country
        "not an address: 256.1.1.1, nor 1.2.3",
        "slices a[1::2] and ::1, clock 12:30:45, MAC 00:1a:2b:3c:4d:5e",
        "SSNs never issued: 000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000",
        "order #123456789 and zip 94103-1234",
        "pip install scikit-learn; sk-learn-compatible-estimators-everywhere",
        "password = os.environ['DB_PASSWORD'] and password=******** and secret=$SECRET",
        "user@localhost is no email address",
    ],
)
def test_look_alikes_are_not_flagged(text):
    assert find_pii(text) == []


def test_overlaps_keep_the_longer_and_more_specific_find():
    # the secret's value is an email: one find, the secret
    assert [(m.type, m.text) for m in find_pii("password=ops@example.com")] == [("secret", "ops@example.com")]
    # an IPv4-mapped IPv6 address holds an IPv4 address: the longer find wins
    assert [m.type for m in find_pii("from ::ffff:192.0.2.128 now")] == ["ip_address"]
    assert find_pii("from ::ffff:192.0.2.128 now")[0].text == "::ffff:192.0.2.128"


def test_redact_counts_every_find():
    text = ("Mail a@example.com or b@example.org, call 415-555-0132, "
            "card 4111111111111111, from 10.0.0.1 and 10.0.0.2")
    redacted, counts = redact(text)
    assert counts == Counter({"email": 2, "phone": 1, "credit_card": 1, "ip_address": 2})
    assert redacted == ("Mail <EMAIL> or <EMAIL>, call <PHONE>, card <CREDIT_CARD>, "
                        "from <IP_ADDRESS> and <IP_ADDRESS>")
    assert redact("nothing here") == ("nothing here", Counter())


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")


def chat(user: str, assistant: str) -> Record:
    return Record("chat", messages=[{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": user},
                                    {"role": "assistant", "content": assistant}], source="s.jsonl", line=3)


@pytest.mark.parametrize(
    "mode, expected_user",
    [("report", "I am a@example.com"), ("redact", "I am <EMAIL>"), ("drop", None)],
)
def test_redact_record_modes(mode, expected_user):
    record = chat("I am a@example.com", "Call me at 415-555-0132")
    result, counts = redact_record(record, mode)
    assert counts == Counter({"email": 1, "phone": 1})
    if expected_user is None:
        assert result is None
    else:
        assert result.messages[1]["content"] == expected_user
        assert (result is record) == (mode == "report")
    assert record.messages[1]["content"] == "I am a@example.com"  # the input is never changed


def test_redact_record_leaves_labels_and_clean_rows_alone():
    labeled = Record("labeled", text="mail a@example.com", label="x@example.com")
    result, counts = redact_record(labeled, "redact")
    assert (result.text, result.label, counts) == ("mail <EMAIL>", "x@example.com", Counter({"email": 1}))
    clean = chat("hello", "hi")
    assert redact_record(clean, "drop") == (clean, Counter())
    with pytest.raises(TunelabError, match="report, redact or drop"):
        redact_record(clean, "off")


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


PII_ROWS = [
    {"prompt": "My email is sam@example.com, what now?", "completion": "Reply to sam@example.com."},
    {"prompt": "Ring 415-555-0132 please", "completion": "Calling."},
    *({"prompt": f"plain question {i}", "completion": f"plain answer {i}"} for i in range(8)),
]


@pytest.mark.parametrize(
    "mode, kept, pii_counts",
    [
        ("report", 10, {"email": 2, "phone": 1}),
        ("redact", 10, {"email": 2, "phone": 1}),
        ("drop", 8, {"email": 2, "phone": 1}),
        ("off", 10, {}),
    ],
)
def test_prepare_pii_modes(tmp_path, mode, kept, pii_counts):
    source = write_rows(tmp_path / "pii.jsonl", PII_ROWS)
    out = tmp_path / "out"
    summary = prepare_data([source], out, val_fraction=0, test_fraction=0, pii=mode)
    assert (summary["pii_mode"], summary["pii"], summary["rows_kept"]) == (mode, pii_counts, kept)
    train = (out / "train.jsonl").read_text(encoding="utf-8")
    assert ("sam@example.com" in train) == (mode in ("report", "off"))
    assert ("Reply to <EMAIL>." in train) == (mode == "redact")
    quarantine = [json.loads(line)
                  for line in (out / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    if mode == "drop":
        assert [(q["line"], q["reason"]) for q in quarantine] == [
            (1, "contains PII: email"), (2, "contains PII: phone")]
        assert "sam@example.com" not in quarantine[0]["raw"] and "<EMAIL>" in quarantine[0]["raw"]
        assert summary["quarantine_reasons"] == {"contains PII": 2}
    else:
        assert quarantine == []


def test_prepare_rejects_an_unknown_pii_mode(tmp_path):
    source = write_rows(tmp_path / "pii.jsonl", PII_ROWS)
    with pytest.raises(TunelabError, match="pii must be one of report, redact, drop, off"):
        prepare_data([source], tmp_path / "out", pii="mask")
