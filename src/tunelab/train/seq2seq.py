"""Sequence-to-sequence recipe for encoder-decoder models (T5, BART): setup -> train -> evaluate -> report.

Every record becomes one pair of plain texts. A chat record's source is the conversation before its
last assistant turn and its target is that turn; a text/label row's source is the label prompt and its
target is the label. The encoder reads the source and the decoder learns the target, teacher-forced,
with the loss on every target token (end token included) summed and divided by the target tokens of
the whole accumulated batch. Base and tuned models are compared on the same test pairs: each label
scored as the target (probabilities, calibration) when answers come from a small set, greedy
generation and text metrics otherwise, and teacher-forced held-out loss either way. Every method
applies: peft's adapters (lora, dora, rslora, qlora on a 4-bit base, ia3), its virtual tokens (prefix
tuning in every attention layer, prompt tuning before the encoder's input), and freeze, which trains
the last decoder blocks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

from tunelab.config import RunConfig
from tunelab.data.dataset import Splits
from tunelab.data.records import Record
from tunelab.data.templates import IGNORE_INDEX, Encoded
from tunelab.errors import TunelabError
from tunelab.eval.metrics import perplexity, text_metrics
from tunelab.eval.suite import EvalTask, label_choices, label_results, prediction_rows
from tunelab.models import resolve_model
from tunelab.precision import autocast_like, pick_dtype
from tunelab.train.common import (AnswerLossTrainer, JsonlLogCallback, finish_run, optimizer_steps, train_and_measure,
                                  training_arguments)
from tunelab.train.loss import adds_virtual_tokens
from tunelab.train.methods import WHOLE_MODEL_METHODS, quantization_config
from tunelab.train.setup import cap_examples, start_run, with_method, write_data_summary


# ---- records -> (source, target) pairs -> token ids

@dataclass
class Pair:
    source: str  # what the encoder reads
    target: str  # what the decoder learns to write
    shown: str  # the input as predictions.jsonl shows it


def record_pair(record: Record, choices: list[str] | None, label_prompt: str, system_prompt: str | None) -> Pair:
    """The source and target texts of one chat or labeled record."""
    if record.kind == "labeled":
        source = label_prompt.format(text=record.text, choices=", ".join(choices or []))
        return Pair("\n\n".join(filter(None, [system_prompt, source])), record.label, record.text)
    if record.kind != "chat":
        raise TunelabError("raw-text records have no target; task: seq2seq needs chat or text/label rows")
    messages = record.messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    system = [m["content"] for m in messages[:last] if m["role"] == "system"] or [system_prompt]
    turns = [m for m in messages[:last] if m["role"] != "system"]
    if len(turns) == 1:
        conversation = turns[0]["content"]  # a single question reads best as itself
    else:
        conversation = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)
    return Pair("\n\n".join(filter(None, [*system, conversation])), messages[last]["content"], turns[-1]["content"])


def record_pairs(records: list[Record], choices: list[str] | None, config: RunConfig) -> list[Pair]:
    return [record_pair(r, choices, config.data.label_prompt, config.data.system_prompt) for r in records]


def target_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Target token ids, always ending in the end token so the decoder learns where to stop."""
    encoded = tokenizer(text_target=texts, truncation=True, max_length=max_length)["input_ids"]
    eos = tokenizer.eos_token_id
    return [ids if eos is None or ids[-1:] == [eos] else ids[:max_length - 1] + [eos] for ids in encoded]


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int) -> list[Encoded]:
    """Source ids as input_ids and target ids as labels, each cut at max_length."""
    if not pairs:
        return []  # the tokenizer refuses an empty batch
    sources = tokenizer([p.source for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    targets = target_ids(tokenizer, [p.target for p in pairs], max_length)
    return [Encoded(source, target) for source, target in zip(sources, targets)]


def as_feature(example: Encoded) -> dict:
    return {"input_ids": example.input_ids, "attention_mask": [1] * len(example.input_ids), "labels": example.labels}


# ---- model

def load_seq2seq(config: RunConfig, splits: Splits | None = None):
    """Tokenizer and encoder-decoder model (4-bit for qlora); a decoder-only model is refused in one line."""
    quantization = quantization_config(config)
    model_dir = resolve_model(config.model)
    model_config = AutoConfig.from_pretrained(model_dir)
    if not getattr(model_config, "is_encoder_decoder", False):
        raise TunelabError(f"task: seq2seq needs an encoder-decoder model (T5, BART, ...); {config.model} is a "
                           f"decoder-only {model_config.model_type} model; use task: sft")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, quantization_config=quantization,
                                                      dtype=pick_dtype(config.train.precision, config.method))
    except ValueError as exc:
        raise TunelabError(f"{config.model} ({model_config.model_type}) has no text-to-text model class; "
                           f"task: seq2seq needs a text encoder-decoder such as T5 or BART ({exc})") from None
    return tokenizer, model


def target_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over target tokens (teacher-forced) and the number of target tokens."""
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=batch["decoder_input_ids"], use_cache=False).logits
    total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total, int(labels.ne(IGNORE_INDEX).sum())


def collator(tokenizer, model) -> DataCollatorForSeq2Seq:
    """Pads sources with the pad token and targets with -100, and shifts targets into decoder inputs."""
    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


# ---- train

def fit_seq2seq(model, tokenizer, examples: list[Encoded], config: RunConfig, run_dir: Path, resume: bool,
                callbacks=()) -> dict:
    """Train with Trainer on length-grouped, dynamically padded batches; return training figures.

    ``callbacks`` are extra Trainer callbacks, for example a sweep's pruning callback."""
    args = training_arguments(config, run_dir / "checkpoints", total_steps=optimizer_steps(config, len(examples)))
    args.train_sampling_strategy = "group_by_length"
    batch = config.train.batch_size * config.train.gradient_accumulation
    tokens = [len(e.input_ids) + len(e.labels) for e in examples]
    tokens_per_step = [sum(tokens[i:i + batch]) for i in range(0, len(examples), batch)]
    trainer = AnswerLossTrainer(
        model=model,
        args=args,
        train_dataset=[as_feature(e) for e in examples],
        data_collator=collator(tokenizer, model),
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(run_dir / "train_log.jsonl", tokens_per_step), *callbacks],
        loss_fn=target_loss_sum,
    )
    return train_and_measure(trainer, run_dir, resume, tokens_per_step) | {"examples": len(examples)}


# ---- evaluate

def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _encode_sources(tokenizer, sources: list[str], max_length: int, device) -> dict:
    return tokenizer(sources, truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(device)


@torch.no_grad()
def score_targets(model, tokenizer, sources: list[str], choices: list[str], batch_size: int, max_length: int,
                  desc: str = "scoring") -> list[list[float]]:
    """Log-likelihood of each choice as the whole target, end token included: [source][choice].

    The encoder runs once per batch of sources; the decoder then scores every choice against it.
    Prefix and prompt tuning add their virtual tokens inside peft's forward, so with those the whole
    model runs once per choice.
    """
    device = next(model.parameters()).device
    choice_ids = target_ids(tokenizer, choices, max_length)
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))  # similar lengths pad less
    scores: list[list[float]] = [[] for _ in sources]
    for batch in tqdm(list(_batches(order, batch_size)), desc=desc, leave=False):
        enc = _encode_sources(tokenizer, [sources[i] for i in batch], max_length, device)
        if adds_virtual_tokens(model):
            source = {"input_ids": enc["input_ids"]}
        else:
            source = {"encoder_outputs": model.get_encoder()(input_ids=enc["input_ids"],
                                                             attention_mask=enc["attention_mask"])}
        for ids in choice_ids:
            labels = torch.tensor([ids] * len(batch), device=device)
            logits = model(**source, attention_mask=enc["attention_mask"], use_cache=False,
                           decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels)).logits
            logprobs = F.log_softmax(logits.float(), dim=-1).gather(2, labels[..., None]).squeeze(2).sum(1)
            for i, value in zip(batch, logprobs.tolist()):
                scores[i].append(value)
    return scores


@torch.no_grad()
def generate_targets(model, tokenizer, sources: list[str], max_new_tokens: int, batch_size: int, max_length: int,
                     desc: str = "generating") -> list[str]:
    """Greedy, batched generation from the encoded sources; stops at the end token."""
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    outputs = [""] * len(sources)
    for batch in tqdm(list(_batches(order, batch_size)), desc=desc, leave=False):
        enc = _encode_sources(tokenizer, [sources[i] for i in batch], max_length, device)
        generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for i, ids in zip(batch, generated):
            outputs[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return outputs


@torch.no_grad()
def heldout_target_nll(model, tokenizer, examples: list[Encoded], batch_size: int,
                       desc: str = "held-out loss") -> tuple[float, int]:
    """Summed teacher-forced target loss and target-token count over held-out pairs."""
    device = next(model.parameters()).device
    collate = collator(tokenizer, model)
    total, tokens = 0.0, 0
    for batch in tqdm(list(_batches(examples, batch_size)), desc=desc, leave=False):
        tensors = {k: v.to(device) for k, v in collate([as_feature(e) for e in batch]).items()}
        loss, n = target_loss_sum(model, tensors)
        total += float(loss)
        tokens += n
    return total, tokens


def evaluate_seq2seq(model, tokenizer, task: EvalTask, config: RunConfig, arm: str) -> tuple[dict, list[dict]]:
    """Metrics and per-example predictions ({prediction, correct, confidence}) for one model."""
    batch_size, max_length = config.eval.batch_size, config.train.max_length
    metrics: dict = {}
    model.eval()
    with autocast_like(model):
        if task.choices:
            scores = score_targets(model, tokenizer, task.prompts, task.choices, batch_size, max_length,
                                   desc=f"{arm}: scoring")
            label_scores, predictions = label_results(scores, task.choices, task.references)
            metrics.update(label_scores)
        else:
            outputs = generate_targets(model, tokenizer, task.prompts, config.eval.max_new_tokens, batch_size,
                                       max_length, desc=f"{arm}: generating")
            metrics.update(text_metrics(task.references, outputs))
            predictions = [{"prediction": o, "correct": None} for o in outputs]
        if task.heldout:
            nll, tokens = heldout_target_nll(model, tokenizer, task.heldout, batch_size, desc=f"{arm}: held-out loss")
            metrics["loss"] = nll / max(tokens, 1)
            metrics["perplexity"] = perplexity(nll, tokens)
    return metrics, predictions


def eval_task(tokenizer, test: list[Record], heldout: list[Record], kind: str, choices: list[str] | None,
              config: RunConfig) -> EvalTask:
    """What both arms are evaluated on: the test pairs' sources and targets, and held-out target loss."""
    shown = record_pairs(test, choices, config)
    encoded = encode_pairs(tokenizer, record_pairs(heldout, choices, config), config.train.max_length)
    return EvalTask(kind, [p.shown for p in shown], [p.source for p in shown], [p.target for p in shown], choices,
                    [e for e in encoded if e.labels])


def evaluate_arms(model, tokenizer, task: EvalTask, config: RunConfig) -> tuple[dict, dict]:
    """The base and the tuned model on the same task; ``tunelab eval`` scores seq2seq runs with this too.

    The base is the model with its adapters disabled, the untouched model under virtual tokens (peft's
    generate would still add them with adapters disabled), or, for whole-model methods, reloaded.
    """
    metrics, arms = {}, {}
    if config.eval.baseline:
        if config.method in WHOLE_MODEL_METHODS:
            base = load_seq2seq(config)[1].to(next(model.parameters()).device)
            metrics["base"], arms["base"] = evaluate_seq2seq(base, tokenizer, task, config, "base")
            del base
        elif adds_virtual_tokens(model):
            metrics["base"], arms["base"] = evaluate_seq2seq(model.get_base_model(), tokenizer, task, config, "base")
        else:
            with model.disable_adapter():
                metrics["base"], arms["base"] = evaluate_seq2seq(model, tokenizer, task, config, "base")
    metrics["tuned"], arms["tuned"] = evaluate_seq2seq(model, tokenizer, task, config, "tuned")
    return metrics, arms


# ---- the recipe

def run_seq2seq(config: RunConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    """``callbacks`` are extra Trainer callbacks, for example a sweep's pruning callback."""
    # ---- setup
    run = start_run(config, resume, overwrite, kinds=("chat", "labeled"), load=load_seq2seq,
                    hint="task: seq2seq learns a target from a source: give prompt/completion, chat or text/label "
                         "rows (raw text has no target; use task: pretrain)")
    splits, tokenizer, length = run.splits, run.tokenizer, config.train.max_length
    choices = label_choices(splits.train, splits.kind)
    data_summary = write_data_summary(run.run_dir, splits, labels=choices)
    examples = [e for e in encode_pairs(tokenizer, record_pairs(splits.train, choices, config), length) if e.labels]
    if not examples:
        raise TunelabError("no training example has a non-empty target")
    random.Random(config.train.seed).shuffle(examples)
    task = eval_task(tokenizer, cap_examples(splits.test, config), cap_examples(splits.val or splits.test, config),
                     splits.kind, choices, config)
    model, counts = with_method(run.model, config, task_type="SEQ_2_SEQ_LM")
    for param in model.parameters():  # a bf16 base still trains its adapters in fp32
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()

    # ---- train, then save the adapter (or the whole model) with its tokenizer
    train_metrics = fit_seq2seq(model, tokenizer, examples, config, run.run_dir, resume, callbacks) | counts
    out_dir = run.run_dir / ("model" if config.method in WHOLE_MODEL_METHODS else "adapter")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    # ---- evaluate: base and tuned on the same test pairs
    metrics, arms = evaluate_arms(model, tokenizer, task, config)

    # ---- report
    return finish_run(run.run_dir, metrics | {"train": train_metrics, "data": data_summary},
                      prediction_rows(task, arms))
