"""The New-run page: a form generated from the config schema, checked by the CLI's loader, that starts a real
``tunelab train`` process the user then follows on the run's page."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
import yaml
from pydantic import Field
from starlette.datastructures import FormData

from tests.ui.browser import log_in, screenshot
from tunelab.cli import main
from tunelab.config import RunConfig, Section
from tunelab.registry.ingest import record_prepared
from tunelab.registry.schema import Run
from tunelab.runs.folder import RunFolder
from tunelab.ui.app import UiSettings
from tunelab.ui.config_form import build_form, shown_values
from tunelab.ui.launcher import Launcher, LaunchRefused
from tunelab.ui.new_run import check_submission, run_form

RUN_DETAIL = Path(__file__).resolve().parents[2] / "src" / "tunelab" / "ui" / "run_detail.py"


def write_sentiment(folder: Path, rows: int = 48) -> Path:
    """A small text/label JSONL file in a data folder, like the serving tests' runs train on."""
    words = ["great", "dull", "wonderful", "tedious", "fun", "awful"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sentiment.jsonl"
    path.write_text("".join(json.dumps({"text": f"the movie was {words[i % 6]}",
                                        "label": "positive" if i % 2 == 0 else "negative"}) + "\n"
                            for i in range(rows)), encoding="utf-8")
    return path


@pytest.fixture
def data_file(dashboard) -> Path:
    return write_sentiment(dashboard.root / "data" / "reviews")


def csrf_of(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def browser_defaults() -> list[tuple[str, str]]:
    """What a browser sends for the untouched form: every input at its default (ticked boxes as "on")."""
    form = run_form()
    sent = []
    for key, value in shown_values(form).items():
        if isinstance(value, bool):
            sent += [(key, "on")] if value else []
        elif isinstance(value, list):
            sent += [(key, item) for item in value]
        else:
            sent.append((key, value))
    return sent


def post_form(client, changes: dict[str, str]) -> object:
    csrf = csrf_of(client.get("/ui/new").text)
    fields = [(key, value) for key, value in browser_defaults() if key not in changes]
    body = urlencode([("csrf_token", csrf), *fields, *changes.items()])
    return client.post("/ui/new", content=body, headers={"content-type": "application/x-www-form-urlencoded"})


def field_html(html: str, key: str) -> str:
    """The markup of one field's block, up to the next field."""
    start = html.index(f'id="field-{key}"')
    following = html.find('<div class="field ', start)
    return html[start:following if following != -1 else len(html)]


def input_names(html: str) -> set[str]:
    return set(re.findall(r'<(?:input|select|textarea)[^>]*\bname="([^"]+)"', html))


def test_the_form_is_generated_from_the_config_schema(dashboard, data_file):
    trainer = dashboard.http("trainer")
    answer = trainer.get("/ui/new")
    assert answer.status_code == 200
    html = answer.text
    names = input_names(html)
    # fields of every section, nested ones included, each named by its config key
    for key in ("model", "task", "method", "run_name", "data.train", "train.learning_rate", "train.batch_size",
                "lora.r", "lora.dropout", "eval.max_new_tokens", "train.val_loss.every_steps",
                "train.early_stopping", "train.early_stopping.patience", "distill.temperature", "train.report_to"):
        assert key in names, key
    assert "output_dir" not in names and not any(n.startswith("sweep.") for n in names)
    # descriptions are the help texts; Literal settings are selects with the default chosen; bools are checkboxes
    assert "Examples per optimizer step (packed or not)." in field_html(html, "train.batch_size")
    scheduler = field_html(html, "train.lr_scheduler")
    assert "<select" in scheduler and '<option value="linear" selected>' in scheduler and 'value="cosine"' in scheduler
    assert 'type="checkbox" name="train.packing" checked' in field_html(html, "train.packing")
    learning_rate = field_html(html, "train.learning_rate")
    assert 'type="number"' in learning_rate and 'value="0.0002"' in learning_rate and "above 0" in learning_rate
    assert 'value="smollm2-135m"' in field_html(html, "model")
    # the first view is short: the essentials card, every other section collapsed
    essentials = html[html.index('class="card essentials"'):html.index('class="advanced-head"')]
    assert input_names(essentials) == {"model", "task", "method", "data_source", "data.train", "run_name",
                                       "train.epochs", "train.max_steps", "train.learning_rate", "train.batch_size",
                                       "lora.r"}
    assert re.search(r'<details class="card advanced" data-section="train" id="field-train"\s*>', html)
    # the data picker lists the file under the data folder with its row count
    assert f'value="{data_file}"' in html and "reviews/sentiment.jsonl  ·  48 rows" in html
    schema = trainer.get("/ui/api/schema").json()
    assert "learning_rate" in schema["$defs"]["TrainConfig"]["properties"]


def test_a_new_config_field_appears_by_itself():
    class ProbeSection(Section):
        """A section no page knows about."""

        widgets: int = Field(3, ge=1, le=9, description="How many widgets to wiggle.")
        mode: str = Field("calm", description="Free text.")

    class ProbedConfig(RunConfig):
        probe: ProbeSection = ProbeSection()

    form = build_form(ProbedConfig.model_json_schema(), ProbedConfig().model_dump(mode="json"))
    probe = next(s for s in form.sections if s.key == "probe")
    widgets = next(f for f in probe.fields if f.key == "probe.widgets")
    assert (widgets.kind, widgets.default, widgets.help, widgets.limits) == ("number", 3, "How many widgets to "
                                                                             "wiggle.", "1 to 9")
    assert probe.help == "A section no page knows about."
    assert [f.key for f in form.all_fields()].count("probe.mode") == 1


def test_a_viewer_gets_no_form_and_cannot_start_a_run(dashboard, data_file):
    viewer = dashboard.http("viewer")
    refused = viewer.get("/ui/new")
    assert refused.status_code == 403 and "runs:start" in refused.text and 'id="new-run-form"' not in refused.text
    csrf = csrf_of(viewer.get("/ui/runs").text)
    posted = viewer.post("/ui/new", data={"csrf_token": csrf, "data_source": str(data_file), "model": "x"})
    assert posted.status_code == 403
    assert not (dashboard.root / "runs" / ".dashboard").exists()


def test_invalid_settings_show_every_problem_beside_its_field_and_start_nothing(dashboard, data_file):
    trainer = dashboard.http("trainer")
    answer = post_form(trainer, {"data_source": str(data_file), "train.learning_rate": "-1",
                                 "train.batch_size": "0", "run_name": "should-not-start"})
    assert answer.status_code == 422
    html = answer.text
    assert "greater than 0" in field_html(html, "train.learning_rate")
    assert "greater than 0" in field_html(html, "train.batch_size")
    assert 'class="field-error"' not in field_html(html, "train.epochs")
    summary = html[html.index('data-testid="error-summary"'):html.index("</ul>")]
    assert "train.learning_rate" in summary and "train.batch_size" in summary
    assert 'value="-1"' in field_html(html, "train.learning_rate")  # what was typed stays in the form
    # the section with the errors is open
    assert re.search(r'<details class="card advanced" data-section="train" id="field-train"\s+open>', html)
    assert not (dashboard.root / "runs" / "should-not-start").exists()
    assert not (dashboard.root / "runs" / ".dashboard").exists()


def test_data_must_come_from_the_data_folders_and_names_must_be_new(dashboard, data_file, tmp_path):
    trainer = dashboard.http("trainer")
    outside = write_sentiment(tmp_path / "elsewhere")
    answer = post_form(trainer, {"data.train": str(outside), "run_name": "baseline-lora"})
    assert answer.status_code == 422
    assert "outside the data folders" in field_html(answer.text, "data.train")
    assert "already exists" in field_html(answer.text, "run_name")  # the fixture's run folder
    missing = post_form(trainer, {})
    assert missing.status_code == 422 and "required" in field_html(missing.text, "data.train")
    both = post_form(trainer, {"data_source": str(data_file), "data.mix": "[{train: reviews/sentiment.jsonl}]"})
    assert both.status_code == 422  # a problem of the whole data section, shown at the top of its open card
    section = re.search(r'<details class="card advanced" data-section="data" id="field-data"\s+open>(.*?)</details>',
                        both.text, re.S)
    assert section and "set data.train or data.mix, not both" in section.group(1).split('<div class="field ')[0]
    assert not (dashboard.root / "runs" / ".dashboard").exists()


def train_log_rows(run: Path) -> int:
    path = RunFolder(run).train_log_path
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.exists() else 0


def stop_if_running(run: Path, launched: bool, wait: float = 90) -> None:
    """End the training process this test started, if it is still going, by the pid its status.json names (a
    process still loading the model writes that file a little later)."""
    deadline = time.monotonic() + (wait if launched else 0)
    while not RunFolder(run).status_path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    status = RunFolder(run).status()
    if status.status == "running" and status.pid:
        os.kill(status.pid, signal.SIGTERM)


def open_section(page, key: str) -> None:
    section = page.locator(f'details[data-section="{key}"]')
    if section.get_attribute("open") is None:
        section.locator("summary").click()


def fill_tiny_run(page, model_dir: Path, data_file: Path, run_name: str) -> None:
    """The settings of a tiny, fast run on the tiny model, entered as a user would."""
    page.fill("#in-model", str(model_dir))
    page.select_option("#data-source", str(data_file))
    page.fill("#in-run_name", run_name)
    # 400 steps of the tiny model (about 5 s on an idle machine), so the run is still training when its page opens
    for key, value in {"train.max_steps": "400", "train.batch_size": "4", "lora.r": "4"}.items():
        page.fill(f'[id="in-{key}"]', value)
    open_section(page, "train")
    for key, value in {"train.logging_steps": "1", "train.max_length": "64"}.items():
        page.fill(f'[id="in-{key}"]', value)
    page.select_option('[id="in-train.compile"]', "false")
    page.select_option('[id="in-train.precision"]', "fp32")
    open_section(page, "eval")
    page.fill('[id="in-eval.max_examples"]', "4")
    page.fill('[id="in-eval.max_new_tokens"]', "2")
    page.uncheck('[id="in-eval.baseline"]')


def curve_points(page) -> int:
    """Points of the loss curve drawn on the run's page (the x values of its uPlot chart), 0 before it draws."""
    return page.evaluate("""() => {
        const curves = window.runPage && window.runPage.curves;
        const chart = curves && curves.charts.loss && curves.charts.loss.chart();
        return chart ? chart.data[0].length : 0;
    }""")


def test_a_trainer_starts_a_run_and_follows_it_live(dashboard, data_file, tiny_model_dir, browser_page):
    page = browser_page
    run = dashboard.root / "runs" / "live-lora"
    log_in(page, dashboard.url, dashboard.keys["trainer"], then="/ui/new")
    assert page.locator("#new-run-form").is_visible()
    screenshot(page, "new-run")

    fill_tiny_run(page, tiny_model_dir, data_file, "live-lora")
    page.fill('[id="in-train.learning_rate"]', "-1")
    page.fill('[id="in-train.batch_size"]', "0")
    page.click("#start-run")
    page.wait_for_selector("[data-testid=error-summary]")
    for key in ("train.learning_rate", "train.batch_size"):
        assert "greater than 0" in page.locator(f'[id="field-{key}"] .field-error').inner_text()
    assert not run.exists()
    screenshot(page, "new-run-errors")

    page.fill('[id="in-train.learning_rate"]', "0.05")  # everything else kept its value
    page.fill('[id="in-train.batch_size"]', "4")
    try:
        page.click("#start-run", no_wait_after=True)  # the answer comes once the run is recorded
        # on a busy machine the form may first show the run's console, which moves on once the run is recorded
        page.wait_for_url(re.compile(r"/ui/runs/[0-9a-f]+$"), timeout=120_000)
        run_id = page.url.rsplit("/", 1)[-1]
        with dashboard.registry.session() as db:
            recorded = db.get(Run, run_id)
            assert recorded is not None and recorded.name == "live-lora" and recorded.path == str(run.resolve())
        points, rows, shot = [], [], False
        deadline = time.monotonic() + 400  # a loaded machine trains the tiny model 10-20 times slower
        while time.monotonic() < deadline and RunFolder(run).status().status == "running":
            points.append(curve_points(page))
            rows.append(train_log_rows(run))
            if not shot and points[-1] >= 12:
                shot = bool(screenshot(page, "run-live"))
            time.sleep(0.5)
        if not shot:
            screenshot(page, "run-live")
        assert RunFolder(run).status().status == "finished", (run / "console.log").read_text()[-2000:]
        grew = [b for a, b in zip(points, points[1:]) if b > a]
        assert len(grew) >= 2, (points, rows)  # the curve grew on the open page, read after read
        assert train_log_rows(run) >= 30
        page.wait_for_function("document.getElementById('run-status').textContent.trim() === 'finished'",
                               timeout=30_000)
        assert curve_points(page) >= 30
        assert (run / "console.log").is_file() and "run folder:" in (run / "console.log").read_text()
    finally:
        stop_if_running(run, launched=(dashboard.root / "runs" / ".dashboard" / "live-lora.yaml").exists())


class SleepingLauncher(Launcher):
    """Starts a stand-in for tunelab train that prints ``lines`` and sleeps or exits."""

    def __init__(self, runs_root: Path, script: str, limit: int = 1):
        super().__init__(runs_root, limit=limit)
        self.script = script

    def command(self, config_path: Path) -> list[str]:
        return [sys.executable, "-c", self.script, str(config_path)]


def test_the_launcher_limits_running_runs_and_reaps_them(tmp_path):
    launcher = SleepingLauncher(tmp_path / "runs", "import time; print('loading', flush=True); time.sleep(60)")
    first = launcher.start("first", "run_name: first\n")
    assert first.running and first.config_path.read_text() == "run_name: first\n"
    with pytest.raises(LaunchRefused, match="at most 1 run"):
        launcher.start("second", "run_name: second\n")
    (tmp_path / "runs" / "taken").mkdir()
    with pytest.raises(LaunchRefused, match="already exists"):
        SleepingLauncher(tmp_path / "runs", "", limit=2).start("taken", "")
    deadline = time.monotonic() + 20
    while first.console() != ["loading"] and time.monotonic() < deadline:
        time.sleep(0.1)
    first.process.terminate()
    while Path(f"/proc/{first.process.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the launcher's thread waits on the process: no zombie stays behind
    assert not Path(f"/proc/{first.process.pid}").exists()
    assert not first.running and first.failure() == "loading"
    failing = SleepingLauncher(tmp_path / "other", "import sys; print('step 1'); "
                               "print('error: model folder x has no config.json', file=sys.stderr); sys.exit(2)")
    launch = failing.start("broken", "")
    launch.process.wait(timeout=10)
    assert launch.failure() == "model folder x has no config.json"


def test_a_run_that_fails_at_once_says_why_on_the_form(dashboard, data_file, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    trainer = dashboard.http("trainer")
    answer = post_form(trainer, {"data_source": str(data_file), "model": str(not_a_model), "run_name": "no-model",
                                 "train.max_steps": "2"})
    if answer.status_code == 303:  # a busy machine: the process was still importing when the form stopped waiting
        assert answer.headers["location"] == "/ui/new/launches/no-model"
        deadline = time.monotonic() + 120
        while "launch-failure" not in (answer := trainer.get("/ui/new/launches/no-model")).text:
            assert time.monotonic() < deadline, answer.text
            time.sleep(1)
        assert "has no config.json" in answer.text
        return
    assert answer.status_code == 422
    summary = answer.text[answer.text.index('data-testid="error-summary"'):answer.text.index("</ul>")]
    assert "tunelab train stopped at once" in summary and "has no config.json" in summary
    started = answer.text[answer.text.index('data-testid="launches"'):]
    assert "no-model" in started and "status-failed" in started
    assert trainer.get("/ui/new/launches/nothing-like-it").status_code == 404


def test_a_prepared_dataset_is_offered_and_brings_its_splits(dashboard, data_file):
    out = dashboard.root / "prepared" / "movies"
    assert main(["data", "prepare", str(data_file), "--out", str(out), "--seed", "7"]) == 0
    version = record_prepared(dashboard.registry, out)
    html = dashboard.http("trainer").get("/ui/new").text
    option = re.search(rf'<option value="prepared:{version.id}"\s*>([^<]+)</option>', html)
    assert option and option.group(1).startswith(f"movies v{version.version}  ·  {version.rows['train']} train")
    settings = UiSettings(runs_root=dashboard.root / "runs", data_roots=[dashboard.root / "data"])
    state = SimpleNamespace(settings=settings, registry=dashboard.registry)
    submitted = FormData([*browser_defaults(), ("data_source", f"prepared:{version.id}")])
    submission = check_submission(state, Launcher(dashboard.root / "runs"), submitted)
    assert submission.ok, (submission.problems, submission.general)
    config = yaml.safe_load(submission.config_text)
    assert config["data"] == {split: str(out.resolve() / f"{split}.jsonl") for split in ("train", "val", "test")}
    assert re.fullmatch(r"lora-sft-\d{8}-\d{6}", config["run_name"])
    assert set(config) == {"run_name", "output_dir", "data"}  # nothing else differs from the defaults
