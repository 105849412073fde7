"""``MODEL_CARD.md`` for a registered model: Hugging Face front matter plus a readable report.

The card starts with YAML front matter between ``---`` lines that the Hugging Face Hub reads
(``base_model``, ``library_name``, ``license``, ``tags``, ``datasets`` and ``model-index``), then
Markdown sections: intended use, training data, method, metrics against the base model, slices,
failure samples, compute, limitations and the last promotion gate.

Everything that comes from users (names, file names, eval texts, free-form lines) is escaped, so
pipes, newlines, HTML, Markdown and ``---`` lines in it can neither break a table row nor end the
front matter early. :func:`read_card_metadata` parses the front matter back.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

import yaml

from tunelab.tables import markdown_table

# Methods that save the whole model; every other method saves a PEFT adapter.
FULL_WEIGHT_METHODS = frozenset({"full", "freeze"})

# Hugging Face pipeline type of each tunelab task; anything else generates text.
TASK_TYPES = {
    "classification": "text-classification",
    "seq2seq": "text2text-generation",
}
DEFAULT_TASK_TYPE = "text-generation"

# What a model of each task is for, used when the caller gives no intended use.
TASK_USES = {
    "sft": "following instructions and answering prompts like those in its training data",
    "classification": "classifying texts like those in its training data into the labels it was trained on",
    "seq2seq": "turning inputs into outputs (such as summaries or rewrites) like those in its training data",
    "pretrain": "continuing and generating text in the domain of its training corpus",
    "distill": "reproducing its teacher's answers on prompts like those in its training data",
}

# Metrics where a smaller value is better, when no MetricRow of that name says otherwise.
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "ece", "wer", "cer", "ter", "brier", "mae", "mse", "rmse", "error"})

SMALL_EVAL = 200  # below this many held-out items the 95% intervals are wide
FAILURE_CHARS = 200  # failure sample texts are shortened to about this many characters
CELL_CHARS = 120  # other user texts in table cells
MAX_SOURCES = 5  # source file names listed per dataset before "and N more"

HASH_PREFIX = "sha256:"


@dataclass
class MetricRow:
    name: str  # accuracy, f1, rouge_l, exact_match, loss, perplexity, ece ...
    base: float | None
    tuned: float | None
    base_interval: tuple[float, float] | None = None  # 95%
    tuned_interval: tuple[float, float] | None = None
    delta_interval: tuple[float, float] | None = None  # paired, tuned - base
    higher_is_better: bool = True


@dataclass
class SliceRow:
    field: str  # "source", "label", or a meta field named by eval.slices
    value: str
    n: int
    metric: str  # the metric shown, e.g. accuracy
    base: float | None
    tuned: float | None


@dataclass
class CardData:
    name: str  # registered model name
    version: int
    base_model: str  # e.g. "smollm2-135m" or a Hugging Face id
    task: str  # sft, classification, seq2seq, pretrain, distill
    method: str  # lora, qlora, dora, full, ...
    license: str | None  # None -> "other" in the YAML plus a sentence to check the base model's license
    run_name: str
    run_id: str
    created: str  # ISO timestamp
    intended_use: str  # "" -> a default sentence from task, base model and data
    datasets: list[dict]  # {"role": "train"|"val"|"test", "hash": sha256 hex, "rows": int, "sources": [names]}
    hyperparameters: dict  # flat "train.learning_rate" -> value, "lora.r" -> value ...
    metrics: list[MetricRow]
    eval_examples: int  # held-out items the metrics are on
    slices: list[SliceRow]
    failures: list[dict]  # up to ~5: {"input", "reference", "prediction"} of wrong tuned answers
    compute: dict  # tokens, seconds, tokens_per_second, peak_rss_mb, steps, hardware
    gate: dict | None  # last promotion gate; None = never gated
    limitations: list[str]  # extra lines; generic ones are added by the renderer
    tags: list[str] = field(default_factory=list)


# --- escaping ---------------------------------------------------------------------------------

# Characters that mean something to Markdown or GFM tables anywhere in a line.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#$])")
# A start of line that would open a list or a thematic break (">" is an entity already).
_BLOCK_START = re.compile(r"^([-+])|^(\d{1,9})([.)])")


def _plain(text) -> str:
    """One line of text: control characters dropped, all whitespace (newlines too) collapsed."""
    if text is None:
        return ""
    # Control characters become spaces; format characters (bidi overrides, zero widths) go.
    text = "".join(
        " " if unicodedata.category(ch) == "Cc" else ch for ch in str(text) if unicodedata.category(ch) != "Cf"
    )
    return " ".join(text.split())


def _shorten(text: str, limit: int | None) -> str:
    if limit is not None and len(text) > limit:
        return text[: limit - 1].rstrip() + "…"
    return text


def _md(text, limit: int | None = None, empty: str = "-") -> str:
    """User text made safe for one Markdown line or table cell.

    Whitespace collapses to single spaces, the text is shortened to ``limit`` characters, HTML
    becomes entities, Markdown punctuation and pipes are backslash-escaped, and a start that
    would open a list or a thematic break is escaped too.
    """
    text = _shorten(_plain(text), limit)
    if not text:
        return empty
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _BLOCK_START.sub(lambda m: f"\\{m.group(1)}" if m.group(1) else f"{m.group(2)}\\{m.group(3)}", text)


# --- numbers ----------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> float | None:
    """``value`` as a float, or None when it is missing or not a finite number."""
    if not _is_number(value) or not math.isfinite(value):
        return None
    return float(value)


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if not _is_number(value):
        return _md(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.{digits}f}"


def _signed(value) -> str:
    """A difference, with its sign even when positive."""
    return f"{value:+,.4f}" if _is_number(value) and math.isfinite(value) else _num(value)


def _with_interval(value, interval, signed: bool = False) -> str:
    text = _signed(value) if signed else _num(value)
    if interval is not None and len(interval) == 2 and all(_is_number(v) for v in interval):
        text += f" [{_num(interval[0])}, {_num(interval[1])}]"
    return text


def _delta(base, tuned) -> float | None:
    base, tuned = _finite(base), _finite(tuned)
    return None if base is None or tuned is None else tuned - base


def _verdict(delta: float | None, higher_is_better: bool, interval=None) -> str:
    """better / worse / no change, respecting the metric's direction; notes an interval around 0."""
    if delta is None:
        return "-"
    if delta == 0:
        return "no change"
    word = "better" if (delta > 0) == higher_is_better else "worse"
    if interval is not None and len(interval) == 2 and all(_is_number(v) for v in interval):
        word += " (interval includes 0)" if interval[0] <= 0 <= interval[1] else " (interval excludes 0)"
    return word


def _higher_is_better(metric: str, card: CardData) -> bool:
    for row in card.metrics:
        if row.name == metric:
            return row.higher_is_better
    name = str(metric).lower()
    return not (name in LOWER_IS_BETTER or name.endswith("_loss") or name.endswith("_error"))


# --- front matter -----------------------------------------------------------------------------


def _library(method: str) -> str:
    return "transformers" if str(method).strip().lower() in FULL_WEIGHT_METHODS else "peft"


def _task_type(task: str) -> str:
    return TASK_TYPES.get(str(task).strip().lower(), DEFAULT_TASK_TYPE)


def _hash_id(value) -> str:
    text = _plain(value)
    return text if text.startswith(HASH_PREFIX) else HASH_PREFIX + text


def _short_hash(value) -> str:
    text = _plain(value)
    return text[len(HASH_PREFIX):][:12] if text.startswith(HASH_PREFIX) else text[:12]


def _eval_dataset(card: CardData) -> dict:
    for role, name in (("test", "held-out test split"), ("val", "held-out validation split")):
        for ds in card.datasets:
            if ds.get("role") == role and _plain(ds.get("hash")):
                return {"name": name, "type": _hash_id(ds["hash"])}
    return {"name": "held-out split", "type": "unknown"}


def _metadata(card: CardData) -> dict:
    """The YAML front matter as a dict; every string is one line so no line of it can read ``---``."""
    tags: list[str] = []
    for tag in ["tunelab", card.method, card.task, *card.tags]:
        tag = _plain(tag)
        if tag and tag not in tags:
            tags.append(tag)
    hashes: list[str] = []
    for ds in card.datasets:
        if _plain(ds.get("hash")) and _hash_id(ds["hash"]) not in hashes:
            hashes.append(_hash_id(ds["hash"]))

    metrics = []
    for row in card.metrics:
        name = _plain(row.name)
        for which, value in (("tuned", row.tuned), ("base", row.base)):
            value = _finite(value)
            if name and value is not None:
                metrics.append({"type": name, "value": round(value, 4), "name": f"{which} {name}"})
    task_type = _task_type(card.task)
    result = {"task": {"type": task_type}, "dataset": _eval_dataset(card), "metrics": metrics}

    meta = {
        "base_model": _plain(card.base_model) or None,
        "library_name": _library(card.method),
        "license": _plain(card.license) or "other",
        "tags": tags,
        "datasets": hashes,
        "pipeline_tag": task_type,
        "model-index": [{"name": _plain(card.name), "results": [result] if metrics else []}],
    }
    return {key: value for key, value in meta.items() if value is not None}


def _front_matter(card: CardData) -> str:
    body = yaml.safe_dump(
        _metadata(card), sort_keys=False, allow_unicode=True, default_flow_style=False, width=1_000_000
    )
    return f"---\n{body}---"


def read_card_metadata(text: str) -> dict:
    """The YAML front matter of a card (between the leading ``---`` lines) as a dict.

    Raises ValueError when the text does not start with front matter, it is not closed, or it is
    not a YAML mapping.
    """
    lines = text.lstrip("\ufeff").split("\n")
    if not lines or lines[0].rstrip() != "---":
        raise ValueError("no front matter: the card does not start with a '---' line")
    for end in range(1, len(lines)):
        if lines[end].rstrip() == "---":
            break
    else:
        raise ValueError("front matter is not closed by a '---' line")
    try:
        meta = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        raise ValueError(f"front matter is not valid YAML: {exc}") from exc
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ValueError("front matter is not a YAML mapping")
    return meta


# --- sections ---------------------------------------------------------------------------------


def _license_sentence(card: CardData) -> str:
    if _plain(card.license):
        return f"License: {_md(card.license)}."
    return (
        f"No license was given, so the card says other: check the license of the base model "
        f"({_md(card.base_model)}) and of the training data before using or sharing this model."
    )


def _summary(card: CardData) -> str:
    kind = "adapter on" if _library(card.method) == "peft" else "fine-tune of"
    n = card.eval_examples
    return (
        f"{_md(card.name)} version {_md(card.version)} is a {_md(card.method)} {kind} {_md(card.base_model)} "
        f"for the {_md(card.task)} task, trained in run {_md(card.run_name)} (id {_md(card.run_id)}) "
        f"on {_md(card.created)} and evaluated on {n:,} held-out item{'s' if n != 1 else ''}. "
        + _license_sentence(card)
    )


def _sources(card: CardData, role: str = "train") -> list[str]:
    names: list[str] = []
    for ds in card.datasets:
        if ds.get("role") == role:
            for source in ds.get("sources") or []:
                if _plain(source) and source not in names:
                    names.append(source)
    return names


def _source_list(names: list) -> str:
    shown = ", ".join(_md(name, CELL_CHARS) for name in names[:MAX_SOURCES])
    if len(names) > MAX_SOURCES:
        shown += f" and {len(names) - MAX_SOURCES} more"
    return shown or "-"


def _intended_use(card: CardData) -> str:
    paragraphs = [_md(p, empty="") for p in re.split(r"\n\s*\n", str(card.intended_use or ""))]
    paragraphs = [p for p in paragraphs if p]
    if paragraphs:
        return "\n\n".join(paragraphs)
    use = TASK_USES.get(str(card.task).strip().lower(), f"the {_md(card.task)} task it was trained for")
    sources = _sources(card)
    data = f" (trained on {_source_list(sources)})" if sources else ""
    return (
        f"A {_md(card.method)} fine-tune of {_md(card.base_model)} for {use}{data}. "
        "Check it on your own data before relying on it, and keep a person in the loop for decisions that matter."
    )


def _training_data(card: CardData) -> str:
    if not card.datasets:
        return "No datasets recorded."
    rows = [
        [
            _md(ds.get("role")),
            _num(ds.get("rows")) if _is_number(ds.get("rows")) else _md(ds.get("rows")),
            _source_list([s for s in ds.get("sources") or [] if _plain(s)]),
            _md(_short_hash(ds.get("hash"))),
        ]
        for ds in card.datasets
    ]
    return markdown_table(["role", "rows", "sources", "hash"], rows, align="lrll")


def _hyper_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return _md(value, CELL_CHARS)


def _method(card: CardData) -> str:
    lines = [f"Method: {_md(card.method)} ({_library(card.method)}); task: {_md(card.task)}."]
    if card.hyperparameters:
        rows = [[_md(key, CELL_CHARS), _hyper_value(value)] for key, value in card.hyperparameters.items()]
        lines += ["", markdown_table(["parameter", "value"], rows, align="ll")]
    else:
        lines += ["", "No hyperparameters recorded."]
    return "\n".join(lines)


def _metric_name(row: MetricRow) -> str:
    return _md(row.name) + ("" if row.higher_is_better else " (lower is better)")


def _metrics(card: CardData) -> str:
    n = card.eval_examples
    intro = f"On {n:,} held-out item{'s' if n != 1 else ''}; brackets hold 95% intervals, delta is tuned minus base."
    if not card.metrics:
        return intro + "\n\nNo metrics recorded."
    rows = []
    for row in card.metrics:
        delta = _delta(row.base, row.tuned)
        rows.append(
            [
                _metric_name(row),
                _with_interval(_finite(row.base), row.base_interval),
                _with_interval(_finite(row.tuned), row.tuned_interval),
                _with_interval(delta, row.delta_interval if delta is not None else None, signed=True),
                _verdict(delta, row.higher_is_better, row.delta_interval),
            ]
        )
    table = markdown_table(["metric", "base [95%]", "tuned [95%]", "delta [95%]", "tuned vs base"], rows, "lrrrl")
    return intro + "\n\n" + table


def _slices(card: CardData) -> str:
    if not card.slices:
        return "No slices: the held-out set was not broken down by source, label or meta field."
    fields: dict[str, list[SliceRow]] = {}
    for row in card.slices:
        fields.setdefault(_plain(row.field), []).append(row)
    parts = []
    for name, rows in fields.items():
        table_rows = []
        for row in rows:
            delta = _delta(row.base, row.tuned)
            table_rows.append(
                [
                    _md(row.value, CELL_CHARS),
                    _num(row.n),
                    _md(row.metric),
                    _num(_finite(row.base)),
                    _num(_finite(row.tuned)),
                    _signed(delta),
                    _verdict(delta, _higher_is_better(row.metric, card)),
                ]
            )
        header = ["value", "n", "metric", "base", "tuned", "delta", "tuned vs base"]
        parts.append(f"### By {_md(name)}\n\n" + markdown_table(header, table_rows, "lrlrrrl"))
    return "\n\n".join(parts)


def _failures(card: CardData) -> str:
    if not card.failures:
        return "No failure samples recorded."
    rows = [
        [
            str(i),
            _md(sample.get("input"), FAILURE_CHARS),
            _md(sample.get("reference"), FAILURE_CHARS),
            _md(sample.get("prediction"), FAILURE_CHARS),
        ]
        for i, sample in enumerate(card.failures, 1)
    ]
    intro = f"Held-out items the tuned model got wrong (texts shortened to {FAILURE_CHARS} characters)."
    return intro + "\n\n" + markdown_table(["#", "input", "reference", "prediction"], rows, align="rlll")


COMPUTE_ROWS = (
    ("tokens", "tokens", 0),
    ("seconds", "seconds", 1),
    ("tokens_per_second", "tokens/s", 1),
    ("peak_rss_mb", "peak memory (MB)", 0),
    ("steps", "steps", 0),
    ("hardware", "hardware", 0),
)


def _compute_value(value, digits: int) -> str:
    if _is_number(value) and math.isfinite(value):
        return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return _md(value, CELL_CHARS)


def _compute(card: CardData) -> str:
    compute = card.compute or {}
    rows = [[label, _compute_value(compute.get(key), digits)] for key, label, digits in COMPUTE_ROWS]
    known = {key for key, _, _ in COMPUTE_ROWS}
    rows += [[_md(key), _compute_value(value, 2)] for key, value in compute.items() if key not in known]
    return markdown_table(["quantity", "value"], rows, align="lr")


def _limitations(card: CardData) -> str:
    lines = []
    n = card.eval_examples
    if n < SMALL_EVAL:
        lines.append(
            f"The held-out set is small ({n:,} item{'s' if n != 1 else ''}), so the 95% intervals are wide: "
            "differences inside them may be noise."
        )
    lines.append(
        "The metrics are on held-out data from the same distribution as the training data; "
        "they say little about other inputs, domains or languages."
    )
    lines.append("The model keeps the limitations and biases of its base model and can produce wrong or made-up text.")
    for row in card.metrics:
        delta = _delta(row.base, row.tuned)
        if delta is not None and delta != 0 and (delta > 0) != row.higher_is_better:
            lines.append(
                f"Overall {_md(row.name)} is worse than the base model: {_num(_finite(row.tuned))} tuned "
                f"against {_num(_finite(row.base))} base."
            )
    for row in card.slices:
        delta = _delta(row.base, row.tuned)
        if delta is not None and delta != 0 and (delta > 0) != _higher_is_better(row.metric, card):
            lines.append(
                f"Worse than the base model on the slice {_md(row.field)} = {_md(row.value, CELL_CHARS)} "
                f"({_md(row.metric)} {_num(_finite(row.tuned))} tuned against {_num(_finite(row.base))} base, "
                f"n = {_num(row.n)})."
            )
    lines += [text for text in (_md(line, empty="") for line in card.limitations or []) if text]
    return "\n".join(f"- {line}" for line in lines)


def _gate(card: CardData) -> str:
    gate = card.gate
    if gate is None:
        return "Not gated yet: this version has not been through a promotion gate."
    alias = _md(gate.get("alias"), empty="")
    target = f" for alias {alias}" if alias else ""
    when = f" on {_md(gate.get('time'))}" if _plain(gate.get("time")) else ""
    if gate.get("forced"):
        status = (
            f"**Forced**{target}{when}: promoted by hand although the gate "
            + ("passed." if gate.get("passed") else "refused it.")
        )
    elif gate.get("passed"):
        status = f"**Passed**{target}{when}."
    else:
        status = f"**Refused**{target}{when}: the version was not promoted."
    lines = [status]
    if _plain(gate.get("reason")):
        lines.append(f"Reason: {_md(gate.get('reason'))}")
    if _plain(gate.get("message")):
        lines.append(f"Gate message: {_md(gate.get('message'))}")
    details = []
    if _plain(gate.get("method")):
        details.append(f"test: {_md(gate.get('method'))}")
    for key, label in (("delta", "delta"), ("p_value", "p-value"), ("n", "items")):
        value = gate.get(key)
        if _is_number(value):
            text = f"{value:.3g}" if key == "p_value" else _signed(value) if key == "delta" else _num(value)
            details.append(f"{label}: {text}")
    if _is_number(gate.get("low")) and _is_number(gate.get("high")):
        details.append(f"95% interval: [{_num(gate['low'])}, {_num(gate['high'])}]")
    text = "\n\n".join(lines)
    if details:
        text += "\n\n" + "\n".join(f"- {d}" for d in details)
    return text


SECTIONS = (
    ("Intended use", _intended_use),
    ("Training data", _training_data),
    ("Method and hyperparameters", _method),
    ("Metrics against the base model", _metrics),
    ("By slice", _slices),
    ("Failure samples", _failures),
    ("Compute", _compute),
    ("Limitations", _limitations),
    ("Promotion gate", _gate),
)


def render_card(card: CardData) -> str:
    """The whole ``MODEL_CARD.md``: front matter, title, summary and the sections in order."""
    parts = [_front_matter(card), f"# {_md(card.name)} v{_md(card.version)}", _summary(card)]
    parts += [f"## {title}\n\n{build(card)}" for title, build in SECTIONS]
    return "\n\n".join(parts).rstrip() + "\n"
