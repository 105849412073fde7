"""Pages are rendered on the server from Jinja2 templates (autoescaped), with htmx for partial updates
and uPlot for curves, both vendored under ``static/vendor`` (no CDN: the dashboard works offline).

``page()`` fills in what every page's frame needs: the session (name, role, what it may do), the
CSRF token, the navigation, and the number formats shared by every table.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from tunelab.security.roles import GENERATE, MONITOR, READ_RUNS, REVIEW, START_RUNS

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# (path, label, permission a session needs to see the link)
NAVIGATION = [
    ("/ui/runs", "Runs", READ_RUNS),
    ("/ui/compare", "Compare", READ_RUNS),
    ("/ui/datasets", "Datasets", READ_RUNS),
    ("/ui/models", "Models", READ_RUNS),
    ("/ui/new", "New run", START_RUNS),
    ("/ui/playground", "Playground", GENERATE),
    ("/ui/review", "Review", REVIEW),
    ("/ui/serving", "A/B & feedback", MONITOR),
]


def number(value, digits: int = 4) -> str:
    """A metric as people read it: 0.8125, 12.3, 1,234; '-' for nothing."""
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value)
    if not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.1f}"


def signed(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{'+' if value > 0 else ''}{number(value, digits)}"


def ago(moment) -> str:
    """'3 min ago' for a datetime, an ISO string or epoch seconds."""
    if moment is None:
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        moment = moment.timestamp()
    seconds = max(0.0, time.time() - float(moment))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.filters.update(number=number, signed=signed, ago=ago, duration=duration,
                             tojson_pretty=lambda value: json.dumps(value, indent=2, default=str))


def page(request: Request, template: str, session, status_code: int = 200, **context) -> HTMLResponse:
    """``template`` rendered in the dashboard's frame for ``session`` (None on the login page)."""
    links = [(path, label) for path, label, needed in NAVIGATION
             if session is not None and session.can(needed)]
    return templates.TemplateResponse(request, template, {
        "session": session, "navigation": links, "path": request.url.path,
        "csrf": session.csrf if session is not None else "", **context}, status_code=status_code)


def partial(request: Request, template: str, session, **context) -> HTMLResponse:
    """A fragment for htmx to swap in (no frame)."""
    return templates.TemplateResponse(request, template, {"session": session, **context})
