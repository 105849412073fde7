"""Named models: versions (a run's adapter or full model), tags and aliases.

A reference is ``NAME`` (the newest version), ``NAME@3`` (version 3) or ``NAME@production`` (whatever
the alias points at). Aliases replace stages: any name works, each points at one version, and every
move is kept in ``alias_events`` so a rollback knows where to go back to.
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunelab.errors import NotFoundError, TunelabError
from tunelab.registry.db import get_or_create
from tunelab.registry.ingest import effective_status, headline
from tunelab.registry.queries import find_run
from tunelab.registry.schema import Alias, AliasEvent, Artifact, Model, ModelVersion, Run
from tunelab.runs.folder import RunFolder

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise TunelabError(f"model name {name!r}: use letters, digits, '.', '_' or '-', starting with a letter or "
                           f"digit")


def check_alias(alias: str) -> None:
    if not ALIAS_PATTERN.match(alias):
        raise TunelabError(f"alias {alias!r}: use lower-case letters, digits, '_' or '-', starting with a letter "
                           f"(a number would read as a version)")


def get_model(session: Session, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        known = session.scalars(select(Model.name).order_by(Model.name)).all()
        hint = f"; registered models: {', '.join(known)}" if known else "; register one with tunelab models register"
        raise NotFoundError(f"no model named {name!r}{hint}")
    return model


def resolve(session: Session, ref: str) -> tuple[Model, ModelVersion]:
    """The model and version that ``NAME``, ``NAME@VERSION`` or ``NAME@ALIAS`` names."""
    name, _, pointer = ref.partition("@")
    model = get_model(session, name)
    if not pointer:
        version = session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                  .order_by(ModelVersion.version.desc())).first()
        if version is None:
            raise NotFoundError(f"model {name!r} has no versions yet")
        return model, version
    if pointer.isdigit():
        return model, get_version(session, model, int(pointer))
    alias = session.get(Alias, (model.id, pointer))
    if alias is None:
        raise NotFoundError(f"model {name!r} has no alias {pointer!r}; its aliases: "
                           f"{', '.join(aliases_of(session, model)) or 'none'}")
    return model, session.get(ModelVersion, alias.version_id)


def get_version(session: Session, model: Model, number: int) -> ModelVersion:
    version = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                        ModelVersion.version == number))
    if version is None:
        raise NotFoundError(f"model {model.name!r} has no version {number}")
    return version


def aliases_of(session: Session, model: Model) -> dict[str, int]:
    """alias -> version number."""
    rows = session.execute(select(Alias.alias, ModelVersion.version).join(ModelVersion, Alias.version_id ==
                                                                          ModelVersion.id)
                           .where(Alias.model_id == model.id).order_by(Alias.alias)).all()
    return dict(rows)


def weights_digest(session: Session, run: Run, prefix: str) -> str:
    """sha256 over the weights folder's files (path and checksum), from the run's recorded artifacts."""
    inside = prefix + "/"
    artifacts = session.scalars(select(Artifact).where(Artifact.run_id == run.id, Artifact.path.startswith(inside))
                                .order_by(Artifact.path)).all()
    if not artifacts:  # a run recorded before artifacts.json existed: checksum the folder now
        items = [(a["path"], a["sha256"]) for a in RunFolder(run.path).artifacts() if a["path"].startswith(inside)]
    else:
        items = [(a.path, a.sha256) for a in artifacts]
    return hashlib.sha256("\n".join(f"{p} {h}" for p, h in items).encode()).hexdigest()


def register(session: Session, run_ref: str, name: str, tags: dict | None = None) -> tuple[ModelVersion, bool]:
    """A new version of model ``name`` (created on first use) from a finished run; registering the same
    run under the same name again returns its existing version. Returns (version, created)."""
    check_name(name)
    run = find_run(session, run_ref)
    if run.tainted:
        raise TunelabError(f"run {run.name} ({run.id}) is tainted: it learned from rows that erasure {run.tainted} "
                           f"removed; retrain it without them before registering it")
    status, reason = effective_status(run)
    if status != "finished":
        raise TunelabError(f"run {run.name} ({run.id}) is {status}{f' ({reason})' if reason else ''}; only a finished "
                           f"run can be registered")
    weights = RunFolder(run.path).weights_dir
    model = get_or_create(session, Model, name=name)
    existing = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                         ModelVersion.run_id == run.id))
    if existing is not None:
        return existing, False
    latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id))
    version = ModelVersion(model_id=model.id, version=(latest or 0) + 1, run_id=run.id, artifact_path=str(weights),
                           artifact_sha256=weights_digest(session, run, weights.name), tags=tags or {})
    session.add(version)
    session.flush()
    return version, True


def move_alias(session: Session, model: Model, alias: str, version: ModelVersion, action: str,
               gate: dict | None = None, forced: bool = False, reason: str | None = None) -> AliasEvent:
    """Point ``alias`` at ``version`` and record the move (action promote or rollback)."""
    check_alias(alias)
    current = session.get(Alias, (model.id, alias))
    previous = current.version_id if current else None
    if current is None:
        session.add(Alias(model_id=model.id, alias=alias, version_id=version.id))
    else:
        current.version_id = version.id
    event = AliasEvent(model_id=model.id, alias=alias, action=action, version_id=version.id,
                       previous_version_id=previous, forced=forced, reason=reason, gate=gate)
    session.add(event)
    session.flush()
    return event


def record_refusal(session: Session, model: Model, alias: str, version: ModelVersion, gate: dict) -> None:
    current = session.get(Alias, (model.id, alias))
    session.add(AliasEvent(model_id=model.id, alias=alias, action="refused", version_id=version.id,
                           previous_version_id=current.version_id if current else None, gate=gate))


def rollback(session: Session, name: str, alias: str = "production") -> tuple[ModelVersion, ModelVersion]:
    """Point ``alias`` back at the version that held it before the current holder was promoted; rolling
    back again walks further back through the promotions. Returns (from, to)."""
    model = get_model(session, name)
    current = session.get(Alias, (model.id, alias))
    if current is None:
        raise TunelabError(f"model {name!r} has no alias {alias!r} to roll back")
    promoted = session.scalars(select(AliasEvent).where(AliasEvent.model_id == model.id, AliasEvent.alias == alias,
                                                        AliasEvent.action == "promote",
                                                        AliasEvent.version_id == current.version_id)
                               .order_by(AliasEvent.id.desc())).first()
    came_from = session.get(ModelVersion, current.version_id)
    if promoted is None or promoted.previous_version_id is None:
        raise TunelabError(f"{name}@{alias} (v{came_from.version}) has no earlier version to go back to")
    target = session.get(ModelVersion, promoted.previous_version_id)
    move_alias(session, model, alias, target, "rollback", reason=f"rollback from v{came_from.version}")
    return came_from, target


def history(session: Session, model: Model) -> list[dict]:
    events = session.scalars(select(AliasEvent).where(AliasEvent.model_id == model.id).order_by(AliasEvent.id)).all()
    numbers = dict(session.execute(select(ModelVersion.id, ModelVersion.version)
                                   .where(ModelVersion.model_id == model.id)).all())
    return [{"time": e.created.isoformat(), "alias": e.alias, "action": e.action,
             "version": numbers.get(e.version_id), "previous": numbers.get(e.previous_version_id),
             "forced": e.forced, "reason": e.reason, "gate": e.gate} for e in events]


def list_models(session: Session) -> list[dict]:
    out = []
    for model in session.scalars(select(Model).order_by(Model.name)).all():
        versions = session.scalar(select(func.count()).select_from(ModelVersion)
                                  .where(ModelVersion.model_id == model.id))
        out.append({"name": model.name, "versions": versions, "aliases": aliases_of(session, model),
                    "created": model.created.isoformat()})
    return out


def version_summary(session: Session, version: ModelVersion) -> dict:
    run = session.get(Run, version.run_id)
    return {"version": version.version, "run": run.name, "run_id": run.id, "artifact": version.artifact_path,
            "artifact_sha256": version.artifact_sha256, "tags": version.tags, "created": version.created.isoformat(),
            "metrics": headline((run.metrics or {}).get("tuned") or {}),
            "last_gate": version.last_gate}


def show_model(session: Session, name: str) -> dict:
    model = get_model(session, name)
    versions = session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                               .order_by(ModelVersion.version)).all()
    return {"name": model.name, "aliases": aliases_of(session, model),
            "versions": [version_summary(session, v) for v in versions], "history": history(session, model)}
