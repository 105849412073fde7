"""The Run page: one run's curves (live while it trains), base vs tuned metrics with intervals, a browser of its
held-out predictions, its config and its data, with the report's plots.

The registry only finds the run (by id, id prefix or name, never by a folder path: a URL must not make the
dashboard read or record folders of its choosing); everything shown is read from the run folder
(``run_view.py``). While a run trains, ``/events`` streams the new lines of its train_log.jsonl and its status
as server-sent events, starting at the byte offset the page was rendered from, so no row is sent twice.
The only files served from a run folder are the .png/.svg images its report.md shows.

A finished run is registered as a model version from its page (``POST /ui/runs/{ref}/register``, for roles
that may promote) through ``register_recorded``, the very function behind ``tunelab models register``: same
checks, same model card, same audit entry, with the session's key as the actor.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from tunelab.errors import NotFoundError, TunelabError
from tunelab.registry.commands import register_recorded
from tunelab.registry.queries import find_run, run_summary
from tunelab.registry.schema import Model, ModelVersion, Run
from tunelab.runs.folder import RunFolder, RunStatus
from tunelab.security import files as sealed
from tunelab.security.roles import PROMOTE, READ_RUNS
from tunelab.ui.curves import read_from
from tunelab.ui.render import page, partial
from tunelab.ui.run_view import (FILTER_LABELS, IMAGE_TYPES, PREDICTION_FILTERS, filter_counts, image_file, passes,
                                 prediction_cells, read_run_view, searched)
from tunelab.ui.sessions import Session, needs

router = APIRouter()

PAGE_SIZE = 20  # predictions per page
POLL_SECONDS = 0.5  # how often the live stream looks at train_log.jsonl and status.json
HEARTBEAT_SECONDS = 15.0  # a comment line this often keeps proxies from closing a quiet stream
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=60",
                 # an SVG opened on its own runs no script and loads nothing
                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"}


# ---- finding the run

def lookup_run(db: DbSession, ref: str) -> Run:
    """The run ``ref`` names: an id, an id prefix or a run name."""
    run = db.get(Run, ref)
    if run is not None:
        return run
    if RunFolder.is_run(ref) or ref.startswith((".", "~")) or "/" in ref or "\\" in ref:
        # find_run would read this as a folder beside the server: look it up as a name only
        run = db.scalars(select(Run).where(Run.name == ref).order_by(Run.created.desc())).first()
        if run is None:
            raise TunelabError(f"no run {ref!r} in the registry: give a run id or a run name")
        return run
    return find_run(db, ref)


def run_record(registry, ref: str) -> dict:
    """What the registry says about the run (its summary, with the dataset version's id for the link)."""
    with registry.session() as db:
        run = lookup_run(db, ref)
        record = run_summary(db, run)
        record["dataset_version_id"] = run.dataset_version_id
    return record


async def find(request: Request, ref: str) -> dict:
    return await anyio.to_thread.run_sync(run_record, request.app.state.ui.registry, ref)


def not_found(request: Request, session: Session, error: TunelabError) -> HTMLResponse:
    return page(request, "error.html", session, status_code=404, title="Run not found", message=str(error))


# ---- predictions

@dataclass
class Listing:
    """One page of the predictions browser."""

    rows: list[dict]
    filter: str
    q: str
    page: int
    pages: int
    total: int  # predictions in this filter and search
    counts: dict[str, int]  # per filter, within the search
    available: bool  # the run has a predictions.jsonl with rows
    has_base: bool

    @property
    def first(self) -> int:
        return (self.page - 1) * PAGE_SIZE + 1 if self.total else 0

    @property
    def last(self) -> int:
        return min(self.total, self.page * PAGE_SIZE)


def listing_of(predictions: list[dict], which: str, query: str, page_number: int) -> Listing:
    which = which if which in PREDICTION_FILTERS else "all"
    found = searched(predictions, query.strip())
    counts = filter_counts(found)
    picked = [row for row in found if passes(row, which)]
    pages = max(1, math.ceil(len(picked) / PAGE_SIZE))
    page_number = min(max(1, page_number), pages)
    shown = picked[(page_number - 1) * PAGE_SIZE: page_number * PAGE_SIZE]
    position = {id(row): i for i, row in enumerate(predictions)}  # a row without an id is shown by its line
    return Listing([prediction_cells(row, position[id(row)]) for row in shown], which, query.strip(), page_number,
                   pages, len(picked), counts, bool(predictions), any("base_prediction" in row for row in predictions))




# ---- pages

@dataclass
class Listed:
    """Which predictions the page lists: the filter, the search and the page number from the URL."""

    which: str = "all"
    q: str = ""
    page_number: int = 1


@router.get("/ui/runs/{ref}")
async def run_page(request: Request, ref: str, which: str = Query("all", alias="filter"), q: str = "",
                   page_number: int = Query(1, alias="page"), session: Session = Depends(needs(READ_RUNS))):
    try:
        record = await find(request, ref)
    except TunelabError as error:
        return not_found(request, session, error)
    return await render_run(request, session, record, Listed(which, q, page_number))


async def render_run(request: Request, session: Session, record: dict, listed: Listed,
                     form: RegisterForm | None = None, status_code: int = 200) -> HTMLResponse:
    """The Run page of the run ``record`` describes; ``form``: a registration that was refused, shown with its
    error and the fields as they were sent."""
    try:  # an encrypted folder without the key, say
        view = await anyio.to_thread.run_sync(read_run_view, record["path"])
    except TunelabError as error:
        return page(request, "error.html", session, status_code=409, title="Run not readable", message=str(error))
    folder_missing = not Path(record["path"]).is_dir()
    if folder_missing:
        view.status = RunStatus(record["status"], reason=record.get("reason"))
    registration = await anyio.to_thread.run_sync(registration_of, request.app.state.ui.registry, record["id"])
    listing = listing_of(view.predictions, listed.which, listed.q, listed.page_number)
    run_id = record["id"]
    return page(request, "run.html", session, status_code=status_code, title=view.name, run=record, view=view,
                folder_missing=folder_missing, listing=listing, filters=FILTER_LABELS, oob=False,
                running=view.status.status == "running", image_url=lambda name: f"/ui/runs/{run_id}/files/{name}",
                registration=registration, can_register=can_register(session, record, registration),
                form=form or RegisterForm())


@router.get("/ui/runs/{ref}/predictions")
async def run_predictions(request: Request, ref: str, which: str = Query("all", alias="filter"), q: str = "",
                          page_number: int = Query(1, alias="page"), session: Session = Depends(needs(READ_RUNS))):
    """The predictions browser's rows for htmx: one page of one filter, with the counts of every filter."""
    try:
        record = await find(request, ref)
        folder = RunFolder(record["path"])
        predictions = await anyio.to_thread.run_sync(folder.predictions)
    except TunelabError as error:
        return HTMLResponse(f'<p class="alert error">{escape(str(error))}</p>', status_code=404)
    status = await anyio.to_thread.run_sync(folder.status)
    return partial(request, "run_predictions.html", session, run=record, filters=FILTER_LABELS, oob=True,
                   listing=listing_of(predictions, which, q, page_number), running=status.status == "running")


@router.get("/ui/runs/{ref}/files/{name:path}")
async def run_file(request: Request, ref: str, name: str, session: Session = Depends(needs(READ_RUNS))):
    """An image report.md shows, from the run folder; anything else (another file, a path outside) is 404."""
    try:
        record = await find(request, ref)
    except TunelabError as error:
        return PlainTextResponse(str(error), status_code=404)
    try:
        path = await anyio.to_thread.run_sync(image_file, RunFolder(record["path"]), name)
        content = None if path is None else await anyio.to_thread.run_sync(sealed.read_bytes, path)
    except TunelabError as error:
        return PlainTextResponse(str(error), status_code=409)
    if content is None:
        return PlainTextResponse(f"{name!r} is not an image of this run's report", status_code=404)
    return Response(content, media_type=IMAGE_TYPES[path.suffix.lower()], headers=IMAGE_HEADERS)


# ---- registering the run as a model version

@dataclass
class Registration:
    """What the run is registered as, for the page's Model versions card."""

    versions: list[tuple[str, int]]  # (model name, version number) registered from this run
    models: list[str]  # every model's name: the form suggests them
    tainted: str | None  # the erasure whose rows the run learned from: it is not registered again


@dataclass
class RegisterForm:
    """The registration form's fields as sent (kept after a refusal), and why it was refused."""

    name: str = ""
    tags: str = ""
    error: str | None = None


def registration_of(registry, run_id: str) -> Registration:
    with registry.session() as db:
        versions = db.execute(select(Model.name, ModelVersion.version)
                              .join(Model, Model.id == ModelVersion.model_id).where(ModelVersion.run_id == run_id)
                              .order_by(Model.name, ModelVersion.version)).all()
        names = db.scalars(select(Model.name).order_by(Model.name)).all()
        tainted = db.get(Run, run_id).tainted
    return Registration([(name, number) for name, number in versions], list(names), tainted)


def can_register(session: Session, record: dict, registration: Registration) -> bool:
    """The form is offered to roles that may promote, on a finished run that no erasure tainted."""
    return session.can(PROMOTE) and record["status"] == "finished" and not registration.tainted


def parse_tags(text: str) -> dict:
    """``owner=ana, reviewed`` -> {"owner": "ana", "reviewed": None}, as ``--tag KEY[=VALUE]`` reads each."""
    tags = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, _, value = item.partition("=")
        if not key.strip():
            raise TunelabError(f"tag {item!r}: use KEY or KEY=VALUE, separated by commas")
        tags[key.strip()] = value.strip() or None
    return tags


def actor_of(session: Session) -> str:
    """Who the audit log names: the session's API key."""
    principal = session.principal
    return f"key:{principal.key_id}" if principal.key_id else f"ui:{principal.name}"


@router.post("/ui/runs/{ref}/register")
async def register_version(request: Request, ref: str, name: str = Form(""), tags: str = Form(""),
                           session: Session = Depends(needs(PROMOTE))):
    """Register the run as a new version of model ``name`` (or find the version it already is), then show the
    model; a refusal (a bad name or tag, a run that did not finish or is tainted) is shown on the run's page."""
    try:
        record = await find(request, ref)
    except TunelabError as error:
        return not_found(request, session, error)
    name = name.strip()
    try:
        result = await anyio.to_thread.run_sync(register_recorded, request.app.state.ui.registry, record["id"], name,
                                                parse_tags(tags), actor_of(session))
    except TunelabError as error:
        status = 404 if isinstance(error, NotFoundError) else 400
        return await render_run(request, session, record, Listed(), RegisterForm(name, tags, str(error)),
                                status_code=status)
    return RedirectResponse(f"/ui/models/{quote(result['name'], safe='')}", status_code=303)


# ---- live

@router.get("/ui/runs/{ref}/events")
async def run_events(request: Request, ref: str, offset: int = 0, session: Session = Depends(needs(READ_RUNS))):
    """Server-sent events: ``rows`` (train_log.jsonl rows written after ``offset``, whole lines only) and
    ``status`` (when it changes); the stream ends once the run no longer runs. A reconnecting browser sends the
    last event's id (the byte offset it had reached) and resumes there."""
    try:
        record = await find(request, ref)
    except TunelabError as error:
        return PlainTextResponse(str(error), status_code=404)
    resumed = request.headers.get("last-event-id", "")
    start = int(resumed) if resumed.isdigit() else max(0, offset)
    return StreamingResponse(live_events(request, RunFolder(record["path"]), start), media_type="text/event-stream",
                             headers=STREAM_HEADERS)


def sse(event: str, data, event_id: int) -> str:
    """One server-sent event; its data is one line of JSON."""
    return f"event: {event}\nid: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def new_rows(path: Path, offset: int) -> tuple[list[dict], int]:
    """Complete rows after ``offset``; a log rewritten shorter (a resumed run drops its later steps) starts over."""
    try:
        if path.stat().st_size < offset:
            offset = 0
    except FileNotFoundError:
        return [], offset
    return read_from(path, offset)


async def live_events(request: Request, folder: RunFolder, offset: int,
                      poll: float = POLL_SECONDS) -> AsyncIterator[str]:
    """Rows and status until the run ends or the browser goes away. The status is read before the rows, so the
    rows a run wrote before it ended are sent before the status that ends the stream."""
    sent_status = None
    quiet_since = time.monotonic()
    yield "retry: 3000\n\n"
    while True:
        status = (await anyio.to_thread.run_sync(folder.status)).status
        rows, offset = await anyio.to_thread.run_sync(new_rows, folder.train_log_path, offset)
        if rows:
            yield sse("rows", rows, offset)
            quiet_since = time.monotonic()
        if status != sent_status:
            yield sse("status", {"status": status}, offset)
            sent_status, quiet_since = status, time.monotonic()
        if status != "running" or await request.is_disconnected():
            return
        if time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
            yield ": still here\n\n"
            quiet_since = time.monotonic()
        await anyio.sleep(poll)
