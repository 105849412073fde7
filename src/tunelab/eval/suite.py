"""Evaluate one model on a task's held-out examples, the same way for base and tuned models.

A task is evaluated as labels when its answers come from a small fixed set (text/label data, or
chat data whose answers repeat), and as free text otherwise. Both arms get the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data.records import Record
from tunelab.data.templates import Encoded, encode_chat, encode_text, prompt_text, record_to_messages
from tunelab.eval.evaluate import choice_probabilities, generate, heldout_nll, score_choices
from tunelab.eval.metrics import expected_calibration_error, label_metrics, perplexity, text_metrics
from tunelab.memory import release_memory
from tunelab.precision import autocast_like

MAX_LABELS = 20


@dataclass
class EvalTask:
    """What both arms are evaluated on: prompts, references, label choices and held-out loss examples."""

    kind: str
    inputs: list[str]
    prompts: list[str]
    references: list[str]
    choices: list[str] | None
    heldout: list[Encoded]


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if not system_prompt or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


def label_choices(train: list[Record], kind: str) -> list[str] | None:
    """The label set, or None when answers are free text."""
    if kind == "labeled":
        return sorted({r.label for r in train})
    if kind != "chat":
        return None
    answers = [r.messages[-1]["content"] for r in train if r.messages[-1]["role"] == "assistant"]
    distinct = set(answers)
    if len(distinct) <= MAX_LABELS and len(answers) >= 5 * len(distinct):
        return sorted(distinct)
    return None


def to_messages(record: Record, choices, label_prompt: str, system_prompt: str | None) -> list[dict]:
    return with_system_prompt(record_to_messages(record, label_prompt, choices), system_prompt)


def build_eval_task(tokenizer, test: list[Record], val: list[Record], kind: str, choices, label_prompt: str,
                    system_prompt: str | None, max_length: int) -> EvalTask:
    if kind == "text":
        heldout = [e for r in (val or test) for e in encode_text(tokenizer, r.text, max_length)]
        return EvalTask(kind, [], [], [], None, heldout)
    inputs, prompts, references = [], [], []
    for record in test:
        messages = to_messages(record, choices, label_prompt, system_prompt)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(prompt_text(tokenizer, messages[:last + 1]))
        references.append(messages[last]["content"])
        inputs.append(record.text if record.kind == "labeled" else messages[last - 1]["content"])
    heldout = [encode_chat(tokenizer, to_messages(r, choices, label_prompt, system_prompt), max_length)
               for r in (val or test)]
    return EvalTask(kind, inputs, prompts, references, choices, heldout)


def evaluate_model(model, tokenizer, task: EvalTask, batch_size: int, max_new_tokens: int, max_length: int,
                   arm: str) -> tuple[dict, list[dict]]:
    """Metrics and per-example predictions ({prediction, correct, confidence}) for one model."""
    release_memory()  # what training or the previous arm freed, so evaluation starts from live memory
    model.eval()
    with autocast_like(model):
        return _evaluate(model, tokenizer, task, batch_size, max_new_tokens, max_length, arm)


def _evaluate(model, tokenizer, task: EvalTask, batch_size: int, max_new_tokens: int, max_length: int,
              arm: str) -> tuple[dict, list[dict]]:
    metrics: dict = {}
    predictions: list[dict] = []
    if task.choices:
        scores = score_choices(model, tokenizer, task.prompts, task.choices, batch_size, desc=f"{arm}: scoring")
        label_scores, predictions = label_results(scores, task.choices, task.references)
        metrics.update(label_scores)
    elif task.prompts:
        outputs = generate(model, tokenizer, task.prompts, max_new_tokens, batch_size, desc=f"{arm}: generating")
        metrics.update(text_metrics(task.references, outputs))
        predictions = [{"prediction": o, "correct": None} for o in outputs]
    if task.heldout:
        nll, tokens = heldout_nll(model, task.heldout, max_length, tokenizer.pad_token_id,
                                  max(1, batch_size // 4), desc=f"{arm}: held-out loss")
        metrics["loss"] = nll / max(tokens, 1)
        metrics["perplexity"] = perplexity(nll, tokens)
    return metrics, predictions


def label_results(scores: list[list[float]], choices: list[str], references: list[str]) -> tuple[dict, list[dict]]:
    """Label metrics with calibration, and per-example predictions, from each example's label log-likelihoods."""
    probs = [choice_probabilities(s) for s in scores]
    predicted = [choices[max(range(len(p)), key=p.__getitem__)] for p in probs]
    return label_arm(predicted, [max(p) for p in probs], references, choices)


def label_arm(predicted: list[str], confidence: list[float], references: list[str], labels: list[str],
              ) -> tuple[dict, list[dict]]:
    """Label metrics and calibration of one arm, and its per-example predictions."""
    correct = [p == r for p, r in zip(predicted, references)]
    metrics = label_metrics(references, predicted, labels)
    metrics["ece"] = expected_calibration_error(confidence, correct)
    predictions = [{"prediction": p, "correct": c, "confidence": round(conf, 4)}
                   for p, c, conf in zip(predicted, correct, confidence)]
    return metrics, predictions


def prediction_rows(task: EvalTask, arms: dict[str, list[dict]]) -> list[dict]:
    """Rows for predictions.jsonl: input, reference and each arm's prediction side by side."""
    rows = []
    for i, (text, reference) in enumerate(zip(task.inputs, task.references)):
        row = {"id": i, "input": text, "reference": reference}
        for arm, preds in arms.items():
            row[f"{arm}_prediction"] = preds[i]["prediction"]
            row[f"{arm}_correct"] = preds[i]["correct"]
            if "confidence" in preds[i]:
                row[f"{arm}_confidence"] = preds[i]["confidence"]
        rows.append(row)
    return rows


def evaluate_arms(model, tokenizer, task: EvalTask, config, load_base_model) -> tuple[dict, dict]:
    """Evaluate the base model (adapters disabled, or reloaded) and the tuned model on one task."""
    args = (config.eval.batch_size, config.eval.max_new_tokens, config.train.max_length)
    metrics, arms = {}, {}
    if config.eval.baseline:
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                metrics["base"], arms["base"] = evaluate_model(model, tokenizer, task, *args, "base")
        else:
            base = load_base_model()
            metrics["base"], arms["base"] = evaluate_model(base, tokenizer, task, *args, "base")
            del base
    metrics["tuned"], arms["tuned"] = evaluate_model(model, tokenizer, task, *args, "tuned")
    return metrics, arms
