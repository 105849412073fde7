"""``tunelab models promote``: move an alias only when the challenger is shown better on the same items.

The challenger and the alias's current holder (or, for a first promotion, the base model) are compared
on the same held-out items: the holder's registered eval set, or ``--eval-set FILE``. Each side's
per-item results come from the registry when an evaluation of the same model, items and code version
is stored, and are scored now otherwise (and then stored). Label metrics use an exact McNemar test,
free text a paired bootstrap of token F1 (registry/stats.py). Before any scoring the gate refuses an
eval set that overlaps the challenger's training rows, by row hash or near-duplicate (MinHash).

Every outcome is recorded: a refusal as an alias event with the evidence, a forced promotion with its
reason, and the last result on the version, where its model card shows it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np
from pydantic import ValidationError
from sqlalchemy import select

from tunelab.config import RunConfig
from tunelab.data.clean import input_text
from tunelab.data.dataset import load_splits
from tunelab.data.dedup import DEFAULT_THRESHOLD, MinHasher, find_leaks
from tunelab.data.formats import common_kind, read_records
from tunelab.data.records import Record
from tunelab.data.split import row_hash
from tunelab.errors import TunelabError
from tunelab.eval.cli_eval import evaluate_one
from tunelab.eval.ensemble import inputs_and_references
from tunelab.eval.metrics import item_scores
from tunelab.eval.suite import prediction_rows
from tunelab.registry.db import Registry
from tunelab.registry.ingest import (base_key, eval_code_version, eval_set_hash, headline, per_item, store_evaluation,
                                     tuned_key)
from tunelab.registry.models import check_alias, get_model, move_alias, record_refusal, resolve
from tunelab.registry.queries import is_right, items_of, latest_evaluation
from tunelab.registry.schema import Alias, DatasetRow, ModelVersion, Run
from tunelab.registry.stats import GATES, GateDecision, decide, mcnemar_exact, paired_bootstrap
from tunelab.runs.folder import RunFolder


LABEL_METRICS = ("accuracy", "exact_match")  # right or wrong per item: exact McNemar test
SCORE_METRICS = ("f1", "rouge_l")  # a score per item: paired bootstrap
GATE_METRICS = LABEL_METRICS + SCORE_METRICS


@dataclass
class Side:
    """One side of the comparison: which model, under which key its evaluations are stored."""

    label: str  # as the message names it: "support v3", "support v2 (production)", "the base model ..."
    key: str
    arm: str  # tuned (a run's weights) or base
    run: Run
    code_version: str


@dataclass
class EvalSet:
    records: list[Record]
    path: str
    items: list[str]

    @property
    def hash(self) -> str:
        return eval_set_hash(self.items)


def promote(registry: Registry, name: str, version: int, alias: str = "production", gate: str = "better",
            margin: float = 0.0, eval_set: str | None = None, force: bool = False, reason: str | None = None,
            metric: str | None = None) -> dict:
    """Gate and move ``name@alias`` to ``version``; raises TunelabError with the gate's paragraph when refused."""
    _check_request(alias, gate, margin, metric, force, reason)
    with registry.session() as session:
        model, challenger_version = resolve(session, f"{name}@{version}")
        holder_version = _holder(session, model.id, alias)
        if holder_version is not None and holder_version.id == challenger_version.id:
            raise TunelabError(f"{name}@{alias} already is version {version}")
        if challenger_version.tainted:
            raise TunelabError(f"{name}@{version} is tainted: it learned from rows that erasure "
                               f"{challenger_version.tainted} removed; retrain it without them before promoting")
        challenger = _tuned_side(session, f"{name} v{version}", challenger_version)
        holder = (_tuned_side(session, f"{name} v{holder_version.version} ({alias})", holder_version)
                  if holder_version else _base_side(challenger))
        items = _eval_set(eval_set, holder if holder_version else challenger)
        train_rows = set(session.scalars(select(DatasetRow.row_hash).where(
            DatasetRow.version_id == challenger.run.dataset_version_id, DatasetRow.split == "train")).all())
    leak = leak_check(items, train_rows, challenger.run)
    if leak["exact"] or leak["near"]:
        evidence = {"passed": False, "gate": gate, "margin": margin, "eval_set": items.hash, "leak": leak}
        return _refuse_or_force(registry, name, version, alias, evidence, _leak_message(leak, items, challenger),
                                force, reason)
    decision = compare(registry, challenger, holder, items, gate, margin, metric)
    if holder_version is None:  # the first holder of an alias must beat the model it was tuned from
        decision = replace(decision, message=f"No version holds {name}@{alias} yet, so {challenger.label} is "
                                             f"compared with its base model. {decision.message}")
    evidence = decision.as_dict() | {"eval_set": items.hash, "eval_set_path": items.path, "leak": leak}
    if not decision.passed:
        return _refuse_or_force(registry, name, version, alias, evidence, decision.message, force, reason)
    with registry.session() as session:
        model = get_model(session, name)
        target = session.get(ModelVersion, challenger_version.id)
        move_alias(session, model, alias, target, "promote", gate=evidence)
        target.last_gate = evidence | {"alias": alias, "forced": False}
    return {"promoted": True, "alias": alias, "version": version, "gate": evidence, "message": decision.message}


def _check_request(alias: str, gate: str, margin: float, metric: str | None, force: bool, reason: str | None) -> None:
    """Every problem with the request itself, before anything is loaded or scored."""
    check_alias(alias)
    problems = []
    if gate not in GATES:
        problems.append(f"--gate {gate}: use one of {', '.join(GATES)}")
    if not margin >= 0:
        problems.append(f"--margin {margin}: a margin is how much worse the challenger may be, 0 or more")
    elif margin and gate == "better":
        problems.append("--margin applies to --gate non-inferior; --gate better needs the interval above 0")
    if metric is not None and metric not in GATE_METRICS:
        problems.append(f"--metric {metric}: the gate tests one of {', '.join(GATE_METRICS)}")
    if force and not (reason and reason.strip()):
        problems.append("--force needs --reason TEXT: the reason is kept with the promotion")
    if problems:
        raise TunelabError("; ".join(problems))


def _holder(session, model_id: int, alias: str) -> ModelVersion | None:
    current = session.get(Alias, (model_id, alias))
    return session.get(ModelVersion, current.version_id) if current else None


def _tuned_side(session, label: str, version: ModelVersion) -> Side:
    run = session.get(Run, version.run_id)
    return Side(label, tuned_key(run.id), "tuned", run, eval_code_version(run.config or {}))


def _base_side(challenger: Side) -> Side:
    base = challenger.run.base_model
    return Side(f"the base model {base}", base_key(str(base)), "base", challenger.run, challenger.code_version)


def _eval_set(path: str | None, owner: Side) -> EvalSet:
    """``--eval-set FILE``, else the eval set registered with ``owner``'s run (its eval_set.jsonl)."""
    if path is None:
        registered = RunFolder(owner.run.path).eval_set_path
        if not registered.is_file():
            raise TunelabError(f"run {owner.run.name} has no eval_set.jsonl (it finished before tunelab recorded "
                               f"eval sets, or its folder moved); pass --eval-set FILE")
        path = str(registered)
    records, _ = read_records(path, on_error="quarantine")
    if not records:
        raise TunelabError(f"{path}: no usable rows to evaluate on")
    return EvalSet(records, str(path), [row_hash(r) for r in records])


def leak_check(items: EvalSet, train_rows: set[str], run: Run, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Eval items that are training rows of ``run`` (by row hash), and those whose input near-duplicates a
    training row's input (MinHash at ``threshold``, as ``tunelab data prepare`` checks its splits)."""
    exact = sorted({h for h in items.items if h in train_rows})
    result: dict = {"exact": exact, "near": [], "threshold": threshold}
    try:
        config = RunConfig.model_validate(run.config)
        train = load_splits(config.data, config.data_seed).train
    except (TunelabError, ValidationError, OSError) as exc:
        result["near_skipped"] = f"the training files could not be read again ({str(exc).splitlines()[0]})"
        return result
    texts = [input_text(r) for r in train] + [input_text(r) for r in items.records]
    sketches = MinHasher(threshold).sketch(texts)
    n = len(train)
    leaks = find_leaks(sketches, np.arange(n), np.arange(n, len(texts)), threshold)
    result["near"] = sorted({items.items[held] for held, _ in leaks} - set(exact))
    return result


def _leak_message(leak: dict, items: EvalSet, challenger: Side) -> str:
    exact, near = len(leak["exact"]), len(leak["near"])
    return (f"Refused: the eval set {items.path} overlaps the training data of {challenger.label}: {exact} of its "
            f"{len(items.items)} items are training rows and {near} more near-duplicate a training row's input "
            f"(similarity >= {leak['threshold']}). Scores on items the model was trained on say nothing about new "
            f"inputs. Evaluate on held-out rows the challenger never saw (pass --eval-set FILE), retrain without "
            f"them, or override with --force --reason TEXT if you accept the risk.")


def compare(registry: Registry, challenger: Side, holder: Side, items: EvalSet, gate: str, margin: float,
            metric: str | None = None) -> GateDecision:
    """Both sides' per-item results on the eval set (stored or scored now) and the paired test on ``metric``
    (default: accuracy where answers are labels, else token F1)."""
    results = {side.label: _results(registry, side, items) for side in (challenger, holder)}
    first, second = results[challenger.label], results[holder.label]
    shared = [h for h in dict.fromkeys(items.items) if h in first and h in second]
    if not shared:
        raise TunelabError("the two models share no scored items on the eval set; pass --eval-set FILE")
    labels = all(first[h].correct is not None and second[h].correct is not None for h in shared)
    metric = metric or ("accuracy" if labels else "f1")  # a metric given was checked by _check_request
    if metric == "accuracy" and labels:
        result = mcnemar_exact([is_right(first[h]) for h in shared], [is_right(second[h]) for h in shared],
                               metric="accuracy")
    else:
        references = _references(items)
        refs = [references[h] for h in shared]
        a = item_scores(metric, refs, [first[h].prediction or "" for h in shared])
        b = item_scores(metric, refs, [second[h].prediction or "" for h in shared])
        if metric in LABEL_METRICS:
            result = mcnemar_exact([x == 1.0 for x in a], [x == 1.0 for x in b], metric=metric)
        else:
            result = paired_bootstrap(a, b, metric=metric)
    return decide(result, gate=gate, margin=margin, challenger=challenger.label, holder=holder.label)


def _references(items: EvalSet) -> dict[str, str]:
    """Each eval item's reference answer (its label, or the last assistant turn)."""
    _, references = inputs_and_references(items.records)
    return dict(zip(items.items, references))


def _results(registry: Registry, side: Side, items: EvalSet) -> dict:
    with registry.session() as session:
        stored = latest_evaluation(session, side.key, side.arm, items.hash, side.code_version)
        if stored is not None:
            return items_of(session, stored)
    print(f"gate: scoring {side.label} on {len(items.records)} items of {items.path}", file=sys.stderr, flush=True)
    metrics, task, arms = evaluate_one(side.run.path, items.records, common_kind(items.records),
                                       side.arm == "base", items.path)
    rows = prediction_rows(task, arms)
    keys = {"tuned": tuned_key(side.run.id), "base": base_key(str(side.run.base_model))}
    with registry.session() as session:
        stored = {arm: store_evaluation(session, keys[arm], side.run.id, arm, per_item(rows, arm),
                                        headline(metrics.get(arm) or {}), side.code_version, items.path)
                  for arm in arms}  # scoring the base arm scored the run's own tuned arm too: keep both
        return items_of(session, stored[side.arm])


def _refuse_or_force(registry: Registry, name: str, version: int, alias: str, evidence: dict, message: str,
                     force: bool, reason: str | None) -> dict:
    evidence = evidence | {"message": message, "alias": alias}
    with registry.session() as session:
        model, target = resolve(session, f"{name}@{version}")
        if force:
            move_alias(session, model, alias, target, "promote", gate=evidence, forced=True, reason=reason)
            target.last_gate = evidence | {"forced": True, "reason": reason, "passed": False}
        else:
            record_refusal(session, model, alias, target, evidence)
            target.last_gate = evidence | {"forced": False, "passed": False}
    if force:
        return {"promoted": True, "forced": True, "reason": reason, "alias": alias, "version": version,
                "gate": evidence, "message": message}
    raise TunelabError(message)

