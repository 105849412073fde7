import json

import pytest

from tunelab.runs.report import (
    comparison_table,
    markdown_comparison_table,
    plot_training_curve,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

METRICS = {
    "base": {
        "accuracy": 0.80,
        "f1": 0.75,
        "confusion_matrix": {"labels": ["negative", "positive"], "matrix": [[40, 10], [10, 40]]},
    },
    "tuned": {
        "accuracy": 0.87,
        "f1": 0.70,
        "ece": 0.05,
        "confusion_matrix": {"labels": ["negative", "positive"], "matrix": [[44, 6], [7, 43]]},
    },
    "train": {
        "tokens": 150000,
        "seconds": 780.0,
        "tokens_per_second": 192.3,
        "peak_rss_mb": 7400.0,
        "final_loss": 0.4321,
        "steps": 250,
    },
}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _prediction(i, correct, text="a fine film"):
    label = "positive" if i % 2 else "negative"
    other = "negative" if i % 2 else "positive"
    return {
        "id": i, "input": text, "reference": label, "base_prediction": other,
        "tuned_prediction": label if correct else other,
        "base_correct": False, "tuned_correct": correct,
    }


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "config.yaml").write_text("run_name: movie-lora\nmodel: smollm2-135m\nmethod: lora\n")
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    log = [{"step": s, "epoch": s / 50, "loss": 2.0 / s, "learning_rate": 2e-4,
            "tokens": 512 * s, "elapsed": 0.1 * s} for s in range(10, 101, 10)]
    log.insert(5, {"step": 50, "eval_loss": 0.9})
    _write_jsonl(tmp_path / "train_log.jsonl", log)
    predictions = [_prediction(i, correct=i % 3 != 0) for i in range(12)]
    predictions[0]["input"] = "bad | worse | " + "x" * 200
    _write_jsonl(tmp_path / "predictions.jsonl", predictions)
    (tmp_path / "data_summary.json").write_text(json.dumps(
        {"train": 2000, "test": 12, "duplicates_removed": 3,
         "label_counts": {"positive": 1010, "negative": 990}}
    ))
    return tmp_path


def _rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()
    return {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in lines}


def test_comparison_table_values_signs_and_alignment():
    table = comparison_table(METRICS)
    rows = _rows(table)
    assert rows["metric"] == ["base", "tuned", "change"]
    assert rows["accuracy"] == ["0.8000", "0.8700", "+0.0700"]
    assert rows["f1"] == ["0.7500", "0.7000", "-0.0500"]
    assert rows["ece"] == ["-", "0.0500", "-"]
    assert "confusion_matrix" not in table
    lines = [line for line in table.splitlines() if "|" in line]
    assert len({line.index("|") for line in lines}) == 1  # columns line up


def test_comparison_table_without_baseline():
    rows = _rows(comparison_table({"tuned": {"accuracy": 0.9}}))
    assert rows["accuracy"] == ["-", "0.9000", "-"]


def test_a_teacher_gets_its_own_column():
    metrics = {**METRICS, "teacher": {"accuracy": 0.91}}
    rows = _rows(comparison_table(metrics))
    assert rows["metric"] == ["base", "tuned", "change", "teacher"]
    assert rows["accuracy"] == ["0.8000", "0.8700", "+0.0700", "0.9100"]
    assert rows["f1"][-1] == "-"
    assert markdown_comparison_table(metrics).splitlines()[0] == "| metric | base | tuned | change | teacher |"


def test_markdown_comparison_table():
    lines = markdown_comparison_table(METRICS).splitlines()
    assert lines[0] == "| metric | base | tuned | change |"
    assert lines[1] == "| --- | ---: | ---: | ---: |"
    assert "| accuracy | 0.8000 | 0.8700 | +0.0700 |" in lines
    assert "| ece | - | 0.0500 | - |" in lines


def test_plot_training_curve(run_dir, tmp_path_factory):
    png = run_dir / "curve.png"
    assert plot_training_curve(run_dir / "train_log.jsonl", png) is True
    assert png.read_bytes().startswith(PNG_SIGNATURE)

    empty = tmp_path_factory.mktemp("empty")
    _write_jsonl(empty / "train_log.jsonl", [{"step": 50, "eval_loss": 1.1}])
    assert plot_training_curve(empty / "train_log.jsonl", empty / "curve.png") is False
    assert plot_training_curve(empty / "missing.jsonl", empty / "curve.png") is False
    assert not (empty / "curve.png").exists()


def test_training_curve_draws_the_validation_loss_rows(run_dir, monkeypatch):
    from matplotlib.figure import Figure

    drawn = {}

    def record(fig, *args, **kwargs):
        drawn.update({line.get_label(): list(line.get_xdata()) for line in fig.axes[0].get_lines()})

    monkeypatch.setattr(Figure, "savefig", record)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").open()]
    periodic = [{"step": s, "epoch": s / 50, "val_loss": 1.0 + 1 / s, "tokens": 512 * s} for s in (10, 20, 25)]
    _write_jsonl(run_dir / "train_log.jsonl", [*periodic[:2], *log, periodic[2]])
    assert plot_training_curve(run_dir / "train_log.jsonl", run_dir / "curve.png") is True
    assert drawn["validation loss"] == [10, 20, 25] and drawn["train loss"] == list(range(10, 101, 10))

    drawn.clear()  # an older log: training loss only
    _write_jsonl(run_dir / "train_log.jsonl", [{"step": s, "loss": 1 / s} for s in (1, 2)])
    assert plot_training_curve(run_dir / "train_log.jsonl", run_dir / "curve.png") is True
    assert list(drawn) == ["train loss"]


def test_write_report_full_run(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.md"
    text = path.read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == ["# movie-lora", "## Summary", "## Data", "## Training", "## Evaluation",
                        "## Sample predictions", "## Config"]
    assert "accuracy 0.80 -> 0.87 (+0.07) on 12 test examples." in text
    assert "| label_counts | count |" in text and "| positive | 1010 |" in text
    assert "| duplicates_removed | 3 |" in text
    assert "- Tokens: 150,000" in text and "- Throughput: 192.3 tokens/s" in text
    assert "- Peak RSS: 7,400 MB" in text and "- Final loss: 0.4321" in text
    assert "![training curve](training_curve.png)" in text
    assert (run_dir / "training_curve.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| accuracy | 0.8000 | 0.8700 | +0.0700 |" in text
    assert "**Confusion matrix, tuned**" in text and "| positive | 7 | 43 |" in text
    assert "```yaml\nrun_name: movie-lora\n" in text
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_write_report_sample_predictions(run_dir):
    text = write_report(run_dir).read_text()
    wrong = text.split("**Tuned model wrong**")[1].split("**Tuned model right**")[0]
    right = text.split("**Tuned model right**")[1].split("## Config")[0]
    wrong_ids = [line.split("|")[1].strip() for line in wrong.splitlines() if line.startswith("| ")]
    right_ids = [line.split("|")[1].strip() for line in right.splitlines() if line.startswith("| ")]
    assert wrong_ids[2:] == ["0", "3", "6", "9"]  # after header and rule: every failure (4 of 12)
    assert right_ids[2:] == ["1", "2", "4", "5", "7"]  # capped at 5
    first = next(line for line in wrong.splitlines() if line.startswith("| 0 |"))
    assert "bad \\| worse \\| " in first  # pipes escaped, row keeps its 5 columns
    cell = first.split(" | ")[1]
    assert len(cell.replace("\\|", "|")) == 120 and cell.endswith("…")


def test_write_report_without_predictions_or_log(run_dir):
    (run_dir / "predictions.jsonl").unlink()
    (run_dir / "train_log.jsonl").unlink()
    text = write_report(run_dir).read_text()
    assert "## Sample predictions" not in text
    assert "training_curve.png" not in text
    assert not (run_dir / "training_curve.png").exists()
    assert "accuracy 0.80 -> 0.87 (+0.07)." in text
    assert "## Training" in text and "## Evaluation" in text


def test_write_report_minimal_run_dir(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"tuned": {"accuracy": 0.9}}))
    _write_jsonl(tmp_path / "train_log.jsonl", [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.8}])
    with open(tmp_path / "train_log.jsonl", "a") as f:
        f.write('{"step": 30, "lo')  # a run killed mid-write
    text = write_report(tmp_path).read_text()
    assert text.startswith(f"# {tmp_path.name}\n")
    assert "accuracy 0.90 (no baseline)." in text
    assert "| accuracy | - | 0.9000 | - |" in text
    assert "![training curve](training_curve.png)" in text
    assert "## Config" not in text and "## Data" not in text
