"""The New-run page: a form generated from the config schema that starts a real ``tunelab train`` run.

The form (``config_form.py``) shows the settings people change on almost every run first and keeps the
rest in collapsed sections, each with its description as help. The training data is picked from the
files under the dashboard's data folders and the prepared datasets in the registry, or typed as a path
inside those folders: the dashboard never reads files elsewhere on the server on a user's say-so.

On submit the settings that differ from the defaults are validated by the CLI's own config loader; every
problem is shown beside its field and nothing starts. Valid settings start ``tunelab train`` in its own
process (``launcher.py``); the page waits, without holding up the server, until the run is in the
registry and then opens the run's page, where its curves follow the training live. A run that takes
longer to start (a large model to load) gets a page that follows its console until it is recorded.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import anyio
import yaml
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select

from tunelab.config import RunConfig, load_config
from tunelab.data.formats import EXTENSIONS
from tunelab.errors import ConfigError, TunelabError
from tunelab.model_files import EMBEDDED
from tunelab.registry.audit_trail import record
from tunelab.registry.ingest import run_path
from tunelab.registry.schema import Dataset, DatasetVersion, Run
from tunelab.security.crypto import is_encrypted_file
from tunelab.security.roles import READ_RUNS, START_RUNS
from tunelab.ui.config_form import ESSENTIALS, FormSection, build_form, chosen_settings, field_for_problem, shown_values
from tunelab.ui.launcher import Launch, Launcher, LaunchRefused
from tunelab.ui.render import page, partial
from tunelab.ui.sessions import Session, needs

router = APIRouter()

START_WAIT_SECONDS = 30  # how long the form waits for the new run to be recorded before showing its console
POLL_SECONDS = 0.5
MOST_FILES = 500  # data files listed in the picker
COUNTED_BYTES = 64 << 20  # JSON-lines files up to this size get a row count
MOST_COUNTS = 10_000  # row counts remembered (by path, time and size)
PREPARED = "prepared:"  # picker values of prepared datasets: prepared:<dataset version id>
SPLITS = ("train", "val", "test")


@lru_cache(maxsize=1)
def run_form() -> FormSection:
    return build_form()


# ---- the data picker


@dataclass
class DataChoice:
    value: str  # the file's path, or prepared:<version id>
    label: str
    rows: str = ""  # "48 rows", "900 train / 50 val / 50 test"; empty when unknown


@dataclass
class DataChoices:
    files: list[DataChoice] = field(default_factory=list)
    prepared: list[DataChoice] = field(default_factory=list)
    more: bool = False  # more files than MOST_FILES


_row_counts: dict[tuple[str, float, int], int | None] = {}


def row_count(path: Path) -> int | None:
    """Rows of a data file when they can be counted cheaply (JSON lines, Parquet), else None."""
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _row_counts:
        if len(_row_counts) >= MOST_COUNTS:
            _row_counts.clear()
        _row_counts[key] = _count_rows(path, stat.st_size)
    return _row_counts[key]


def _count_rows(path: Path, size: int) -> int | None:
    suffix = path.suffix.lower()
    if is_encrypted_file(path):
        return None
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet  # optional: only Parquet files need it
            return parquet.ParquetFile(path).metadata.num_rows
        except Exception:
            return None
    if suffix not in (".jsonl", ".ndjson") or size > COUNTED_BYTES:
        return None
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def data_files(roots: list[Path]) -> tuple[list[Path], bool]:
    """Readable data files under ``roots`` (recursive, hidden folders skipped), and whether there were more."""
    found: list[Path] = []
    for root in roots:
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in sorted(names):
                if Path(name).suffix.lower() in EXTENSIONS and not name.startswith("."):
                    if len(found) == MOST_FILES:
                        return found, True
                    found.append(Path(folder) / name)
    return found, False


def shown_path(path: Path, roots: list[Path]) -> str:
    """A file as the picker names it: its data folder's name, then the path inside it."""
    for root in roots:
        try:
            return f"{root.name}/{path.relative_to(root).as_posix()}"
        except ValueError:
            continue
    return str(path)


def prepared_datasets(registry) -> list[tuple[DatasetVersion, str]]:
    """Every dataset version made by ``tunelab data prepare`` whose folder is still there, newest first."""
    with registry.session() as db:
        rows = db.execute(select(DatasetVersion, Dataset.name).join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                          .where(DatasetVersion.origin == "prepare").order_by(DatasetVersion.created.desc())).all()
    return [(version, name) for version, name in rows if version.path and Path(version.path).is_dir()]


def data_choices(state) -> DataChoices:
    roots = resolved_roots(state)
    files, more = data_files(roots)
    choices = DataChoices(more=more)
    for path in files:
        count = row_count(path)
        choices.files.append(DataChoice(str(path), shown_path(path, roots), "" if count is None else f"{count:,} rows"))
    for version, name in prepared_datasets(state.registry):
        rows = " / ".join(f"{version.rows[s]:,} {s}" for s in SPLITS if (version.rows or {}).get(s) is not None)
        choices.prepared.append(DataChoice(f"{PREPARED}{version.id}", f"{name} v{version.version}", rows))
    return choices


def resolved_roots(state) -> list[Path]:
    return [Path(root).expanduser().resolve() for root in state.settings.data_roots]


def model_suggestions(registry) -> list[str]:
    """Names for the model field: the embedded models, then the base models of recorded runs."""
    with registry.session() as db:
        used = db.scalars(select(Run.base_model).where(Run.base_model.is_not(None)).distinct()).all()
    return list(dict.fromkeys([*EMBEDDED, *sorted(used)]))


# ---- reading a submission


@dataclass
class Submission:
    """A submitted form, checked: the config to run, or the problems to show."""

    run_name: str = ""
    config_text: str = ""
    problems: dict[str, str] = field(default_factory=dict)  # field key -> problem
    general: list[str] = field(default_factory=list)  # problems of no one field

    @property
    def ok(self) -> bool:
        return not self.problems and not self.general


class DataPaths:
    """Where a run may read data from: inside the dashboard's data folders or a prepared dataset's folder."""

    def __init__(self, roots: list[Path], prepared: list[tuple[DatasetVersion, str]]):
        self.roots = roots
        self.prepared = {str(version.id): Path(version.path).resolve() for version, _ in prepared}

    def allowed(self, path: Path) -> bool:
        return any(path.is_relative_to(place) for place in [*self.roots, *self.prepared.values()])

    def resolve(self, text: str) -> tuple[str | None, str | None]:
        """(absolute path of an existing file inside the allowed folders, or a problem)."""
        given = Path(text).expanduser()
        candidates = [given] if given.is_absolute() else [root / given for root in self.roots]
        for candidate in (c.resolve() for c in candidates):
            if candidate.is_file():
                if not self.allowed(candidate):
                    return None, (f"{text} is outside the data folders this dashboard reads "
                                  f"({', '.join(str(r) for r in self.roots)}) and the prepared datasets")
                return str(candidate), None
        return None, f"no file {text} in the data folders ({', '.join(str(r) for r in self.roots)})"


def apply_data_source(chosen: dict, source: str, paths: DataPaths, problems: dict[str, str]) -> None:
    """Fill data.train (and a prepared dataset's val and test) from the picker, unless a path was typed;
    then check every data file the settings name."""
    data = chosen.setdefault("data", {})
    if not data.get("train") and source.startswith(PREPARED):
        folder = paths.prepared.get(source.removeprefix(PREPARED))
        if folder is None:
            problems["data.train"] = "that prepared dataset is no longer there; choose another"
        for split in SPLITS if folder else ():
            if (folder / f"{split}.jsonl").is_file() and (split == "train" or not data.get(split)):
                data[split] = str(folder / f"{split}.jsonl")
    elif not data.get("train") and source:
        data["train"] = source
    for key in ("train", "val", "test"):
        checked(data, key, f"data.{key}", paths, problems)
    for mixed in data.get("mix") if isinstance(data.get("mix"), list) else []:
        for key in ("train", "val", "test"):
            checked(mixed, key, "data.mix", paths, problems)
    if not data:
        chosen.pop("data")
    checked(chosen.get("eval", {}), "forgetting_text", "eval.forgetting_text", paths, problems)


def checked(settings, key: str, field_key: str, paths: DataPaths, problems: dict[str, str]) -> None:
    """The file at ``settings[key]`` made absolute, or a problem beside ``field_key`` when it is not readable here."""
    if not isinstance(settings, dict) or not isinstance(settings.get(key), str):
        return
    path, problem = paths.resolve(settings[key])
    if problem:
        problems[field_key] = problem
    else:
        settings[key] = path


def generated_name(chosen: dict, launcher: Launcher) -> str:
    defaults = RunConfig.model_fields
    method = chosen.get("method", defaults["method"].default)
    task = chosen.get("task", defaults["task"].default)
    name = f"{method}-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while launcher.name_taken(name if suffix == 1 else f"{name}-{suffix}"):
        suffix += 1
    return name if suffix == 1 else f"{name}-{suffix}"


def config_problems(config_text: str) -> list[str]:
    """What the CLI's loader says about this config, one line per problem (empty: it would run)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", encoding="utf-8") as file:
        file.write(config_text)
        file.flush()
        try:
            load_config(file.name)
        except ConfigError as exc:
            return list(exc.problems)
    return []


def placed(problems: list[str], form: FormSection, submission: Submission) -> None:
    """Each loader problem beside its field ('train.learning_rate: Input should be...'), else in the summary; a
    field the form already found a problem with (a path outside the data folders) keeps only that one."""
    found_here = set(submission.problems)
    for problem in problems:
        location, _, message = problem.partition(": ")
        key = field_for_problem(form, location)
        if key in found_here:
            continue
        if key is None:
            submission.general.append(problem.removeprefix("config: ").replace("Value error, ", ""))
        else:
            earlier = submission.problems.get(key)
            message = message.removeprefix("Value error, ")
            submission.problems[key] = f"{earlier}; {message}" if earlier else message


def check_submission(state, launcher: Launcher, submitted) -> Submission:
    """The submitted form as a config the CLI would run, or every problem with it."""
    form = run_form()
    chosen, problems = chosen_settings(form, submitted)
    submission = Submission(problems=problems)
    paths = DataPaths(resolved_roots(state), prepared_datasets(state.registry))
    apply_data_source(chosen, submitted.get("data_source") or "", paths, submission.problems)
    name = (chosen.pop("run_name", None) or "").strip()
    if name and launcher.name_taken(name):
        submission.problems["run_name"] = (f"a run named {name} already exists in {launcher.runs_root}; "
                                           "choose another name")
    submission.run_name = name or generated_name(chosen, launcher)
    config = {"run_name": submission.run_name, "output_dir": str(launcher.runs_root), **chosen}
    submission.config_text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    placed(config_problems(submission.config_text), form, submission)
    return submission


def recorded_run(registry, run_dir: Path) -> str | None:
    """The registry id of the run in ``run_dir``, once ``tunelab train`` has recorded it."""
    with registry.session() as db:
        return db.scalar(select(Run.id).where(Run.path == run_path(run_dir)))


async def wait_until_recorded(state, launch: Launch, seconds: float) -> str | None:
    """The run's id once it is in the registry; None when the process ended first or time ran out."""
    deadline = time.monotonic() + seconds
    while True:
        ended = not launch.running
        run_id = await anyio.to_thread.run_sync(recorded_run, state.registry, launch.run_dir)
        if run_id or ended or time.monotonic() > deadline:
            return run_id
        await anyio.sleep(POLL_SECONDS)


# ---- pages


def launcher_of(state) -> Launcher:
    if state.launcher is None:
        url = state.registry.engine.url.render_as_string(hide_password=False)
        state.launcher = Launcher(state.settings.runs_root, url)
    return state.launcher


def form_page(request: Request, session: Session, context: dict, submitted=None, submission: Submission | None = None,
              status_code: int = 200) -> HTMLResponse:
    form = run_form()
    values = shown_values(form, submitted)
    if submitted is None:
        values["run_name"] = ""  # generated at submit time unless the user names the run
    problems = submission.problems if submission else {}
    essentials = {f.key: f for f in form.all_fields() if f.key in ESSENTIALS}
    launcher = launcher_of(request.app.state.ui)
    open_sections = {key.split(".")[0] for key in problems}  # the top-level sections with a problem inside
    return page(request, "new_run.html", session, status_code=status_code, title="New run", form=form,
                essentials=[essentials[key] for key in ESSENTIALS if key in essentials], essential_keys=ESSENTIALS,
                values=values, problems=problems, general=submission.general if submission else [],
                source=(submitted.get("data_source") or "") if submitted is not None else "",
                runs_root=launcher.runs_root, data_roots=resolved_roots(request.app.state.ui),
                open_sections=open_sections, most_running=launcher.limit,
                launches=sorted(launcher.launches.values(), key=lambda launch: -launch.started), **context)


def page_context(state) -> dict:
    return {"choices": data_choices(state), "models": model_suggestions(state.registry)}


@router.get("/ui/new")
async def new_run_form(request: Request, session: Session = Depends(needs(START_RUNS))):
    context = await anyio.to_thread.run_sync(page_context, request.app.state.ui)
    return form_page(request, session, context)


@router.post("/ui/new")
async def start_run(request: Request, session: Session = Depends(needs(START_RUNS))):
    state = request.app.state.ui
    launcher = launcher_of(state)
    submitted = await request.form()
    submission = await anyio.to_thread.run_sync(check_submission, state, launcher, submitted)
    context = await anyio.to_thread.run_sync(page_context, state)
    if not submission.ok:
        return form_page(request, session, context, submitted, submission, status_code=422)
    try:
        launch = await anyio.to_thread.run_sync(launcher.start, submission.run_name, submission.config_text)
    except LaunchRefused as exc:
        submission.general.append(str(exc))
        return form_page(request, session, context, submitted, submission, status_code=409)
    await anyio.to_thread.run_sync(lambda: record("ui.train.start", f"key:{session.principal.key_id}",
                                                  registry=state.registry, run=launch.run_name))
    run_id = await wait_until_recorded(state, launch, START_WAIT_SECONDS)
    if run_id:
        return RedirectResponse(f"/ui/runs/{run_id}", status_code=303)
    failure = launch.failure()
    if failure:
        submission.general.append(f"tunelab train stopped at once: {failure}")
        return form_page(request, session, context, submitted, submission, status_code=422)
    return RedirectResponse(f"/ui/new/launches/{launch.run_name}", status_code=303)


def launch_state(state, run_name: str) -> dict:
    launch = launcher_of(state).get(run_name)
    if launch is None:
        raise TunelabError(f"no run named {run_name} was started from this dashboard since it started; "
                           "see the Runs page")
    return {"launch": launch, "run_id": recorded_run(state.registry, launch.run_dir), "failure": launch.failure(),
            "console": launch.console()}


@router.get("/ui/new/launches/{run_name}")
async def launch_page(request: Request, run_name: str, session: Session = Depends(needs(START_RUNS))):
    try:
        context = await anyio.to_thread.run_sync(launch_state, request.app.state.ui, run_name)
    except TunelabError as exc:
        return page(request, "error.html", session, status_code=404, title="Not found", message=str(exc))
    if context["run_id"]:
        return RedirectResponse(f"/ui/runs/{context['run_id']}", status_code=303)
    return page(request, "new_run_launch.html", session, title=f"Starting {run_name}", **context)


@router.get("/ui/new/launches/{run_name}/state")
async def launch_fragment(request: Request, run_name: str, session: Session = Depends(needs(START_RUNS))):
    try:
        context = await anyio.to_thread.run_sync(launch_state, request.app.state.ui, run_name)
    except TunelabError as exc:
        return partial(request, "new_run_console.html", session, missing=str(exc))
    if context["run_id"]:
        return Response(status_code=200, headers={"HX-Redirect": f"/ui/runs/{context['run_id']}"})
    return partial(request, "new_run_console.html", session, **context)


@router.get("/ui/api/schema")
async def config_schema(session: Session = Depends(needs(READ_RUNS))):
    """The run config's JSON schema: the form is generated from it."""
    return JSONResponse(RunConfig.model_json_schema())
