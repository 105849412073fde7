"""``tunelab export``: merge a run's adapter into its base and write a standalone model folder.

The folder (safetensors, tokenizer, chat template, generation config) loads with plain
``AutoModelForCausalLM.from_pretrained`` (``AutoModelForSeq2SeqLM`` for task seq2seq), without peft.
A merge can silently change what a model says (wrong scaling, dtype rounding, unmerged modules), so
before anything is written the merged model is compared with the adapter model on golden prompts:
next-token log-probs (a seq2seq model's first target token) and greedy outputs. A failed check
writes ``export_check.json`` into the run folder and no model folder.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from tunelab.config import RunConfig
from tunelab.data.pairs import record_pairs
from tunelab.data.records import Record
from tunelab.data.templates import prompt_text, render, to_messages, with_system_prompt
from tunelab.errors import TunelabError
from tunelab.inference.generate import generate
from tunelab.inference.seq2seq import generate_targets
from tunelab.modeling.load import load_tokenizer
from tunelab.modeling.methods import VIRTUAL_TOKEN_METHODS, WHOLE_MODEL_METHODS
from tunelab.modeling.sealed_weights import from_pretrained, save_pretrained
from tunelab.runs.folder import RunFolder
from tunelab.runs.load import load_run
from tunelab.security import files as sealed

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Largest allowed log-prob difference between the adapter model (fp32) and the exported model.
# fp32: the merged weights differ from base + adapter only by summation order (about 1e-6 in
# log-probs), so anything above 1e-3 is a real merge problem. bf16/fp16: the export runs with every
# weight and activation rounded to an 8-bit (bf16) or 11-bit (fp16) mantissa, and the maximum over
# the whole vocabulary picks up the worst of it. Rounding alone, measured on SmolLM2-135M over 16
# chat prompts: bf16 max 0.61 (median 0.40), fp16 max 0.09 (median 0.05). The defaults leave about
# 1.6x (bf16) and 2.8x (fp16) headroom over that; a broken merge (wrong scaling, unmerged layers)
# moves log-probs by whole units.
DEFAULT_MAX_DIFF = {"fp32": 1e-3, "bf16": 1.0, "fp16": 0.25}
MAX_GOLDEN_PROMPTS = 16
GOLDEN_NEW_TOKENS = 16
FALLBACK_QUESTIONS = [
    "What is the capital of France?",
    "Hello! How are you today?",
    "Write one sentence about the sea.",
    "Is this review positive or negative? The acting was wonderful but the plot was dull.",
    "List three colors.",
    "Explain what a fine-tuned language model is in one sentence.",
]


@dataclass
class GoldenPrompt:
    shown: str  # what the user recognizes: the input text, not the rendered template
    text: str   # the prompt exactly as the model sees it


@dataclass
class Snapshot:
    """One model's answers to the golden prompts: last-position log-probs (fp32) and greedy outputs."""

    logprobs: list[torch.Tensor]
    outputs: list[str]


def export_run(run_dir: str | Path, out: str | Path, dtype: str = "fp32", max_diff: float | None = None) -> dict:
    """Export a run as a standalone model folder at ``out``; return the check written with it."""
    run_dir, out = Path(run_dir), Path(out)
    config = RunFolder(run_dir).config()
    if config.task not in ("sft", "pretrain", "seq2seq"):
        raise TunelabError(f"task {config.task} runs cannot be exported yet; export handles causal LM runs "
                           f"(task sft or pretrain) and encoder-decoder runs (task seq2seq)")
    if config.method in VIRTUAL_TOKEN_METHODS:
        raise TunelabError(f"method {config.method} cannot be merged into the base weights; serve it as an adapter")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TunelabError(f"output folder {out} already exists; remove it or choose another --out")
    if config.method in WHOLE_MODEL_METHODS:
        return export_whole_model(run_dir, config, out, dtype)
    if not (run_dir / "adapter").is_dir():
        raise TunelabError(f"run folder {run_dir} has no adapter/; did the run finish?")

    max_diff = DEFAULT_MAX_DIFF[dtype] if max_diff is None else max_diff
    loaded = load_run(run_dir, for_merging=True)  # fp32 base: see merge_adapter
    tokenizer, adapter_model = loaded.tokenizer, loaded.model
    prompts = golden_prompts(run_dir, config, tokenizer)
    source_length = config.train.max_length if config.task == "seq2seq" else None
    reference = snapshot(adapter_model, tokenizer, prompts, source_length)
    merged = merge_adapter(adapter_model, dtype)
    check = compare(reference, snapshot(merged, tokenizer, prompts, source_length), prompts, max_diff)
    check = {"run": str(run_dir), "method": config.method, "dtype": dtype} | check
    if not check["passed"]:
        sealed.write_json(run_dir / "export_check.json", check)  # quotes golden prompts
        raise TunelabError(refusal_message(check, run_dir / "export_check.json"))
    set_generation_eos(merged, tokenizer)
    write_model_folder(merged, tokenizer, check, out)
    print(f"exported {config.method} run {run_dir} merged into its base as {dtype} to {out}: "
          f"{len(prompts)} golden prompts, max log-prob difference {check['max_logprob_diff']:.2e} "
          f"(limit {max_diff:g}), greedy outputs identical", flush=True)
    return check


def model_class(config: RunConfig):
    """The transformers class a run's model loads with: encoder-decoder for task seq2seq, else causal LM."""
    return AutoModelForSeq2SeqLM if config.task == "seq2seq" else AutoModelForCausalLM


def merge_adapter(adapter_model, dtype: str):
    """Fold the adapter into the base weights (in fp32) and cast the plain model to the export dtype.

    Merging adds the adapter's delta to the base weights in the base weights' dtype. In bf16 both the
    delta B@A and the sum W + B@A are rounded to an 8-bit mantissa, and a small fine-tuning delta is
    often below bf16's spacing at |W|, so much of it would be rounded away. So the adapter model is
    loaded on an fp32 base (``load_run(..., for_merging=True)``), and the result is rounded once, at
    the end, to the export dtype. QLoRA adapters are likewise merged into the full-precision base
    rather than the 4-bit weights they trained against.
    """
    merged = adapter_model.merge_and_unload(safe_merge=True)  # safe_merge: refuse NaNs in the adapter
    return merged.to(EXPORT_DTYPES[dtype]).eval()


def golden_prompts(run_dir: Path, config: RunConfig, tokenizer) -> list[GoldenPrompt]:
    """Up to 16 held-out inputs from the run's predictions, rendered as training rendered them.

    predictions.jsonl keeps each example's input text and reference answer; rebuilding the record
    and rendering it through the same to_messages/prompt_text path gives the training prompt. Runs
    without predictions (pretraining) fall back to a few generic questions.
    """
    run = RunFolder(run_dir)
    rows = run.predictions()[:MAX_GOLDEN_PROMPTS]
    if not rows and config.task == "seq2seq":
        rows = [{"input": q, "reference": ""} for q in FALLBACK_QUESTIONS]
    if not rows:
        return [GoldenPrompt(q, _fallback_prompt(q, config, tokenizer)) for q in FALLBACK_QUESTIONS]
    summary = run.data_summary() or {}
    choices = summary.get("labels")
    prompts = []
    for row in rows:
        answer = row.get("reference") or ""
        if summary.get("kind") == "labeled":
            record = Record(kind="labeled", text=row["input"], label=answer)
        else:
            record = Record(kind="chat", messages=[{"role": "user", "content": row["input"]},
                                                   {"role": "assistant", "content": answer}])
        if config.task == "seq2seq":  # the encoder's source text, as the recipe builds it
            source = record_pairs([record], choices, config.data.label_prompt, config.data.system_prompt)[0].source
            prompts.append(GoldenPrompt(row["input"], source))
            continue
        messages = to_messages(record, choices, config.data.label_prompt, config.data.system_prompt)
        prompts.append(GoldenPrompt(row["input"], prompt_text(tokenizer, messages)))
    return prompts


def _fallback_prompt(question: str, config: RunConfig, tokenizer) -> str:
    if not tokenizer.chat_template:
        return question  # a base model trained on raw text: plain text is what it was tuned on
    messages = with_system_prompt([{"role": "user", "content": question}], config.data.system_prompt)
    return render(tokenizer, messages, add_generation_prompt=True)


@torch.no_grad()
def snapshot(model, tokenizer, prompts: list[GoldenPrompt], source_length: int | None = None) -> Snapshot:
    """With ``source_length`` (a seq2seq model), the encoder reads each prompt cut at that many tokens, and
    the log-probs are those of the first target token."""
    if source_length:
        return _seq2seq_snapshot(model, tokenizer, [p.text for p in prompts], source_length)
    texts = [p.text for p in prompts]
    logprobs = []
    for text in texts:  # one at a time: no padding, so the last position is the prompt's last token
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids.to(model.device), use_cache=False).logits[0, -1]
        logprobs.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    outputs = generate(model, tokenizer, texts, max_new_tokens=GOLDEN_NEW_TOKENS, batch_size=MAX_GOLDEN_PROMPTS,
                       desc="golden prompts")
    return Snapshot(logprobs, outputs)


def _seq2seq_snapshot(model, tokenizer, texts: list[str], source_length: int) -> Snapshot:
    logprobs = []
    start = torch.tensor([[model.config.decoder_start_token_id]], device=model.device)
    for text in texts:  # tokenized as the recipe tokenizes sources (special tokens included)
        ids = tokenizer(text, truncation=True, max_length=source_length, return_tensors="pt")["input_ids"]
        ids = ids.to(model.device)
        logits = model(input_ids=ids, decoder_input_ids=start, use_cache=False).logits[0, -1]
        logprobs.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    outputs = generate_targets(model, tokenizer, texts, GOLDEN_NEW_TOKENS, MAX_GOLDEN_PROMPTS, source_length,
                               desc="golden prompts")
    return Snapshot(logprobs, outputs)


def compare(reference: Snapshot, merged: Snapshot, prompts: list[GoldenPrompt], max_diff: float) -> dict:
    """Per-prompt figures and the verdict: every log-prob within ``max_diff`` and every output equal."""
    rows = []
    for prompt, ref_lp, new_lp, ref_out, new_out in zip(prompts, reference.logprobs, merged.logprobs,
                                                        reference.outputs, merged.outputs):
        diff = float((ref_lp - new_lp).abs().max())
        rows.append({"input": prompt.shown, "logprob_diff": diff if math.isfinite(diff) else None,
                     "adapter_output": ref_out, "merged_output": new_out, "same_output": ref_out == new_out})
    # A NaN or inf difference (fp16 overflow, a broken merge) fails: it is recorded as None.
    within = [r["logprob_diff"] is not None and r["logprob_diff"] <= max_diff for r in rows]
    finite = [r["logprob_diff"] for r in rows if r["logprob_diff"] is not None]
    return {"checked": True, "passed": all(within) and all(r["same_output"] for r in rows),
            "max_diff": max_diff, "max_logprob_diff": max(finite) if len(finite) == len(rows) else None,
            "greedy_mismatches": sum(not r["same_output"] for r in rows),
            "golden_new_tokens": GOLDEN_NEW_TOKENS, "prompts": rows}


def refusal_message(check: dict, check_path: Path) -> str:
    """One line naming the worst prompt: the largest log-prob difference, else the first changed output."""
    rows = check["prompts"]

    def badness(i: int) -> float:
        diff = rows[i]["logprob_diff"]
        return math.inf if diff is None else diff

    worst = max(range(len(rows)), key=badness)
    if badness(worst) <= check["max_diff"]:
        worst = next(i for i, r in enumerate(rows) if not r["same_output"])
    row = rows[worst]
    where = f"golden prompt {worst + 1} of {len(rows)} ({_clip(row['input'])})"
    diff = "not finite" if row["logprob_diff"] is None else f"{row['logprob_diff']:.3g}"
    if badness(worst) > check["max_diff"]:
        what = f"log-probs differ by {diff} (--max-diff {check['max_diff']:g})"
    else:
        what = (f"greedy output changed from {_clip(row['adapter_output'])} to {_clip(row['merged_output'])} "
                f"(log-prob difference {diff})")
    return (f"export refused: the merged {check['dtype']} model differs from the adapter model on {where}: {what}; "
            f"per-prompt figures in {check_path}")


def _clip(text: str, width: int = 50) -> str:
    return repr(text if len(text) <= width else text[:width - 3] + "...")


def set_generation_eos(model, tokenizer) -> None:
    """Stop generation at the chat template's end-of-turn token, the one training taught the model to emit."""
    config = model.generation_config
    existing = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    eos = [tokenizer.eos_token_id] + [t for t in existing if t is not None and t != tokenizer.eos_token_id]
    config.eos_token_id = eos[0] if len(eos) == 1 else eos
    config.pad_token_id = tokenizer.pad_token_id


def write_model_folder(model, tokenizer, check: dict, out: Path) -> None:
    """Write into a hidden sibling folder and rename it at the end: ``out`` is complete or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.exporting-", dir=out.parent))
    try:
        save_pretrained(model, staging)  # safetensors, encrypted when a master key is set
        tokenizer.save_pretrained(staging)  # with the chat template
        sealed.write_json(staging / "export_check.json", check)
        os.replace(staging, out)  # replaces an empty `out`; a non-empty one was refused up front
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_whole_model(run_dir: Path, config: RunConfig, out: Path, dtype: str) -> dict:
    """Full and freeze runs saved a whole model: re-save it in the export dtype; nothing to merge or check."""
    model_dir = RunFolder(run_dir).weights_dir
    tokenizer = load_tokenizer(model_dir)
    model = from_pretrained(model_class(config), model_dir, dtype=EXPORT_DTYPES[dtype])
    set_generation_eos(model, tokenizer)
    check = {"run": str(run_dir), "method": config.method, "dtype": dtype, "checked": False,
             "reason": f"method {config.method} saved a whole model: there is no adapter to merge, so the "
                       f"golden-prompt check is skipped"}
    write_model_folder(model, tokenizer, check, out)
    print(f"exported {config.method} run {run_dir} as {dtype} to {out} (re-saved model/; no adapter to merge, "
          f"golden-prompt check skipped)", flush=True)
    return check
