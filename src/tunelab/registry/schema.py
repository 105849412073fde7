"""The registry's tables (SQLAlchemy 2). Alembic migrations in ``migrations/`` create them; a test checks
that the migrations and these models agree.

The run folder stays the source of artifacts: the registry indexes runs, their metric series,
artifact checksums, datasets with per-row hashes, evaluations with per-item results, and named models
with versions and aliases. It never copies weights. The server adds what it answered, the feedback on
those answers, and its A/B tests. Blind human review (``review.py``) adds its pairs of answers and the
preferences given. Columns typed Sealed* hold user content and are encrypted when a master key is set
(``sealed.py``).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tunelab.registry.sealed import SealedJSON, SealedText


def now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    """A named dataset (a prepared folder's name, or the stem of a training file)."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class DatasetVersion(Base):
    """One content of a dataset: its train/val/test rows, identified by their content hash."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str | None] = mapped_column(String(20))  # chat, labeled, text
    rows: Mapped[dict] = mapped_column(JSON)  # split -> row count
    path: Mapped[str | None] = mapped_column(Text)  # the prepared folder, or the files a run read
    origin: Mapped[str] = mapped_column(String(20))  # "prepare" (tunelab data prepare) or "run" (a run's splits)
    settings: Mapped[dict | None] = mapped_column(JSON)  # the prepare settings, or the run's data section
    report: Mapped[dict | None] = mapped_column(JSON)  # the data report summary
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    erased: Mapped[str | None] = mapped_column(String(32))  # the erasure that removed rows from this content


class DatasetRow(Base):
    """The manifest: which row (by its hash) sits in which split of a dataset version."""

    __tablename__ = "dataset_rows"
    __table_args__ = (Index("ix_dataset_rows_hash", "row_hash"),)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(8), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    row_hash: Mapped[str] = mapped_column(String(64))


class Run(Base):
    """A training run, written while it goes: status, config, environment, final metrics."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(String(12))  # running, finished, failed, killed
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    started: Mapped[float | None] = mapped_column(Float)
    ended: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    last_step: Mapped[int | None] = mapped_column(Integer)
    task: Mapped[str | None] = mapped_column(String(20))
    method: Mapped[str | None] = mapped_column(String(20))
    base_model: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[dict | None] = mapped_column(JSON)
    packages: Mapped[dict | None] = mapped_column(JSON)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    hardware: Mapped[dict | None] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    sweep: Mapped[str | None] = mapped_column(String(200))  # the sweep a trial belongs to
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    tainted: Mapped[str | None] = mapped_column(String(32))  # the erasure whose rows it trained or evaluated on
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class MetricPoint(Base):
    """One logged value of a run's metric series (train_log.jsonl)."""

    __tablename__ = "metric_points"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    """A file of a run folder with its checksum; the file itself stays in the folder."""

    __tablename__ = "artifacts"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(500), primary_key=True)
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))


class Evaluation(Base):
    """A model scored on an eval set (by content hash), with per-item results in EvalItem."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_lookup", "model_key", "eval_set_hash", "code_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_key: Mapped[str] = mapped_column(String(200))  # "run:<id>" (its tuned weights) or "base:<model>"
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    arm: Mapped[str] = mapped_column(String(20))  # tuned or base
    eval_set_hash: Mapped[str] = mapped_column(String(64))
    eval_set_path: Mapped[str | None] = mapped_column(Text)
    code_version: Mapped[str] = mapped_column(String(100))
    metrics: Mapped[dict] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class EvalItem(Base):
    __tablename__ = "eval_items"
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_hash: Mapped[str] = mapped_column(String(64), index=True)
    prediction: Mapped[str | None] = mapped_column(SealedText)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)  # per-item token F1 for free text


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ModelVersion(Base):
    """A run's adapter or full model under a model name."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    artifact_path: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))  # over the weights folder's files and checksums
    tags: Mapped[dict] = mapped_column(JSON, default=dict)
    card: Mapped[str | None] = mapped_column(SealedText)  # quotes example rows
    last_gate: Mapped[dict | None] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    tainted: Mapped[str | None] = mapped_column(String(32))  # the erasure that tainted its run


class Alias(Base):
    """A movable name (production, candidate, ...) pointing at one version of a model."""

    __tablename__ = "aliases"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class AliasEvent(Base):
    """Every move of an alias: promotions with their gate result, forced ones with the reason, rollbacks."""

    __tablename__ = "alias_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # promote, refused, rollback
    version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    gate: Mapped[dict | None] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ApiKey(Base):
    """A key for the server's API: only an HMAC-SHA256 of it is kept; the key is shown once, at creation."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # the key's public part, shown in lists
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    digest: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256 of the whole key under the pepper
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    revoked: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ServedResponse(Base):
    """One answer the server gave: what was asked, by whom (as a salted hash), which model answered and how fast.
    Feedback and A/B reports hang off it; ``user_hash`` finds one person's rows to export or erase them."""

    __tablename__ = "served_responses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the OpenAI id, e.g. chatcmpl-...
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    endpoint: Mapped[str] = mapped_column(String(20))  # chat or completion
    model: Mapped[str] = mapped_column(String(200))  # the name the client asked for
    served_model: Mapped[str] = mapped_column(String(200))  # the base or adapter that answered
    model_version: Mapped[str | None] = mapped_column(String(200))  # support@3, run:<id> or base:<model>
    ab_test: Mapped[str | None] = mapped_column(String(200), index=True)
    arm: Mapped[str | None] = mapped_column(String(200))
    key_id: Mapped[str | None] = mapped_column(String(16))
    user_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    prompt: Mapped[dict | list | str] = mapped_column(SealedJSON)  # the messages list or the prompt string
    response: Mapped[list] = mapped_column(SealedJSON)  # one text per choice
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    finish_reasons: Mapped[list] = mapped_column(JSON)


class Feedback(Base):
    """A user's judgement of a served response: thumbs up/down, a 1-5 score, a corrected answer, a comment."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("served_responses.id", ondelete="CASCADE"), index=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    rating: Mapped[str | None] = mapped_column(String(8))  # up or down
    score: Mapped[int | None] = mapped_column(Integer)  # 1 to 5
    corrected: Mapped[str | None] = mapped_column(SealedText)
    comment: Mapped[str | None] = mapped_column(SealedText)
    key_id: Mapped[str | None] = mapped_column(String(16))
    user_hash: Mapped[str | None] = mapped_column(String(64), index=True)


class AbTest(Base):
    """A named split of traffic between models (arm -> weight, summing to 1); re-starting an ended one replaces it."""

    __tablename__ = "ab_tests"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    arms: Mapped[dict] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    ended: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str | None] = mapped_column(String(16))  # the admin key's id


class AuditCheckpoint(Base):
    """A signed (length, head hash, time) of an audit log (security/audit.py): HMAC-SHA256 under the audit key,
    kept apart from the log so that a log cut short or rewritten no longer matches it."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (Index("ix_audit_checkpoints_log", "log", "length"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # "checkpoint 3" in messages
    log: Mapped[str] = mapped_column(String(500))  # host:path of the log file
    length: Mapped[int] = mapped_column(Integer)  # entries covered
    head: Mapped[str] = mapped_column(String(64))  # hash of entry length - 1
    signed: Mapped[str] = mapped_column(String(40))  # UTC ISO time, exactly as signed
    mac: Mapped[str] = mapped_column(String(64))


class Erasure(Base):
    """One ``tunelab data erase``: what was asked (as a hash), when, and its receipt (hashes and counts only)."""

    __tablename__ = "erasures"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    selector: Mapped[str] = mapped_column(String(64))  # sha256 of kind:field=value
    receipt: Mapped[dict] = mapped_column(JSON)


class ReviewPair(Base):
    """One blind review task: two models' answers to one held-out prompt, shown in a random order (``left`` names
    the side shown on the left). The id is random, so a reviewer cannot guess other pairs."""

    __tablename__ = "review_pairs"
    __table_args__ = (Index("ix_review_pairs_models", "first_model", "second_model"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    first_model: Mapped[str] = mapped_column(String(200))  # run:<id>, base:<model> or name@version
    second_model: Mapped[str] = mapped_column(String(200))
    item_hash: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(SealedText)
    first_answer: Mapped[str] = mapped_column(SealedText)
    second_answer: Mapped[str] = mapped_column(SealedText)
    left: Mapped[str] = mapped_column(String(8))  # first or second: the side shown on the left
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    reviewer: Mapped[str | None] = mapped_column(String(200))  # the key id (or name) it was handed to
    decided: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReviewPreference(Base):
    """A reviewer's choice on a review pair, resolved to the side it preferred: a preference pair (prompt, chosen,
    rejected) for preference tuning. On a tie, chosen and rejected hold the first and second answers."""

    __tablename__ = "review_preferences"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_id: Mapped[str] = mapped_column(ForeignKey("review_pairs.id", ondelete="CASCADE"), index=True, unique=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    choice: Mapped[str] = mapped_column(String(8))  # left, right or tie, as shown
    winner: Mapped[str] = mapped_column(String(8))  # first, second or tie
    first_model: Mapped[str] = mapped_column(String(200))
    second_model: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(SealedText)
    chosen: Mapped[str] = mapped_column(SealedText)
    rejected: Mapped[str] = mapped_column(SealedText)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
