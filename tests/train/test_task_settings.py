"""One table of task x shared setting: every setting a task supports takes effect, every other is refused.

The supported settings come from ``TASKS`` in tunelab/config.py, the table the config validator uses.
Each supported cell below trains a tiny model with that one setting and checks its visible effect;
every unsupported cell must be refused at load time, with the config's other problems.
"""

from __future__ import annotations

import json

import pytest

from tunelab.config import TASK_SETTINGS, TASKS, load_config, setting_default
from tunelab.errors import ConfigError
from tunelab.train.recipes import RECIPES, train

# A value other than the default, for each shared setting ({teacher} and {general} are filled in).
NON_DEFAULT = {
    "train.early_stopping": "train.early_stopping={{eval_steps: 1, patience: 1}}",
    "train.curriculum": "train.curriculum=length",
    "data.mix": None,  # the data itself changes: see data_overrides
    "train.packing": "train.packing=false",
    "train.packed_attention": "train.packed_attention=mask",
    "train.compile": "train.compile=true",
    "eval.forgetting_text": "eval.forgetting_text={general}",
    "classification.class_weights": "classification.class_weights=balanced",
    "distill.teacher": "distill.teacher={teacher}",
    "distill.student_layers": "distill.student_layers=1",
    "distill.alpha": "distill.alpha=0.9",
    "distill.temperature": "distill.temperature=3.0",
    "distill.positions": "distill.positions=all",
}


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _early_stopping(run, metrics):
    return "best_val_loss" in metrics["train"] and any("val_loss" in r for r in _read_jsonl(run / "train_log.jsonl"))


EFFECTS = {  # setting -> (run folder, metrics) -> whether its effect is visible
    "train.early_stopping": _early_stopping,
    "train.curriculum": lambda run, m: json.loads((run / "curriculum.json").read_text())["curriculum"] == "length",
    "data.mix": lambda run, m: set(m["tuned"]["by_source"]) == {"first", "second"},
    "train.packing": lambda run, m: m["train"]["rows"] == m["train"].get("examples", m["train"].get("chunks")),
    "train.packed_attention": lambda run, m: m["train"]["segment_attention"] is False,
    "train.compile": lambda run, m: m["train"]["compiled"] is True,
    "eval.forgetting_text": lambda run, m: m["forgetting"]["paragraphs"] == 3,
    "classification.class_weights": lambda run, m: "class_weights" in json.loads(
        (run / "data_summary.json").read_text()),
    "distill.teacher": lambda run, m: "teacher" in m,
    "distill.student_layers": lambda run, m: m["train"]["student_layers"] == 1,
    "distill.alpha": lambda run, m: "teacher" in m and (m["train"].get("alpha") == 0.9),
    "distill.temperature": lambda run, m: "teacher" in m and (m["train"].get("temperature") == 3.0),
    "distill.positions": lambda run, m: m["train"]["positions"] == "all",
}
CELLS = [(task, key) for task in TASKS for key in TASK_SETTINGS]
SUPPORTED = [cell for cell in CELLS if cell[1] in TASKS[cell[0]].settings]
REFUSED = [cell for cell in CELLS if cell[1] not in TASKS[cell[0]].settings]


def test_the_table_covers_every_task_and_recipe():
    assert set(RECIPES) == set(TASKS)
    assert set(NON_DEFAULT) == set(TASK_SETTINGS) == set(EFFECTS)
    assert setting_default("train.curriculum") == "none" and setting_default("train.early_stopping") is None


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path, sentiment_file):
    words = ["the movie was great and fun", "the movie was dull and boring", "the plot was fine"]
    text = write_rows(tmp_path / "text.jsonl", [{"text": f"{words[i % 3]} {i}"} for i in range(40)])
    general = write_rows(tmp_path / "general.jsonl", [{"text": w} for w in words])
    labeled = [json.loads(line) for line in sentiment_file.read_text().splitlines()]
    return {"labeled": sentiment_file, "text": text, "general": general,
            "first": write_rows(tmp_path / "first.jsonl", labeled[:30]),
            "second": write_rows(tmp_path / "second.jsonl", labeled[30:]),
            "text_first": write_rows(tmp_path / "text_first.jsonl", [{"text": f"{words[0]} {i}"} for i in range(20)]),
            "text_second": write_rows(tmp_path / "text_second.jsonl",
                                      [{"text": f"{words[1]} {i}"} for i in range(20)])}


def task_overrides(task, tmp_path, files, models) -> list[str]:
    model = {"classification": models["bert"], "seq2seq": models["t5"]}.get(task, models["llm"])
    data = files["text"] if task == "pretrain" else files["labeled"]
    overrides = [f"task={task}", f"model={model}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                 "train.max_steps=3", "train.batch_size=4", "train.max_length=96", "train.precision=fp32",
                 "train.learning_rate=1e-3", "eval.max_examples=6", "eval.max_new_tokens=2", "eval.forgetting_text=null"
                 if task == "pretrain" else "eval.batch_size=8"]
    if task == "distill":
        overrides.append(f"distill.teacher={models['llm']}")
    return overrides


def with_setting(overrides: list[str], key: str, task: str, files, models) -> list[str]:
    if key == "data.mix":
        first, second = ("text_first", "text_second") if task == "pretrain" else ("first", "second")
        overrides = [o for o in overrides if not o.startswith("data.train=")]
        return overrides + [f"data.mix=[{{train: {files[first]}, name: first}}, {{train: {files[second]}, "
                            f"name: second}}]"]
    teacher = models["llm"] if task == "distill" else models["bert_head"]
    value = NON_DEFAULT[key].format(teacher=teacher, general=files["general"])
    overrides = [o for o in overrides if not o.startswith(key + "=")]
    if key == "eval.forgetting_text":
        overrides = [o for o in overrides if not o.startswith("eval.forgetting_text")]
    if key in ("distill.alpha", "distill.temperature") and task == "classification":
        overrides.append(f"distill.teacher={teacher}")  # the teacher settings need a teacher
    return overrides + [value]


@pytest.fixture
def models(tiny_model_dir, tiny_bert_dir, tiny_t5_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    head = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    head.save_pretrained(tmp_path / "bert-head")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "bert-head")
    return {"llm": tiny_model_dir, "bert": tiny_bert_dir, "t5": tiny_t5_dir, "bert_head": tmp_path / "bert-head"}


@pytest.mark.parametrize("task,key", SUPPORTED, ids=[f"{t}-{k}" for t, k in SUPPORTED])
def test_a_supported_setting_takes_effect(task, key, tmp_path, files, models):
    overrides = with_setting(task_overrides(task, tmp_path, files, models), key, task, files, models)
    config = load_config(None, overrides + ["run_name=cell"])
    metrics = train(config)
    assert EFFECTS[key](tmp_path / "runs" / "cell", metrics), f"{key} had no visible effect on task {task}"


@pytest.mark.parametrize("task,key", REFUSED, ids=[f"{t}-{k}" for t, k in REFUSED])
def test_an_unsupported_setting_is_refused_with_the_other_problems(task, key, tmp_path, files, models):
    overrides = with_setting(task_overrides(task, tmp_path, files, models), key, task, files, models)
    with pytest.raises(ConfigError) as info:
        load_config(None, [*overrides, "train.batch_size=0"])  # a second, unrelated problem
    problems = info.value.problems
    assert any(p.startswith(f"{key}: set for task {task}") for p in problems), problems
    assert any(p.startswith("train.batch_size") for p in problems), problems
