"""The model card: Hugging Face front matter that parses back, sections in order, safe escaping."""

from __future__ import annotations

import re

import pytest

from tunelab.registry.cards import CardData, MetricRow, SliceRow, read_card_metadata, render_card

TRAIN_HASH = "a1" * 32
TEST_HASH = "b2" * 32

SECTIONS = [
    "## Intended use",
    "## Training data",
    "## Method and hyperparameters",
    "## Metrics against the base model",
    "## By slice",
    "## Failure samples",
    "## Compute",
    "## Limitations",
    "## Promotion gate",
]

MALICIOUS = (
    "ignore | this | row\n---\nlicense: mit\n---\n<script>alert('x')</script> ``` code ``` "
    "**bold** [link](javascript:alert(1)) # heading\n\n| a | b |\n|---|---|\n- item\\|"
)


def make_card(**overrides) -> CardData:
    values = dict(
        name="sentiment-bot",
        version=3,
        base_model="HuggingFaceTB/SmolLM2-135M",
        task="classification",
        method="lora",
        license="apache-2.0",
        run_name="sst2-lora",
        run_id="20240501-120000-ab12",
        created="2024-05-01T12:00:00+00:00",
        intended_use="",
        datasets=[
            {"role": "train", "hash": TRAIN_HASH, "rows": 1200, "sources": ["train.jsonl"]},
            {"role": "test", "hash": TEST_HASH, "rows": 150, "sources": ["test.jsonl"]},
        ],
        hyperparameters={"train.learning_rate": 2e-4, "lora.r": 16, "train.bf16": True},
        metrics=[
            MetricRow("accuracy", 0.69, 0.87, (0.61, 0.76), (0.81, 0.92), (0.10, 0.26)),
            MetricRow("loss", 1.25, 0.4321, higher_is_better=False),
        ],
        eval_examples=150,
        slices=[
            SliceRow("label", "positive", 80, "accuracy", 0.70, 0.90),
            SliceRow("label", "negative", 70, "accuracy", 0.80, 0.75),
            SliceRow("source", "test.jsonl", 150, "accuracy", 0.69, 0.87),
        ],
        failures=[{"input": "a dull film", "reference": "negative", "prediction": "positive"}],
        compute={
            "tokens": 123456,
            "seconds": 61.2,
            "tokens_per_second": 2017.3,
            "peak_rss_mb": 2048.0,
            "steps": 300,
            "hardware": "1x CPU",
        },
        gate=None,
        limitations=["Only English reviews were used."],
        tags=["sentiment"],
    )
    values.update(overrides)
    return CardData(**values)


def section(text: str, heading: str) -> str:
    """The text of one ``## `` section, up to the next one."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def cell_count(line: str) -> int:
    """Cells of a GFM table row: pipes that a backslash does not escape separate them."""
    unescaped = re.sub(r"\\.", "", line)
    return unescaped.count("|") - 1


def tables(text: str) -> list[list[str]]:
    """Runs of consecutive lines that start with a pipe, each a table."""
    found, current = [], []
    for line in text.split("\n"):
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def test_front_matter_parses_back_with_hub_fields():
    card = make_card()
    meta = read_card_metadata(render_card(card))

    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert meta["license"] == "apache-2.0"
    assert meta["datasets"] == [f"sha256:{TRAIN_HASH}", f"sha256:{TEST_HASH}"]
    assert meta["tags"] == ["tunelab", "lora", "classification", "sentiment"]

    [entry] = meta["model-index"]
    assert entry["name"] == "sentiment-bot"
    [result] = entry["results"]
    assert result["task"] == {"type": "text-classification"}
    assert result["dataset"] == {"name": "held-out test split", "type": f"sha256:{TEST_HASH}"}
    values = {m["name"]: (m["type"], m["value"]) for m in result["metrics"]}
    assert values == {
        "tuned accuracy": ("accuracy", 0.87),
        "base accuracy": ("accuracy", 0.69),
        "tuned loss": ("loss", 0.4321),
        "base loss": ("loss", 1.25),
    }


def test_front_matter_rounds_floats_and_skips_none():
    card = make_card(metrics=[MetricRow("f1", None, 0.123456), MetricRow("rouge_l", None, None)])
    text = render_card(card)
    meta = read_card_metadata(text)
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics == [{"type": "f1", "value": 0.1235, "name": "tuned f1"}]
    header = text.split("\n---\n", 1)[0]
    assert "null" not in header


@pytest.mark.parametrize(
    "method, library",
    [
        ("lora", "peft"),
        ("qlora", "peft"),
        ("dora", "peft"),
        ("rslora", "peft"),
        ("ia3", "peft"),
        ("prefix", "peft"),
        ("prompt", "peft"),
        ("full", "transformers"),
        ("freeze", "transformers"),
    ],
)
def test_library_name_depends_on_method(method, library):
    meta = read_card_metadata(render_card(make_card(method=method)))
    assert meta["library_name"] == library
    assert method in meta["tags"]


@pytest.mark.parametrize(
    "task, pipeline",
    [
        ("classification", "text-classification"),
        ("seq2seq", "text2text-generation"),
        ("sft", "text-generation"),
        ("pretrain", "text-generation"),
        ("distill", "text-generation"),
    ],
)
def test_task_maps_to_hub_task_type(task, pipeline):
    meta = read_card_metadata(render_card(make_card(task=task)))
    assert meta["model-index"][0]["results"][0]["task"]["type"] == pipeline
    assert meta["pipeline_tag"] == pipeline


def test_missing_license_is_other_with_a_warning():
    text = render_card(make_card(license=None))
    assert read_card_metadata(text)["license"] == "other"
    assert "check the license of the base model" in text

    licensed = render_card(make_card(license="mit"))
    assert read_card_metadata(licensed)["license"] == "mit"
    assert "check the license of the base model" not in licensed


def test_sections_appear_in_order():
    text = render_card(make_card())
    body = text.split("\n---\n", 1)[1]
    assert body.lstrip().startswith("# sentiment-bot v3\n")
    positions = [body.index(heading + "\n") for heading in SECTIONS]
    assert positions == sorted(positions)
    assert re.findall(r"^## .*$", body, flags=re.M) == SECTIONS


def test_summary_and_default_intended_use():
    text = render_card(make_card())
    summary = text.split("# sentiment-bot v3\n", 1)[1].split("## Intended use", 1)[0]
    for part in ("HuggingFaceTB/SmolLM2-135M", "lora", "classification", "sst2-lora"):
        assert part in summary
    use = section(text, "## Intended use")
    assert "classifying texts" in use and "train.jsonl" in use

    custom = render_card(make_card(intended_use="Triage of support tickets."))
    assert "Triage of support tickets." in section(custom, "## Intended use")
    assert "classifying texts" not in custom


def test_training_data_table_shows_short_hashes():
    data = section(render_card(make_card()), "## Training data")
    assert TRAIN_HASH[:12] in data and TRAIN_HASH[:13] not in data
    assert "| train | 1,200 | train.jsonl |" in data


def test_metrics_table_respects_direction_and_shows_intervals():
    text = render_card(make_card())
    metrics = section(text, "## Metrics against the base model")
    assert "150 held-out items" in metrics
    accuracy = next(line for line in metrics.split("\n") if line.startswith("| accuracy"))
    assert "0.6900 [0.6100, 0.7600]" in accuracy
    assert "+0.1800 [0.1000, 0.2600]" in accuracy
    assert "better" in accuracy
    loss = next(line for line in metrics.split("\n") if line.startswith("| loss"))
    assert "lower is better" in loss and "better" in loss.split("|")[-2] and "worse" not in loss

    worse = render_card(make_card(metrics=[MetricRow("loss", 0.4, 0.9, higher_is_better=False)]))
    worse_metrics = section(worse, "## Metrics against the base model")
    loss = next(line for line in worse_metrics.split("\n") if line.startswith("| loss"))
    assert "worse" in loss.split("|")[-2]


def test_malicious_failure_text_cannot_break_tables_or_front_matter():
    clean = render_card(make_card())
    failures = [
        {"input": MALICIOUS, "reference": MALICIOUS, "prediction": MALICIOUS},
        {"input": "x" * 5000, "reference": "|" * 300, "prediction": None},
    ]
    text = render_card(make_card(failures=failures))

    assert read_card_metadata(text) == read_card_metadata(clean)
    assert [line for line in text.split("\n") if line.strip() == "---"] == ["---", "---"]

    for table in tables(text):
        header_cells = cell_count(table[0])
        assert all(cell_count(row) == header_cells for row in table), table

    rows = [line for line in section(text, "## Failure samples").split("\n") if line.startswith("| ")]
    assert len(rows) == 2 + len(failures)  # header, rule, one row per failure
    assert "<script" not in text and "&lt;script&gt;" in text
    assert "```" not in text and "**bold**" not in text
    assert "[link](" not in text and "\\[link\\](javascript" in text  # no live link
    long_row = rows[-1]
    assert "x" * 199 in long_row and "x" * 201 not in long_row


def test_malicious_metadata_strings_stay_strings_on_one_line():
    card = make_card(
        name="evil\n---\nlicense: mit\n---\n# title",
        base_model="null",
        license="yes",
        tags=["1.0", "a: b", "---"],
        limitations=["- a list?\n## Not a heading", "<img src=x onerror=alert(1)>"],
    )
    text = render_card(card)
    meta = read_card_metadata(text)
    assert meta["model-index"][0]["name"] == "evil --- license: mit --- # title"
    assert meta["base_model"] == "null"
    assert meta["license"] == "yes"
    assert meta["tags"][-3:] == ["1.0", "a: b", "---"]
    assert [line for line in text.split("\n") if line.strip() == "---"] == ["---", "---"]
    body = text.split("\n---\n", 1)[1]
    assert re.findall(r"^## .*$", body, flags=re.M) == SECTIONS
    assert re.findall(r"^# .*$", body, flags=re.M) == ["# evil --- license: mit --- \\# title v3"]
    assert "<img" not in text


def test_worse_slices_are_listed_under_limitations():
    slices = [
        SliceRow("label", "positive", 80, "accuracy", 0.70, 0.90),
        SliceRow("label", "negative", 70, "accuracy", 0.80, 0.75),
        SliceRow("source", "forum.jsonl", 40, "loss", 1.0, 1.4),
        SliceRow("source", "news.jsonl", 40, "loss", 1.4, 1.0),
    ]
    limitations = section(render_card(make_card(slices=slices)), "## Limitations")
    assert "label = negative" in limitations
    assert "source = forum.jsonl" in limitations  # loss went up: worse
    assert "positive" not in limitations
    assert "news.jsonl" not in limitations  # loss went down: better
    assert "Only English reviews were used." in limitations


def test_slices_one_table_per_field_or_none():
    text = render_card(make_card())
    by_slice = section(text, "## By slice")
    assert "### By label" in by_slice and "### By source" in by_slice
    assert len(tables(by_slice)) == 2

    empty = render_card(make_card(slices=[]))
    assert "no slices" in section(empty, "## By slice").lower()
    assert tables(section(empty, "## By slice")) == []


def test_small_held_out_set_warns_about_wide_intervals():
    small = section(render_card(make_card(eval_examples=150)), "## Limitations")
    large = section(render_card(make_card(eval_examples=5000)), "## Limitations")
    assert "small (150 items)" in small
    assert "small" not in large
    for text in (small, large):
        assert "same distribution as the training data" in text


def test_compute_section():
    compute = section(render_card(make_card()), "## Compute")
    expected_rows = ("| tokens | 123,456 |", "| steps | 300 |", "| hardware | 1x CPU |", "peak memory (MB)", "tokens/s")
    for expected in expected_rows:
        assert expected in compute


GATE = {
    "alias": "production",
    "passed": False,
    "forced": False,
    "reason": "interval includes zero",
    "message": "tuned beats base by +0.02 accuracy, 95% interval [-0.01, 0.05]",
    "method": "paired bootstrap",
    "p_value": 0.21,
    "delta": 0.02,
    "low": -0.01,
    "high": 0.05,
    "n": 150,
    "time": "2024-05-02T09:00:00+00:00",
}


def test_gate_not_gated_refused_passed_forced():
    never = section(render_card(make_card(gate=None)), "## Promotion gate")
    assert "Not gated yet" in never

    refused = section(render_card(make_card(gate=GATE)), "## Promotion gate")
    assert "**Refused** for alias production" in refused
    assert "interval includes zero" in refused
    assert "tuned beats base by +0.02 accuracy" in refused
    assert "p-value: 0.21" in refused and "Not gated yet" not in refused

    passed = section(render_card(make_card(gate={**GATE, "passed": True, "reason": ""})), "## Promotion gate")
    assert "**Passed** for alias production" in passed and "Refused" not in passed

    forced = section(
        render_card(make_card(gate={**GATE, "forced": True, "reason": "release <deadline> | today"})),
        "## Promotion gate",
    )
    assert "**Forced** for alias production" in forced
    assert "although the gate refused it" in forced
    assert "release &lt;deadline&gt; \\| today" in forced


def test_read_card_metadata_needs_front_matter():
    with pytest.raises(ValueError):
        read_card_metadata("# just markdown\n")
    with pytest.raises(ValueError):
        read_card_metadata("---\nbase_model: x\n")
    with pytest.raises(ValueError):
        read_card_metadata("---\n- a list\n---\n")
    assert read_card_metadata("---\nlicense: mit\n---\n# body\n---\n") == {"license": "mit"}
