"""A run folder: the one place that knows what ``tunelab train`` writes and how to read it back.

Training, evaluation, export, distillation teachers, ensembles and (next) the registry, the server and
the dashboard all go through ``RunFolder``, so the layout is spelled out once:

    config.yaml         the fully resolved config
    status.json         running / finished / failed / killed, with the process id and times
    metrics.json        base vs tuned (and train, data) figures
    predictions.jsonl   per-example predictions of every arm, each with its item (row hash)
    eval_set.jsonl      the evaluated rows, in the order of predictions.jsonl
    data_manifest.json  the row hash of every train/val/test row the run read (for lineage)
    adapter/ or model/  peft adapter, or full weights (method full or freeze), with the tokenizer
    artifacts.json      sha256 and size of every file above, written when the run finishes
    report.md, training_curve.png, train_log.jsonl, data_summary.json, quarantine.jsonl, checkpoints/
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json, read_json, read_jsonl
from tunelab.modeling.methods import WHOLE_MODEL_METHODS
from tunelab.security import files as sealed

STATUSES = ("running", "finished", "failed", "killed")
ARTIFACT_FILES = ("config.yaml", "metrics.json", "predictions.jsonl", "eval_set.jsonl", "report.md",
                  "training_curve.png", "train_log.jsonl", "data_summary.json", "data_manifest.json",
                  "quarantine.jsonl")
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class RunStatus:
    status: str  # one of STATUSES
    pid: int | None = None
    host: str | None = None
    started: float | None = None
    ended: float | None = None
    reason: str | None = None  # why a run failed or was killed
    last_step: int | None = None  # the last logged step of a run that did not finish


class RunFolder:
    """Paths, config, metrics, artifacts with checksums, and status of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- paths
    config_path = property(lambda self: self.path / "config.yaml")
    status_path = property(lambda self: self.path / "status.json")
    metrics_path = property(lambda self: self.path / "metrics.json")
    predictions_path = property(lambda self: self.path / "predictions.jsonl")
    eval_set_path = property(lambda self: self.path / "eval_set.jsonl")
    data_manifest_path = property(lambda self: self.path / "data_manifest.json")
    artifacts_path = property(lambda self: self.path / "artifacts.json")
    report_path = property(lambda self: self.path / "report.md")
    curve_path = property(lambda self: self.path / "training_curve.png")
    train_log_path = property(lambda self: self.path / "train_log.jsonl")
    data_summary_path = property(lambda self: self.path / "data_summary.json")
    quarantine_path = property(lambda self: self.path / "quarantine.jsonl")
    curriculum_path = property(lambda self: self.path / "curriculum.json")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")

    @staticmethod
    def is_run(path: str | Path) -> bool:
        return (Path(path).expanduser() / "config.yaml").is_file()

    def weights_dir_for(self, method: str) -> Path:
        """Where a run of ``method`` saves its weights: model/ for whole-model methods, else adapter/."""
        return self.path / ("model" if method in WHOLE_MODEL_METHODS else "adapter")

    @property
    def weights_dir(self) -> Path:
        """The saved adapter/ or model/ of a finished run."""
        for name in ("adapter", "model"):
            if (self.path / name).is_dir():
                return self.path / name
        raise TunelabError(f"run folder {self.path} has no adapter/ or model/; did the run finish?")

    # ---- reading
    def config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise TunelabError(f"{self.path} is not a run folder (no config.yaml); pass a folder made by tunelab train")
        try:
            return RunConfig.model_validate(yaml.safe_load(self.config_path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise TunelabError(f"{self.config_path} is not a valid run config ({first})") from None

    def metrics(self) -> dict | None:
        return read_json(self.metrics_path)

    def data_summary(self) -> dict | None:
        return read_json(self.data_summary_path)

    def labels(self, config: RunConfig | None = None) -> list[str] | None:
        """The label set the run was trained on, read from its files without loading the model."""
        config = config or self.config()
        if config.task == "classification":
            return self.classifier_labels()
        return (self.data_summary() or {}).get("labels")

    def classifier_labels(self) -> list[str]:
        path = self.weights_dir / "labels.json"
        if not path.exists():
            raise TunelabError(f"{path} is missing: a classification run saves its label set there; did the run "
                               f"finish?")
        return json.loads(path.read_text(encoding="utf-8"))["labels"]

    def predictions(self) -> list[dict]:
        return sealed.read_jsonl(self.predictions_path)

    # ---- status
    def status(self) -> RunStatus:
        """The recorded status; a run recorded as running whose process is gone (same host) is failed."""
        recorded = read_json(self.status_path)
        if recorded is None:  # runs from before status.json: finished when they wrote metrics
            return RunStatus("finished" if self.metrics_path.exists() else "failed", reason="no status.json")
        status = RunStatus(**{key: recorded.get(key) for key in RunStatus.__dataclass_fields__})
        if status.status == "running" and status.host == socket.gethostname() and not process_alive(status.pid):
            return RunStatus("failed", status.pid, status.host, status.started, None,
                             "the training process ended without recording an end", self.last_step())
        return status

    def mark_running(self) -> None:
        atomic_write_json(self.status_path, {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                                             "started": round(time.time(), 3)})

    def mark_ended(self, status: str, reason: str | None = None) -> None:
        """Record how the run ended (finished, failed or killed); ``reason`` says why it did not finish."""
        if status not in STATUSES[1:]:
            raise ValueError(f"a run ends as one of {STATUSES[1:]}, not {status!r}")
        recorded = read_json(self.status_path) or {}
        ended = {"status": status, "pid": recorded.get("pid"), "host": recorded.get("host"),
                 "started": recorded.get("started"), "ended": round(time.time(), 3)}
        if status != "finished":
            ended |= {"reason": reason, "last_step": self.last_step()}
        atomic_write_json(self.status_path, ended)

    def owned_by_this_process(self) -> bool:
        recorded = read_json(self.status_path) or {}
        return recorded.get("status") == "running" and recorded.get("pid") == os.getpid()

    def last_step(self) -> int | None:
        """The last step in train_log.jsonl (a line cut short by a killed process is skipped)."""
        steps = [row["step"] for row in read_jsonl(self.train_log_path) if "step" in row]
        return steps[-1] if steps else None

    # ---- artifacts
    def artifacts(self) -> list[dict]:
        """Every artifact of the run: path (relative to the folder), size and sha256. Checkpoints are
        left out: they are for resuming, not results."""
        files = [self.path / name for name in ARTIFACT_FILES if (self.path / name).is_file()]
        for name in ("adapter", "model"):
            folder = self.path / name
            if folder.is_dir():
                files += sorted(p for p in folder.rglob("*") if p.is_file())
        return [{"path": str(p.relative_to(self.path)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                for p in files]

    def write_artifacts(self) -> list[dict]:
        artifacts = self.artifacts()
        atomic_write_json(self.artifacts_path, {"artifacts": artifacts})
        return artifacts

    def changed_artifacts(self) -> list[str]:
        """Artifacts whose content no longer matches artifacts.json (missing ones included)."""
        recorded = read_json(self.artifacts_path)
        if recorded is None:
            raise TunelabError(f"{self.artifacts_path} is missing: the run did not finish, or finished before "
                               f"tunelab recorded checksums")
        changed = []
        for item in recorded["artifacts"]:
            path = self.path / item["path"]
            if not path.is_file() or sha256_file(path) != item["sha256"]:
                changed.append(item["path"])
        return changed


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this host."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
