"""Knowledge distillation recipe: a smaller student learns the answers and its teacher's view of them.

Per answer token, loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, answer),
where _T is the softmax at temperature T (Hinton et al., 2015; T^2 keeps the gradient scale of the
soft term independent of T). Answer tokens are exactly those SFT trains on (prompts masked), and both
models' logits are computed only there, in chunks, so no [tokens x vocab] tensor exists for either.
With ``distill.positions: all`` the KL term covers every next-token position inside each example,
prompt included (word-level KD, Kim & Rush, 2016), as a per-token mean weighted like the answer
cross-entropy, which stays on the answer tokens; a cut-down student then learns the teacher's whole
next-token distribution, not just its view of one label token.
The teacher is frozen, in eval mode and in the frozen-weight dtype (bf16 where fast); the student
trains with ``method`` like any SFT run. Token-level distillation compares distributions over the
same token ids, so a teacher with another vocabulary is refused before anything is trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tunelab.config import RunConfig
from tunelab.data.templates import IGNORE_INDEX
from tunelab.errors import TunelabError
from tunelab.eval.suite import evaluate_model
from tunelab.model_files import resolve_model
from tunelab.modeling.fast import prepare_for_inference
from tunelab.modeling.load import load_causal_lm, load_tokenizer
from tunelab.modeling.loss import CHUNK_ROWS, decoder_inputs, supports_selective_logits
from tunelab.modeling.methods import VIRTUAL_TOKEN_METHODS, parameter_counts
from tunelab.modeling.precision import pick_dtype
from tunelab.modeling.sealed_weights import from_pretrained
from tunelab.runs.folder import RunFolder
from tunelab.runs.load import load_run
from tunelab.train.fit import finish_run, fit
from tunelab.train.setup import start_run, with_method
from tunelab.train.sft import evaluate_base_and_tuned, prepare_answer_data


def load_teacher(name: str, dtype: torch.dtype, config: RunConfig | None = None):
    """Tokenizer and frozen eval-mode teacher from a run folder, model folder, hub id or embedded name,
    prepared for inference under the student's ``config`` (so it reads the student's packed batches; None:
    unpacked batches only)."""
    if RunFolder.is_run(name):
        tokenizer, model = _load_run_teacher(Path(name).expanduser(), dtype)
    else:
        folder = resolve_model(name)
        tokenizer = load_tokenizer(folder)
        model = from_pretrained(AutoModelForCausalLM, folder, dtype=dtype, attn_implementation="sdpa")
    model.requires_grad_(False)
    prepare_for_inference(model, config)
    return tokenizer, model.eval()


def _load_run_teacher(run_dir: Path, dtype: torch.dtype):
    """A finished run as one plain model: full weights, or its adapter merged into its base in fp32."""
    run = RunFolder(run_dir)
    run_config = run.config()
    if run_config.task not in ("sft", "pretrain", "distill"):
        hint = ("; to distil a classifier, train task: classification with distill.teacher set to it"
                if run_config.task == "classification" else "")
        raise TunelabError(f"teacher {run_dir} is a task {run_config.task} run; a task distill teacher must be a "
                           f"causal LM (a run of task sft, pretrain or distill){hint}")
    if run.weights_dir.name == "model":
        return load_tokenizer(run.weights_dir), from_pretrained(
            AutoModelForCausalLM, run.weights_dir, dtype=dtype, attn_implementation="sdpa")
    if run_config.method in VIRTUAL_TOKEN_METHODS:
        raise TunelabError(f"teacher {run_dir} was trained with method {run_config.method}, whose virtual tokens "
                           f"cannot be merged into a plain model; use a run of another method as teacher")
    # Merged in fp32 and rounded once afterwards: a small adapter delta is often below bf16's spacing.
    loaded = load_run(run_dir, for_merging=True)
    return loaded.tokenizer, loaded.model.merge_and_unload().to(dtype)


def check_shared_vocabulary(student_tokenizer, teacher_tokenizer, student: str, teacher: str) -> None:
    """Refuse a teacher whose tokenizer maps text to other ids than the student's."""
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise TunelabError(
            f"teacher {teacher} ({len(teacher_tokenizer)} tokens) and student {student} ({len(student_tokenizer)} "
            f"tokens) do not share a vocabulary; token-level distillation compares their predictions token id by "
            f"token id, so choose a teacher from the student's model family (or the student's own model with "
            f"distill.student_layers for a smaller student)")


def answer_rows(model, batch: dict[str, torch.Tensor], keep: torch.Tensor):
    """(rows, to_logits): hidden states at the answer positions and the head that turns them into logits.

    Models whose logits are not a plain head over the decoder (soft-capped logits, virtual tokens)
    give their full logits at those positions instead, with an identity head.
    """
    if supports_selective_logits(model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(**decoder_inputs(model, batch)).last_hidden_state
        return hidden[:, :-1][keep], base.get_output_embeddings()
    width = batch["input_ids"].shape[1]
    logits = model(**decoder_inputs(model, batch)).logits
    return logits[:, -width:][:, :-1][keep], torch.nn.Identity()  # prompt tuning puts its virtual tokens first


def kd_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[rows, width - 1] bool: next-token positions t whose tokens t and t + 1 belong to one example.

    Packed rows count position ids 0, 1, ... within each example and leave padding at 0, so t is
    valid exactly when position t + 1 follows position t; padded rows (no position ids) use their mask.
    """
    positions = batch.get("position_ids")
    if positions is not None:
        return positions[:, 1:] == positions[:, :-1] + 1
    mask = batch["attention_mask"].bool()
    return mask[:, 1:] & mask[:, :-1]


def soft_kl_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Summed KL(teacher || student) of the two softmaxes at ``temperature``, over rows."""
    width = min(student_logits.shape[-1], teacher_logits.shape[-1])  # heads may pad the vocabulary differently
    student_log_probs = F.log_softmax(student_logits[:, :width] / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits[:, :width] / temperature, dim=-1)
    return F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum")


class DistillationLoss:
    """``loss_fn`` for fit: (student, batch) -> (summed distillation loss, answer tokens).

    The sum is over answer tokens, like the SFT loss, so the Trainer's division by the answer tokens of
    the whole accumulated batch turns it into the per-token mean of the formula in the module docstring.
    With ``positions="all"`` the KL is summed over every in-example position and scaled by answer tokens /
    KL positions of the batch, so after that division it too is a per-token mean.
    """

    def __init__(self, teacher, alpha: float, temperature: float, positions: str = "answer"):
        if teacher is None and alpha > 0:
            raise ValueError("distillation with alpha > 0 needs a teacher")
        if positions not in ("answer", "all"):
            raise ValueError(f"positions must be answer or all, not {positions!r}")
        self.teacher, self.alpha, self.temperature, self.positions = teacher, alpha, temperature, positions

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        targets = batch["labels"][:, 1:]
        answers = targets != IGNORE_INDEX
        keep = answers
        if self.positions == "all" and self.alpha > 0:
            keep = kd_positions(batch) | answers  # answer positions always lie inside their example
        targets = targets[keep]  # IGNORE_INDEX at the prompt positions that only the KL covers
        answer_count, kl_weight = int(answers.sum()), self.alpha * self.temperature ** 2
        if keep is not answers:
            kl_weight *= answer_count / max(int(keep.sum()), 1)
        rows, head = answer_rows(model, batch, keep)
        teacher_rows, teacher_head = self._teacher_rows(batch, keep)
        total = rows[:0].float().sum()  # zero that stays in the graph when a batch has no answer tokens
        for start in range(0, rows.shape[0], CHUNK_ROWS):
            chunk = slice(start, start + CHUNK_ROWS)
            logits = head(rows[chunk]).float()
            if self.alpha < 1:
                total = total + (1 - self.alpha) * F.cross_entropy(logits, targets[chunk], reduction="sum",
                                                                   ignore_index=IGNORE_INDEX)
            if self.alpha > 0:
                with torch.no_grad():
                    teacher_logits = teacher_head(teacher_rows[chunk]).float()
                total = total + kl_weight * soft_kl_sum(logits, teacher_logits, self.temperature)
        return total, answer_count

    def _teacher_rows(self, batch: dict[str, torch.Tensor], keep: torch.Tensor):
        if self.alpha == 0:
            return None, None
        device = batch["input_ids"].device
        if self.teacher.device != device:  # the Trainer moves the student, never the teacher
            self.teacher.to(device)
        with torch.no_grad():
            return answer_rows(self.teacher, batch, keep)


def run_distill(config: RunConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    """``callbacks`` are extra Trainer callbacks, for example a sweep's pruning callback."""
    distill = config.distill
    # ---- setup: the teacher first, so a missing teacher or another vocabulary fails before a run folder exists
    teacher_tokenizer, teacher = None, None
    if distill.alpha > 0:
        # Frozen whatever the student's method, so in the dtype of frozen weights (bf16 where fast) even when
        # the student trains in full fp32.
        frozen_dtype = pick_dtype(config.train.precision, method="lora")
        teacher_tokenizer, teacher = load_teacher(distill.teacher, frozen_dtype, config)
    else:
        print("distill.alpha=0: the teacher takes no part; the student trains on the answers alone", flush=True)

    def load_student(config: RunConfig, splits):
        tokenizer, student = load_causal_lm(config)
        if teacher_tokenizer is not None:
            check_shared_vocabulary(tokenizer, teacher_tokenizer, config.model, distill.teacher)
        return tokenizer, student

    run = start_run(config, resume, overwrite, kinds=("chat", "labeled"), load=load_student,
                    hint="raw text has no answers to distill; use task: pretrain")
    tokenizer, data = run.tokenizer, prepare_answer_data(run, config)
    model, counts = with_method(run.model, config)
    loss = DistillationLoss(teacher, distill.alpha, distill.temperature, distill.positions)

    # ---- train
    train_metrics = fit(model, tokenizer, data.examples, config, run.folder, resume,
                        [*callbacks, *data.validation], loss_fn=loss)
    if data.stopper:
        train_metrics |= data.stopper.summary()
    train_metrics |= {"examples": len(data.examples), **counts, "teacher": distill.teacher, "alpha": distill.alpha,
                      "temperature": distill.temperature, "student_layers": distill.student_layers,
                      "positions": distill.positions}
    if teacher is not None:
        train_metrics["teacher_params"] = parameter_counts(teacher)["total_params"]

    # ---- evaluate: base student, tuned student and the teacher, same prompts, same examples
    metrics, arms = evaluate_base_and_tuned(model, tokenizer, data.eval_task, data.test, data.val or data.test,
                                            config, run.splits.mixing)
    if teacher is not None:
        args = (config.eval.batch_size, config.eval.max_new_tokens, config.train.max_length)
        metrics["teacher"], arms["teacher"] = evaluate_model(teacher, tokenizer, data.eval_task, *args, "teacher")

    # ---- save and report
    return finish_run(run.folder, metrics | {"train": train_metrics, "data": data.data_summary}, data.eval_task, arms)
