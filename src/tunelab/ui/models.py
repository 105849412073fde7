"""The Models pages: registered models with their versions and aliases, one model's lineage graph, its
model card, and the Promote button.

Promoting goes through the same gate as ``tunelab models promote`` (``registry.commands.promote_recorded``:
the paired test, refusals recorded as alias events, the card refreshed, the audit entry written, here by
the session's key). The dashboard never forces a promotion: a refusal is shown with its evidence and the
alias stays where it was. It also does not run the train-to-serve parity check that the command runs
first for LoRA versions (it loads the model and starts a server: minutes, not a button press); the form
says to run ``tunelab parity`` for that.

Model cards are Markdown that quotes held-out rows (user content), so Markdown renders them with its raw
HTML support turned off (a ``<script>`` in a card shows as text), links may only go to http(s) or mailto
addresses or within the dashboard, and images become their alt text.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as etree

import anyio
import markdown
from fastapi import APIRouter, Depends, Form, Request
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor
from markdown.util import AMP_SUBSTITUTE
from markupsafe import Markup
from sqlalchemy import select

from tunelab.errors import NotFoundError, TunelabError
from tunelab.registry.commands import promote_recorded
from tunelab.registry.lineage import lineage
from tunelab.registry.models import aliases_of, get_model, get_version, list_models, show_model
from tunelab.registry.schema import AliasEvent, DatasetVersion, ModelVersion
from tunelab.registry.stats import GATES
from tunelab.runs.report import HEADLINE_METRICS
from tunelab.security.roles import PROMOTE, READ_RUNS
from tunelab.ui.render import page
from tunelab.ui.sessions import Session, needs

router = APIRouter()

DEFAULT_ALIAS = "production"
GATE_LABELS = {"better": "better: the whole interval above 0",
               "non-inferior": "no worse (non-inferior): at most the margin worse"}
NODE = {"width": 196, "height": 46, "gap_x": 74, "gap_y": 14, "top": 34, "left": 8}
COLUMNS = (("dataset", "Dataset version"), ("run", "Run"), ("version", "Model version"), ("alias", "Alias"))
LABEL_CHARS = 26  # node labels longer than this are cut (the full text is in the node's tooltip)


# ---- the model list

def headline_metric(metrics: dict) -> tuple[str | None, float | None]:
    """The version's headline tuned metric (accuracy, f1, ...) as (name, value)."""
    for name in HEADLINE_METRICS + tuple(sorted(metrics)):
        if metrics.get(name) is not None:
            return name, metrics[name]
    return None, None


def model_versions(db, name: str) -> dict:
    """``show_model`` with each version's headline metric, taint, the aliases on it and its last gate's word."""
    info = show_model(db, name)
    model = get_model(db, name)
    tainted = dict(db.execute(select(ModelVersion.version, ModelVersion.tainted)
                              .where(ModelVersion.model_id == model.id)).all())
    for version in info["versions"]:
        version["metric"], version["metric_value"] = headline_metric(version["metrics"] or {})
        version["tainted"] = tainted.get(version["version"])
        version["aliases"] = [a for a, number in info["aliases"].items() if number == version["version"]]
        version["gate_word"] = gate_word(version["last_gate"])
    info["versions"].sort(key=lambda v: v["version"], reverse=True)
    return info


def gate_word(gate: dict | None) -> str | None:
    if not gate:
        return None
    if gate.get("forced"):
        return "forced"
    return "passed" if gate.get("passed") else "refused"


def all_models(registry) -> list[dict]:
    with registry.session() as db:
        return [model_versions(db, row["name"]) | {"created": row["created"]} for row in list_models(db)]


@router.get("/ui/models")
async def models_page(request: Request, session: Session = Depends(needs(READ_RUNS))):
    models = await anyio.to_thread.run_sync(all_models, request.app.state.ui.registry)
    return page(request, "models.html", session, title="Models", models=models)


# ---- one model

def model_context(registry, name: str, card_version: int | None = None) -> dict:
    """Everything the model page shows: versions, aliases, history, lineage graph and one version's card."""
    with registry.session() as db:
        info = model_versions(db, name)
        numbers = [v["version"] for v in info["versions"]]
        graph = model_lineage(db, name, numbers)
        dataset_ids = dict(db.execute(select(DatasetVersion.content_hash, DatasetVersion.id).where(
            DatasetVersion.content_hash.in_([d["hash"] for d in graph["datasets"]]))).all())
        shown = card_version if card_version in numbers else default_card(info)
        card = get_version(db, get_model(db, name), shown).card if shown else None
    return {"model": info, "history": list(reversed(info["history"])), "card_version": shown,
            "card": split_card(card), "lineage": lineage_layout(graph, dataset_ids, name)}


def default_card(info: dict) -> int | None:
    """The card shown first: the production version's, else the newest version's."""
    return info["aliases"].get(DEFAULT_ALIAS) or (info["versions"][0]["version"] if info["versions"] else None)


def model_lineage(db, name: str, versions: list[int]) -> dict:
    """The lineage graphs of every version of model ``name``, merged: datasets -> runs -> versions -> aliases."""
    merged: dict[str, dict] = {"datasets": {}, "runs": {}, "models": {}}
    for number in sorted(versions):
        graph = lineage(db, f"model:{name}@{number}")
        for node in graph["datasets"]:
            merged["datasets"].setdefault(node["dataset"], node)
        for run in graph["runs"]:
            merged["runs"].setdefault(run["id"], run)
        for model in graph["models"]:
            merged["models"].setdefault((model["name"], model["version"]), model)
    return {key: list(nodes.values()) for key, nodes in merged.items()}


def lineage_layout(graph: dict, dataset_ids: dict[str, int], name: str) -> dict:
    """Nodes in four columns (datasets, runs, versions, aliases) with positions, links and the edges between
    them as SVG paths, ordered to follow the versions so that few edges cross."""
    versions = sorted(graph["models"], key=lambda m: m["version"])
    runs = sorted(graph["runs"], key=lambda r: next((m["version"] for m in versions if m["run_id"] == r["id"]), 0))
    datasets = sorted(graph["datasets"], key=lambda d: next(
        (i for i, r in enumerate(runs) if r["dataset"] == d["dataset"]), len(runs)))
    aliases = sorted({a: m["version"] for m in versions for a in m["aliases"]}.items(), key=lambda item: item[1])
    columns = {
        "dataset": [_node(d["dataset"], f"rows {_rows(d['rows'])}", dataset_link(d, dataset_ids), ("d", d["dataset"]))
                    for d in datasets],
        "run": [_node(r["name"], r["status"], f"/ui/runs/{r['id']}", ("r", r["id"])) for r in runs],
        "version": [_node(f"{name} v{m['version']}", m["run"], f"/ui/models/{name}?card={m['version']}#card",
                          ("v", m["version"])) for m in versions],
        "alias": [_node(f"@{alias}", f"→ v{number}", "#aliases", ("a", alias)) for alias, number in aliases],
    }
    places = _place(columns)
    edges = [(("d", r["dataset"]), ("r", r["id"])) for r in runs if r["dataset"]]
    edges += [(("r", m["run_id"]), ("v", m["version"])) for m in versions]
    edges += [(("v", number), ("a", alias)) for alias, number in aliases]
    paths = [_edge(places[a], places[b]) for a, b in edges if a in places and b in places]
    tallest = max([len(nodes) for nodes in columns.values()] + [1])
    width = NODE["left"] * 2 + len(COLUMNS) * NODE["width"] + (len(COLUMNS) - 1) * NODE["gap_x"]
    height = NODE["top"] + tallest * (NODE["height"] + NODE["gap_y"])
    headers = [{"x": NODE["left"] + i * (NODE["width"] + NODE["gap_x"]), "label": label,
                "empty": not columns[kind]} for i, (kind, label) in enumerate(COLUMNS)]
    return {"width": width, "height": height, "nodes": list(places.values()), "edges": paths, "headers": headers,
            "node_w": NODE["width"], "node_h": NODE["height"]}


def dataset_link(node: dict, dataset_ids: dict[str, int]) -> str | None:
    known = dataset_ids.get(node["hash"])
    return f"/ui/datasets/{known}" if known else None


def _rows(rows: dict) -> str:
    return " / ".join(str(rows.get(split, 0)) for split in ("train", "val", "test"))


def _node(label: str, detail: str, href: str | None, key: tuple) -> dict:
    return {"label": _cut(label), "title": label, "detail": _cut(str(detail or "")), "href": href, "key": key}


def _cut(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def _place(columns: dict[str, list[dict]]) -> dict[tuple, dict]:
    """Each node's x, y (columns side by side, each centred on the tallest) and kind, by its key."""
    tallest = max([len(nodes) for nodes in columns.values()] + [1])
    step = NODE["height"] + NODE["gap_y"]
    places = {}
    for index, (kind, _) in enumerate(COLUMNS):
        nodes = columns[kind]
        offset = (tallest - len(nodes)) * step / 2
        for row, node in enumerate(nodes):
            places[node["key"]] = node | {"kind": kind, "x": NODE["left"] + index * (NODE["width"] + NODE["gap_x"]),
                                          "y": NODE["top"] + offset + row * step}
    return places


def _edge(start: dict, end: dict) -> str:
    x1, y1 = start["x"] + NODE["width"], start["y"] + NODE["height"] / 2
    x2, y2 = end["x"], end["y"] + NODE["height"] / 2
    middle = (x1 + x2) / 2
    return f"M{x1:.1f},{y1:.1f} C{middle:.1f},{y1:.1f} {middle:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"


# ---- the model card, rendered safely

class _SafeLinks(Treeprocessor):
    """Links only to http(s) or mailto addresses or within the dashboard (judged on the address as the browser
    will read it, entities decoded); images become their alt text, so nothing is fetched from elsewhere."""

    SAFE = re.compile(r"^(https?://|mailto:|#|/(?!/))", re.IGNORECASE)

    def run(self, root: etree.Element) -> None:
        for element in root.iter():
            if element.tag == "img":
                alt = element.get("alt") or ""
                element.tag, element.text = "span", f"[image: {alt}]" if alt else "[image]"
                element.attrib.clear()
            elif element.tag == "a" and not self.SAFE.match(self.as_read(element.get("href") or "")):
                element.attrib.pop("href", None)

    @staticmethod
    def as_read(address: str) -> str:
        decoded = html.unescape(address.replace(AMP_SUBSTITUTE, "&"))
        return "".join(ch for ch in decoded if ch.isprintable() and not ch.isspace())


class _SafeCards(Extension):
    """Raw HTML in the text stays text (escaped, not passed through), and links and images are made safe."""

    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 (markdown's name)
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        md.treeprocessors.register(_SafeLinks(md), "tunelab_safe_links", 0)


FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


def render_markdown(text: str) -> Markup:
    """Markdown to HTML in which every tag was made by Markdown itself: the text's own HTML shows as text
    (``<script>`` reads as ``<script>``, it does not run), entities it already holds stay as they are, and
    unsafe links and images are removed."""
    rendered = markdown.markdown(text, extensions=["tables", "sane_lists", _SafeCards()], output_format="html")
    return Markup(rendered)


def split_card(card: str | None) -> dict | None:
    """The card's Hugging Face front matter (shown as text) and its body rendered to safe HTML."""
    if not card:
        return None
    found = FRONT_MATTER.match(card)
    front, body = (found.group(1), card[found.end():]) if found else (None, card)
    return {"front_matter": front, "html": render_markdown(body)}


# ---- promote

def run_promotion(registry, name: str, version: int, alias: str, gate: str, margin: float, actor: str) -> dict:
    """The gate's verdict as the page shows it: passed or refused, the message and the evidence (the paired
    test, the leak check), with the alias's holder before."""
    with registry.session() as db:
        model = get_model(db, name)
        before = aliases_of(db, model).get(alias)
        last_event = db.scalar(select(AliasEvent.id).where(AliasEvent.model_id == model.id)
                               .order_by(AliasEvent.id.desc()).limit(1)) or 0
    outcome = {"version": version, "alias": alias, "gate": gate, "margin": margin, "holder": before}
    try:
        result = promote_recorded(registry, name, version, alias, gate, margin, actor=actor)
    except TunelabError as refusal:
        return outcome | {"passed": False, "message": str(refusal),
                          "evidence": refusal_evidence(registry, model.id, last_event)}
    return outcome | {"passed": True, "message": result["message"], "evidence": result["gate"]}


def refusal_evidence(registry, model_id: int, after: int) -> dict | None:
    """The evidence a refusal just recorded (an alias event newer than ``after``); None when the request was
    refused before any test (a tainted version, an alias it already holds, a bad margin)."""
    with registry.session() as db:
        event = db.scalar(select(AliasEvent).where(AliasEvent.model_id == model_id, AliasEvent.id > after,
                                                   AliasEvent.action == "refused").order_by(AliasEvent.id.desc()))
        return event.gate if event is not None else None


def parse_request(version: str, alias: str, gate: str, margin: str) -> tuple[int, str, str, float]:
    """The form's fields, or one TunelabError naming what is wrong."""
    problems = []
    if not version.strip().isdigit():
        problems.append(f"version {version!r}: pick one of the model's versions")
    if gate not in GATES:
        problems.append(f"gate {gate!r}: use one of {', '.join(GATES)}")
    try:
        value = float(margin) if margin.strip() else 0.0
    except ValueError:
        problems.append(f"margin {margin!r}: a number such as 0.02")
        value = 0.0
    if problems:
        raise TunelabError("; ".join(problems))
    return int(version), alias.strip() or DEFAULT_ALIAS, gate, value


async def model_page(request: Request, session: Session, name: str, card: int | None = None,
                     status_code: int = 200, **extra):
    try:
        context = await anyio.to_thread.run_sync(model_context, request.app.state.ui.registry, name, card)
    except TunelabError as error:
        status = 404 if isinstance(error, NotFoundError) else 400
        return page(request, "error.html", session, status_code=status, title="Model", message=str(error))
    return page(request, "model_detail.html", session, status_code=status_code, title=f"Model {name}",
                gates=GATE_LABELS, default_alias=DEFAULT_ALIAS, can_promote=session.can(PROMOTE),
                **context, **extra)


@router.get("/ui/models/{name}")
async def model_detail(request: Request, name: str, card: str = "", session: Session = Depends(needs(READ_RUNS))):
    return await model_page(request, session, name, int(card) if card.isdigit() else None)


@router.post("/ui/models/{name}/promote")
async def promote_version(request: Request, name: str, version: str = Form(""), alias: str = Form(DEFAULT_ALIAS),
                          gate: str = Form("better"), margin: str = Form(""),
                          session: Session = Depends(needs(PROMOTE))):
    try:
        number, alias, gate, value = parse_request(version, alias, gate, margin)
    except TunelabError as error:
        return await model_page(request, session, name, status_code=400, promote_error=str(error))
    actor = f"key:{session.principal.key_id}" if session.principal.key_id else f"ui:{session.principal.name}"
    try:
        outcome = await anyio.to_thread.run_sync(run_promotion, request.app.state.ui.registry, name, number, alias,
                                                 gate, value, actor)
    except NotFoundError as error:
        return await model_page(request, session, name, status_code=404, promote_error=str(error))
    return await model_page(request, session, name, card=number, gate_result=outcome)
