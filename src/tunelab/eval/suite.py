"""Evaluate one model on a task's held-out examples, and the base and the tuned model side by side.

A task is evaluated as labels when its answers come from a small fixed set (text/label data, or
chat data whose answers repeat), and as free text otherwise. Both arms get the same prompts.
``evaluate_arms`` is the one base-vs-tuned comparison every model kind goes through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tunelab.data.records import Record
from tunelab.data.split import row_hash
from tunelab.data.templates import Encoded, encode_chat, encode_text, prompt_text, to_messages
from tunelab.eval.metrics import label_arm, perplexity, text_metrics
from tunelab.inference.generate import generate
from tunelab.inference.scoring import choice_probabilities, heldout_nll, score_choices
from tunelab.memory import release_memory
from tunelab.modeling.methods import adds_virtual_tokens
from tunelab.modeling.precision import autocast_like

# (model, arm name) -> (metrics, per-example predictions) of one arm
EvaluateArm = Callable[[object, str], tuple[dict, list[dict]]]


@dataclass
class EvalTask:
    """What both arms are evaluated on: prompts, references, label choices and held-out loss examples."""

    kind: str
    inputs: list[str]
    prompts: list[str]
    references: list[str]
    choices: list[str] | None
    heldout: list[Encoded]
    records: list[Record] = field(default_factory=list)  # the evaluated rows, in the order of inputs


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
    return EvalTask(kind, inputs, prompts, references, choices, heldout, list(test))


def evaluate_model(model, tokenizer, task: EvalTask, batch_size: int, max_new_tokens: int, max_length: int,
                   arm: str) -> tuple[dict, list[dict]]:
    """Metrics and per-example predictions ({prediction, correct, confidence}) for one causal LM."""
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


def prediction_rows(task: EvalTask, arms: dict[str, list[dict]]) -> list[dict]:
    """Rows for predictions.jsonl: input, reference and each arm's prediction side by side. With the
    task's records, each row also names its item (the row hash, which pairs items across runs) and the
    record's meta (slices such as the mix source)."""
    rows = []
    for i, (text, reference) in enumerate(zip(task.inputs, task.references)):
        row = {"id": i, "input": text, "reference": reference}
        if task.records:
            row["item"] = row_hash(task.records[i])
            if task.records[i].meta:
                row["meta"] = task.records[i].meta
        for arm, preds in arms.items():
            row[f"{arm}_prediction"] = preds[i]["prediction"]
            row[f"{arm}_correct"] = preds[i]["correct"]
            if "confidence" in preds[i]:
                row[f"{arm}_confidence"] = preds[i]["confidence"]
        rows.append(row)
    return rows


@contextmanager
def base_model(model, load_base: Callable[[], object] | None) -> Iterator[object]:
    """The model a tuned ``model`` started from: its adapters disabled, the untouched model under peft's
    virtual tokens (peft's generate would still add them with adapters disabled), or, for whole-model
    methods, ``load_base()`` on the tuned model's device."""
    if adds_virtual_tokens(model):
        yield model.get_base_model()
    elif hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        base = load_base().to(next(model.parameters()).device)
        yield base
        del base


def evaluate_arms(model, evaluate: EvaluateArm, baseline: bool, load_base: Callable[[], object] | None = None,
                  ) -> tuple[dict, dict]:
    """The base model (when ``baseline``) and the tuned ``model``, scored by the same ``evaluate``.

    Returns ({arm: metrics}, {arm: per-example predictions}) for arms "base" and "tuned".
    """
    metrics, arms = {}, {}
    if baseline:
        with base_model(model, load_base) as base:
            metrics["base"], arms["base"] = evaluate(base, "base")
    metrics["tuned"], arms["tuned"] = evaluate(model, "tuned")
    return metrics, arms


def causal_lm_arm(tokenizer, task: EvalTask, config) -> EvaluateArm:
    """``evaluate`` for evaluate_arms: a causal LM scored on ``task`` with the run's eval settings."""
    def evaluate(model, arm: str) -> tuple[dict, list[dict]]:
        return evaluate_model(model, tokenizer, task, config.eval.batch_size, config.eval.max_new_tokens,
                              config.train.max_length, arm)
    return evaluate
