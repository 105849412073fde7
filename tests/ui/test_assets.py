"""Every asset the dashboard loads is bundled: no CDN, and the vendored files are the ones VENDORED.md lists."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import tunelab.ui

UI = Path(tunelab.ui.__file__).parent
VENDOR = UI / "static" / "vendor"


def test_vendored_files_match_their_recorded_hashes():
    listed = re.findall(r"^([0-9a-f]{64})  (\S+)$", (VENDOR / "VENDORED.md").read_text(), re.MULTILINE)
    assert {name for _, name in listed} == {str(p.relative_to(VENDOR)) for p in VENDOR.glob("*/*")}
    for digest, name in listed:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_no_page_loads_anything_from_another_host():
    remote = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
    css_remote = re.compile(r"""url\(\s*["']?(?:https?:)?//|@import\s+["']?(?:https?:)?//""", re.IGNORECASE)
    own = [p for p in UI.rglob("*") if p.suffix in {".html", ".js", ".css", ".py"} and VENDOR not in p.parents]
    assert own
    for path in own:
        text = path.read_text(encoding="utf-8")
        assert not remote.search(text), f"{path.name} loads from another host"
        assert not css_remote.search(text), f"{path.name} loads from another host"
