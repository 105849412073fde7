"""The registry's commands: ``tunelab runs``, ``models``, ``datasets``, ``lineage``, ``keys`` and ``ab``.

Each function opens the registry, does one thing and prints it as text, or as JSON with ``as_json``
(for scripts). cli.py maps subcommands onto them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import select

from tunelab.errors import TunelabError
from tunelab.registry.audit_trail import record
from tunelab.registry.card_data import write_card
from tunelab.registry.compare import compare_runs
from tunelab.registry.db import open_registry
from tunelab.registry.gate import promote
from tunelab.registry.keys import create_key, list_keys, revoke_key
from tunelab.registry.lineage import datasets_named, format_lineage, lineage
from tunelab.registry.models import list_models as model_rows
from tunelab.registry.models import register, resolve, rollback, show_model
from tunelab.registry.queries import find_run, list_runs, run_details
from tunelab.registry.schema import Dataset, DatasetVersion, Run
from tunelab.registry.serving import ab_report, list_ab_tests
from tunelab.tables import text_table

MAX_FLIPS_SHOWN = 10
FLIP_CHARS = 60  # texts in the flip table, cut to fit a terminal


def emit(data, text: str, as_json: bool) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False) if as_json else text)


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _signed(value) -> str:
    return "-" if value is None else f"{value:+.4f}"


# ---- runs

def runs_list(url: str | None, status: str | None, limit: int | None, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        runs = list_runs(session, status, limit)
    rows = [[r["id"], f"{r['sweep']}/{r['name']}" if r.get("sweep") else r["name"],
             r["status"] + (f" (step {r['last_step']})" if r.get("last_step") else ""),
             r["task"], r["method"], r.get("dataset"), _headline(r["metrics"]), r["created"][:19]] for r in runs]
    emit(runs, text_table(["id", "name", "status", "task", "method", "data", "tuned", "created"], rows)
         if runs else "no runs recorded yet (tunelab train records each run)", as_json)


def _headline(metrics: dict) -> str:
    for name in ("tuned.accuracy", "tuned.f1", "tuned.rouge_l", "tuned.loss"):
        if name in metrics:
            return f"{name.split('.')[1]} {metrics[name]:.4f}"
    return "-"


def runs_show(url: str | None, ref: str, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        details = run_details(session, find_run(session, ref))
    lines = [f"run {details['name']} ({details['id']})  {details['status']}"
             + (f": {details['reason']} (last step {details.get('last_step')})" if details.get("reason") else ""),
             f"  folder    {details['path']}",
             f"  task      {details['task']}, method {details['method']}, base {details['base_model']}, "
             f"seed {details['seed']}",
             f"  data      {details.get('dataset') or '-'}",
             f"  code      git {details['git_commit'] or '-'}; "
             + ", ".join(f"{k} {v}" for k, v in (details["packages"] or {}).items()),
             "  hardware  " + ", ".join(f"{k} {v}" for k, v in (details["hardware"] or {}).items())]
    if details["metrics"]:
        lines.append("  metrics   " + ", ".join(f"{k} {_number(v)}" for k, v in details["metrics"].items()))
    for name, info in details["series"].items():
        lines.append(f"  logged    {name}: {info['points']} points, last {_number(info['last'])} "
                     f"at step {info['last_step']}")
    for evaluation in details["evaluations"]:
        lines.append(f"  eval      {evaluation['arm']} on {evaluation['items']} items (set "
                     f"{evaluation['eval_set']}): " + ", ".join(f"{k} {_number(v)}"
                                                               for k, v in evaluation["metrics"].items()))
    lines.append(f"  artifacts {len(details['artifacts'])} files with sha256")
    emit(details, "\n".join(lines), as_json)


def runs_compare(url: str | None, refs: list[str], as_json: bool, shown: int = MAX_FLIPS_SHOWN) -> None:
    if len(refs) < 2:
        raise TunelabError("runs compare needs at least two runs")
    registry = open_registry(url)
    with registry.session() as session:
        result = compare_runs(session, refs)
    emit(result, format_comparison(result, shown), as_json)


def format_comparison(result: dict, shown: int = MAX_FLIPS_SHOWN) -> str:
    names = [r["name"] for r in result["runs"]]
    lines = ["config (only what differs):"]
    diff = result["config_diff"]
    lines.append(text_table(["key", *names], [[k, *[json.dumps(v) for v in values]] for k, values in diff.items()])
                 if diff else "  (identical)")
    lines.append("")
    lines.append(f"metrics (delta from {names[0]}):")
    differing = {name: m for name, m in result["metrics"].items() if len({repr(v) for v in m["values"]}) > 1}
    rows = [[name, *[f"{_number(v)} ({_signed(d)})" if i else _number(v)
                     for i, (v, d) in enumerate(zip(m["values"], m["deltas"]))]]
            for name, m in differing.items()]
    lines.append(text_table(["metric", *names], rows) if rows else "  (no metric differs)")
    if len(differing) < len(result["metrics"]):
        same = [name for name in result["metrics"] if name not in differing]
        lines.append(f"  the same in every run: {', '.join(same)}")
    for flip in result["flips"]:
        lines.append("")
        if "note" in flip:
            lines.append(f"flips: {flip['note']}")
            continue
        lines.append(f"flips from {flip['from']} to {flip['to']} on {flip['shared']} shared items: "
                     f"{len(flip['right_to_wrong'])} right->wrong, {len(flip['wrong_to_right'])} wrong->right, "
                     f"{flip['both_right']} right in both, {flip['both_wrong']} wrong in both")
        for title, items in (("right->wrong", flip["right_to_wrong"]), ("wrong->right", flip["wrong_to_right"])):
            if items:
                table = [[i["input"], i["reference"], i["before"], i["after"]] for i in items[:shown]]
                lines.append(f"  {title}:")
                lines.append(text_table(["input", "reference", flip["from"], flip["to"]], table, limit=FLIP_CHARS))
                if len(items) > shown:
                    lines.append(f"  ... {len(items) - shown} more (--json lists all)")
    return "\n".join(lines)


# ---- models

def models_register(url: str | None, run_ref: str, name: str, tags: dict, as_json: bool) -> None:
    result = register_recorded(open_registry(url), run_ref, name, tags)
    text = (f"registered {name} v{result['version']} from run {result['run']} ({result['run_id']})"
            if result["created"] else f"run {result['run']} already is {name} v{result['version']}")
    emit(result, f"{text}\n  weights {result['artifact']} (sha256 {result['artifact_sha256'][:12]})\n"
                 f"  card    {result['card']}", as_json)


def register_recorded(registry, run_ref: str, name: str, tags: dict | None = None,
                      actor: str | None = None) -> dict:
    """The registry's ``register`` (a finished run as a new version of ``name``, or its existing one), the model
    card written (MODEL_CARD.md beside the weights and into the registry), then the ``models.register`` audit
    entry by ``actor`` (default the local user). ``tunelab models register`` and the dashboard's Run page both
    go through here."""
    with registry.session() as session:
        version, created = register(session, run_ref, name, tags)
        card = write_card(session, version)
        run = session.get(Run, version.run_id)
        result = {"name": name, "version": version.version, "created": created, "run": run.name,
                  "run_id": run.id, "artifact": version.artifact_path, "artifact_sha256": version.artifact_sha256,
                  "card": str(card)}
    record("models.register", actor, registry=registry, model=name, version=result["version"], run=result["run_id"],
           artifact_sha256=result["artifact_sha256"], created=created)
    return result


def models_list(url: str | None, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        models = model_rows(session)
    rows = [[m["name"], m["versions"], ", ".join(f"@{a} -> v{v}" for a, v in m["aliases"].items()) or "-",
             m["created"][:19]] for m in models]
    emit(models, text_table(["name", "versions", "aliases", "created"], rows) if models
         else "no models registered yet (tunelab models register RUN --name NAME)", as_json)


def models_show(url: str | None, ref: str, as_json: bool, card: bool = False) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        if card:
            _, version = resolve(session, ref)
            emit({"card": version.card}, version.card or "no card", as_json)
            return
        info = show_model(session, ref.partition("@")[0])
    aliases = ", ".join(f"@{a} -> v{v}" for a, v in info["aliases"].items()) or "none"
    lines = [f"model {info['name']}  aliases: {aliases}"]
    lines.append(text_table(["version", "run", "tuned metrics", "last gate", "created"],
                            [[f"v{v['version']}", f"{v['run']} ({v['run_id']})",
                              ", ".join(f"{k} {_number(x)}" for k, x in list(v["metrics"].items())[:3]),
                              _gate_word(v["last_gate"]), v["created"][:19]] for v in info["versions"]]))
    if info["history"]:
        lines.append("history:")
        for event in info["history"]:
            extra = f" forced: {event['reason']}" if event["forced"] else ""
            lines.append(f"  {event['time'][:19]}  @{event['alias']}  {event['action']} v{event['version']}"
                         + (f" (was v{event['previous']})" if event["previous"] else "") + extra)
    emit(info, "\n".join(lines), as_json)


def _gate_word(gate: dict | None) -> str:
    if not gate:
        return "-"
    if gate.get("forced"):
        return f"forced @{gate.get('alias')}"
    return f"{'passed' if gate.get('passed') else 'refused'} @{gate.get('alias')}"


def models_promote(url: str | None, name: str, version: int, alias: str, gate: str, margin: float,
                   eval_set: str | None, force: bool, reason: str | None, as_json: bool, metric: str | None = None,
                   ) -> None:
    result = promote_recorded(open_registry(url), name, version, alias, gate, margin, eval_set, force, reason,
                              metric)
    verb = "promoted (forced)" if result.get("forced") else "promoted"
    emit(result, f"{verb}: {name}@{alias} -> v{version}\n{result['message']}", as_json)


def promote_recorded(registry, name: str, version: int, alias: str = "production", gate: str = "better",
                     margin: float = 0.0, eval_set: str | None = None, force: bool = False, reason: str | None = None,
                     metric: str | None = None, actor: str | None = None) -> dict:
    """The gate's ``promote``, then, whatever its outcome, the version's card refreshed (it shows the last gate
    result, refusals included) and the ``models.promote`` audit entry by ``actor`` (default the local user).
    ``tunelab models promote`` and the dashboard's Promote button both go through here."""
    result = {}
    try:
        result = promote(registry, name, version, alias, gate, margin, eval_set, force, reason, metric)
    finally:
        try:
            _refresh_card(registry, name, version)
        except TunelabError:
            pass  # no such model or version: promote's own error says so
        outcome = ("forced" if result.get("forced") else "promoted") if result else "not promoted"
        record("models.promote", actor, registry=registry, checkpoint=True, model=name, version=version, alias=alias,
               gate=gate, outcome=outcome, eval_set=(result.get("gate") or {}).get("eval_set"))
    return result


def _refresh_card(registry, name: str, version: int) -> None:
    """The card shows the last gate result, refused ones included."""
    with registry.session() as session:
        _, found = resolve(session, f"{name}@{version}")
        write_card(session, found)


def models_rollback(url: str | None, name: str, alias: str, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        came_from, target = rollback(session, name, alias)
        result = {"name": name, "alias": alias, "from": came_from.version, "to": target.version,
                  "time": datetime.now(timezone.utc).isoformat()}
    record("models.rollback", registry=registry, checkpoint=True, model=name, alias=alias,
           from_version=result["from"], to_version=result["to"])
    emit(result, f"rolled back {name}@{alias}: v{result['from']} -> v{result['to']}", as_json)


# ---- lineage and datasets

def lineage_show(url: str | None, ref: str, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        graph = lineage(session, ref)
    emit(graph, format_lineage(graph), as_json)


def datasets_list(url: str | None, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        rows = session.execute(select(Dataset, DatasetVersion).join(DatasetVersion, DatasetVersion.dataset_id ==
                                                                    Dataset.id)
                               .order_by(Dataset.name, DatasetVersion.version)).all()
        data = [{"dataset": d.name, "version": v.version, "hash": v.content_hash, "rows": v.rows,
                 "origin": v.origin, "kind": v.kind, "path": v.path, "created": v.created.isoformat(),
                 "runs": len(session.scalars(select(Run.id).where(Run.dataset_version_id == v.id)).all())}
                for d, v in rows]
    table = text_table(["dataset", "version", "hash", "train", "val", "test", "origin", "runs"],
                       [[d["dataset"], f"v{d['version']}", d["hash"][:12], d["rows"].get("train"),
                         d["rows"].get("val"), d["rows"].get("test"), d["origin"], d["runs"]] for d in data])
    emit(data, table if data else "no datasets recorded yet (tunelab data prepare and tunelab train record them)",
         as_json)


def datasets_show(url: str | None, ref: str, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        graph = lineage(session, f"dataset:{ref}")
        info = {"versions": [{"dataset": session.get(Dataset, v.dataset_id).name, "version": v.version,
                              "hash": v.content_hash, "rows": v.rows, "kind": v.kind, "origin": v.origin,
                              "path": v.path, "settings": v.settings, "report": v.report}
                             for v in datasets_named(session, ref)], "lineage": graph}
    lines = []
    for v in info["versions"]:
        report = v["report"] or {}
        lines.append(f"{v['dataset']} v{v['version']}  {v['hash'][:12]}  {v['kind'] or ''}  from {v['origin']}  "
                     f"{v['path'] or ''}")
        counts = [f"rows {v['rows']}"] + [f"{key.replace('_', ' ')} {report[key]}"
                                          for key in ("quarantined", "near_duplicates") if key in report]
        lines.append("  " + ", ".join(counts))
        if v["settings"]:
            lines.append("  settings " + json.dumps(v["settings"], default=str))
    lines.append(format_lineage(graph))
    emit(info, "\n".join(lines), as_json)


# ---- API keys

def keys_create(url: str | None, name: str, role: str, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        row, key = create_key(session, name, role)
        result = {"id": row.id, "name": row.name, "role": row.role, "key": key}
    record("keys.create", registry=registry, key=row.id, role=row.role)
    emit(result, f"{key}\n(key {row.id} for {row.name}, role {row.role}: shown once and stored only as a hash; "
                 f"keep it in a secret store)", as_json)


def keys_list(url: str | None, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        keys = list_keys(session)
    rows = [[k["id"], k["name"], k["role"], k["created"][:19], (k["last_used"] or "-")[:19],
             f"revoked {k['revoked'][:19]}" if k["revoked"] else "live"] for k in keys]
    emit(keys, text_table(["id", "name", "role", "created", "last used", "state"], rows) if keys
         else "no API keys yet (tunelab keys create --name NAME [--role inference|viewer|trainer|admin])", as_json)


def keys_revoke(url: str | None, key_id: str, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        row = revoke_key(session, key_id)
        result = {"id": row.id, "name": row.name, "revoked": row.revoked.isoformat()}
    record("keys.revoke", registry=registry, key=row.id)
    emit(result, f"revoked key {result['id']} ({result['name']})", as_json)


# ---- A/B tests

def ab_list(url: str | None, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        tests = list_ab_tests(session)
    rows = [[t["name"], _weights(t["arms"]), "running" if t["active"] else f"ended {t['ended'][:19]}",
             t["requests"], t["created"][:19]] for t in tests]
    emit(tests, text_table(["name", "arms", "state", "requests", "started"], rows) if tests
         else "no A/B tests yet (an admin starts one through the server)", as_json)


def _weights(arms: dict) -> str:
    return ", ".join(f"{arm} {weight:.0%}" for arm, weight in arms.items())


def ab_show(url: str | None, name: str, as_json: bool) -> None:
    registry = open_registry(url)
    with registry.session() as session:
        report = ab_report(session, name)
    emit(report, format_ab_report(report), as_json)


def format_ab_report(report: dict) -> str:
    state = "running" if report["active"] else f"ended {report['ended'][:19]}"
    lines = [f"A/B test {report['name']}  {state}, started {report['created'][:19]}"]
    rows = [[arm, f"{a['weight']:.0%}", a["requests"], _ms(a["mean_latency_ms"]), _ms(a["p50_latency_ms"]),
             _ms(a["p95_latency_ms"]), a["completion_tokens"], a["feedback"], _share(a["feedback_rate"]),
             f"{_share(a['positive_rate'])} of {a['rated']}",
             "-" if a["mean_score"] is None else f"{a['mean_score']:.2f} of {a['scored']}"]
            for arm, a in report["arms"].items()]
    lines.append(text_table(["arm", "weight", "requests", "mean ms", "p50 ms", "p95 ms", "tokens out", "feedback",
                             "feedback rate", "positive", "mean score"], rows))
    for label, test in (("positive feedback", report["tests"]["positive"]), ("scores", report["tests"]["score"])):
        if test:
            p_value = "-" if test["p_value"] is None else f"{test['p_value']:.3g}"
            lines.append(f"{label}: {test['method']} p = {p_value}")
    difference = report["difference"]
    if difference:
        low, high = difference["interval"]
        lines.append(f"difference in positive rate ({difference['of']}): {_signed(difference['positive_rate'])}, "
                     f"{difference['confidence']:.0%} interval {_signed(low)} to {_signed(high)}")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _share(value) -> str:
    return "-" if value is None else f"{value:.0%}"
