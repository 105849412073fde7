"""Forgetting check for continued pretraining: perplexity on general text, before and after training.

Training on a narrow domain can cost a model its general language ability. A small set of general
English paragraphs (``eval.forgetting_text``, by default the bundled data/general/general_text.jsonl)
is scored with the base model before training and with the tuned model after it; a rise in
perplexity is forgetting. The result goes to ``metrics["forgetting"]`` and report.md.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import BUNDLED_GENERAL_TEXT, RunConfig
from tunelab.data.formats import read_records
from tunelab.data.records import Record
from tunelab.eval.suite import build_eval_task, evaluate_model


class ForgettingCheck:
    """Reads the general text up front (a bad file fails before training), then measures both sides."""

    def __init__(self, path: str, records: list[Record], config: RunConfig):
        self.path = path
        self.records = records
        self.config = config
        self.base_perplexity: float | None = None

    @classmethod
    def from_config(cls, config: RunConfig) -> ForgettingCheck | None:
        """The check for a run, or None when eval.forgetting_text is null (or the bundled file is absent)."""
        path = config.eval.forgetting_text
        if path is None:
            return None
        if path == BUNDLED_GENERAL_TEXT and not Path(path).exists():
            print(f"forgetting check: off (the bundled general text is not installed at {path})", flush=True)
            return None
        records, _ = read_records(path, shape="text", on_error="raise")
        return cls(path, records, config)

    def perplexity(self, model, tokenizer, arm: str) -> float:
        length = self.config.train.max_length
        task = build_eval_task(tokenizer, [], self.records, "text", None, self.config.data.label_prompt, None, length)
        metrics, _ = evaluate_model(model, tokenizer, task, self.config.eval.batch_size,
                                    self.config.eval.max_new_tokens, length, f"{arm}, general text")
        return metrics["perplexity"]

    def measure_base(self, model, tokenizer) -> None:
        """Call with the base model, before training changes it."""
        self.base_perplexity = self.perplexity(model, tokenizer, "base")

    def compare(self, model, tokenizer) -> dict:
        """Tuned perplexity against the base's; prints one line and returns metrics["forgetting"]."""
        tuned = self.perplexity(model, tokenizer, "tuned")
        base = self.base_perplexity
        change = 100.0 * (tuned - base) / base
        print(f"forgetting: general-text perplexity {base:.3f} -> {tuned:.3f} ({change:+.1f}%) on "
              f"{len(self.records)} paragraphs of {self.path}", flush=True)
        return {"base_perplexity": round(base, 4), "tuned_perplexity": round(tuned, 4),
                "change_pct": round(change, 2), "paragraphs": len(self.records)}
