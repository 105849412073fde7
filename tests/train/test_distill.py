"""Distillation on tiny random Llamas: the loss against a full-logits reference, cut-down students,
teachers from run folders, the vocabulary check and an end-to-end run through the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

from tunelab.cli import main
from tunelab.config import RunConfig, load_config
from tunelab.data.pack import collate_packed, collate_padded, pack
from tunelab.data.templates import encode_chat
from tunelab.errors import ConfigError, TunelabError
from tunelab.modeling.fast.segment_attention import use_segment_attention
from tunelab.modeling.loss import attention_mask_for, selective_loss_sum
from tunelab.modeling.student import kept_block_indices
from tunelab.train.distill import DistillationLoss, kd_positions, load_teacher, run_distill
from tunelab.train.setup import load_base
from tunelab.train.sft import run_sft

DIALOGS = [
    [{"role": "user", "content": f"the movie was {w}"}, {"role": "assistant", "content": label}]
    for w, label in [("great", "positive"), ("dull", "negative"), ("wonderful", "positive"), ("awful", "negative"),
                     ("fun", "positive"), ("tedious", "negative")]
]


def save_llama(folder, tokenizer, layers, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer):
    """A 4-block model of the same family (and tokenizer) as the 2-block tiny_model_dir student."""
    return save_llama(tmp_path_factory.mktemp("teacher"), tiny_tokenizer, layers=4, seed=1)


def packed_batch(tokenizer):
    rows = pack([encode_chat(tokenizer, d, 512) for d in DIALOGS], 48)
    assert len(rows) > 1 and any(len(row) > 1 for row in rows)  # several rows, several examples per row
    return collate_packed(rows, tokenizer.pad_token_id)


def reference_distill_sum(student, teacher, batch, alpha, temperature):
    """The formula on full logits: alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * CE."""
    targets = batch["labels"][:, 1:]
    keep = targets != -100

    def answer_logits(model):
        return model(input_ids=batch["input_ids"], attention_mask=attention_mask_for(model, batch),
                     position_ids=batch["position_ids"]).logits[:, :-1][keep].float()

    student_logits = answer_logits(student)
    with torch.no_grad():
        teacher_logits = answer_logits(teacher)
    teacher_probs = torch.softmax(teacher_logits / temperature, -1)
    kl = (teacher_probs * (torch.log_softmax(teacher_logits / temperature, -1)
                           - torch.log_softmax(student_logits / temperature, -1))).sum()
    ce = F.cross_entropy(student_logits, targets[keep], reduction="sum")
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce, int(keep.sum())


@pytest.mark.parametrize("alpha,temperature", [(0.0, 2.0), (0.5, 2.0), (1.0, 3.0), (0.3, 0.5)])
def test_loss_equals_full_logits_reference(tiny_model_dir, teacher_dir, tiny_tokenizer, monkeypatch, alpha,
                                           temperature):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr("tunelab.train.distill.CHUNK_ROWS", 5)  # several chunks per batch
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    batch = packed_batch(tiny_tokenizer)
    grads = []
    for loss_fn in (DistillationLoss(teacher, alpha, temperature),
                    lambda model, b: reference_distill_sum(model, teacher, b, alpha, temperature)):
        student.zero_grad()
        total, count = loss_fn(student, batch)
        (total / count).backward()
        grads.append((total.item(), count, student.model.layers[0].mlp.up_proj.weight.grad.clone()))
    (fast, n_fast, grad_fast), (slow, n_slow, grad_slow) = grads
    assert n_fast == n_slow > 5
    assert fast == pytest.approx(slow, rel=1e-5)
    assert torch.allclose(grad_fast, grad_slow, atol=1e-6)
    if alpha == 0:  # pure cross-entropy is the SFT loss
        with torch.no_grad():
            sft, n_sft = selective_loss_sum(student, batch)
        assert (n_sft, sft.item()) == (n_fast, pytest.approx(fast, rel=1e-6))
    else:  # the teacher term is really there: a student that equals its teacher has no KL left
        self_taught, _ = DistillationLoss(teacher, alpha, temperature)(teacher, batch)
        ce, _ = selective_loss_sum(teacher, batch)
        assert self_taught.item() == pytest.approx((1 - alpha) * ce.item(), abs=1e-4)


def in_example_positions(rows, width):
    """[rows, width - 1] next-token positions t with t and t + 1 in one example, from the packing itself."""
    keep = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for b, row in enumerate(rows):
        offset = 0
        for example in row:
            n = len(example.input_ids)
            keep[b, offset:offset + n - 1] = True
            offset += n
    return keep


def test_all_positions_stay_inside_each_example(tiny_tokenizer):
    rows = pack([encode_chat(tiny_tokenizer, d, 512) for d in DIALOGS], 48)
    examples = [e for row in rows for e in row]
    for batch in (collate_packed(rows, tiny_tokenizer.pad_token_id, pad_to_multiple_of=64),
                  collate_packed(rows, tiny_tokenizer.pad_token_id, segments=True)):
        keep = kd_positions(batch)
        width = batch["input_ids"].shape[1]
        assert torch.equal(keep, in_example_positions(rows, width))
        assert int(keep.sum()) == sum(len(e.input_ids) - 1 for e in examples)  # n - 1 targets per example
        answers = batch["labels"][:, 1:] != -100
        assert not (answers & ~keep).any() and int(keep.sum()) > 3 * int(answers.sum())  # prompts count too
    padded = collate_padded([[e] for e in examples], tiny_tokenizer.pad_token_id)
    assert [int(n) for n in kd_positions(padded).sum(1)] == [len(e.input_ids) - 1 for e in examples]


def reference_all_positions_sum(student, teacher, batch, keep, alpha, temperature):
    """alpha * T^2 * mean KL over ``keep`` + (1 - alpha) * mean CE over answers, times the answer count."""
    targets = batch["labels"][:, 1:]
    answers = targets != -100

    def logits(model):
        return model(input_ids=batch["input_ids"], attention_mask=attention_mask_for(model, batch),
                     position_ids=batch["position_ids"]).logits[:, :-1].float()

    student_logits = logits(student)
    with torch.no_grad():
        teacher_logits = logits(teacher)
    kl = F.kl_div(torch.log_softmax(student_logits[keep] / temperature, -1),
                  torch.log_softmax(teacher_logits[keep] / temperature, -1), log_target=True, reduction="sum")
    ce = F.cross_entropy(student_logits[answers], targets[answers], reduction="sum")
    count = int(answers.sum())
    return alpha * temperature ** 2 * kl * count / int(keep.sum()) + (1 - alpha) * ce, count


@pytest.mark.parametrize("alpha,temperature", [(0.5, 2.0), (1.0, 1.0)])
def test_all_positions_loss_equals_full_logits_reference(tiny_model_dir, teacher_dir, tiny_tokenizer, monkeypatch,
                                                         alpha, temperature):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr("tunelab.train.distill.CHUNK_ROWS", 7)  # several chunks per batch
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    rows = pack([encode_chat(tiny_tokenizer, d, 512) for d in DIALOGS], 48)
    batch = collate_packed(rows, tiny_tokenizer.pad_token_id, pad_to_multiple_of=64)  # padding at every row end
    keep = in_example_positions(rows, batch["input_ids"].shape[1])
    grads = []
    for loss_fn in (DistillationLoss(teacher, alpha, temperature, positions="all"),
                    lambda model, b: reference_all_positions_sum(model, teacher, b, keep, alpha, temperature)):
        student.zero_grad()
        total, count = loss_fn(student, batch)
        (total / count).backward()
        grads.append((total.item(), count, student.model.layers[0].mlp.up_proj.weight.grad.clone()))
    (fast, n_fast, grad_fast), (slow, n_slow, grad_slow) = grads
    assert n_fast == n_slow == int((batch["labels"] != -100).sum())  # the Trainer still divides by answer tokens
    assert fast == pytest.approx(slow, rel=1e-5)
    assert torch.allclose(grad_fast, grad_slow, atol=1e-6)
    # The KL term sees exactly one row per in-example position, prompts included; the answer mode only answers.
    import tunelab.train.distill as distill

    seen = []
    monkeypatch.setattr(distill, "soft_kl_sum", lambda s, t, temp: seen.append(s.shape[0]) or s[:0].sum())
    for positions, expected in (("all", keep), ("answer", batch["labels"][:, 1:] != -100)):
        seen.clear()
        DistillationLoss(teacher, alpha, temperature, positions=positions)(student, batch)
        assert len(seen) > 1 and sum(seen) == int(expected.sum())
    monkeypatch.undo()
    # A student that equals its teacher has no KL left anywhere: only the answer cross-entropy remains.
    self_taught, _ = DistillationLoss(teacher, alpha, temperature, positions="all")(teacher, batch)
    ce, _ = selective_loss_sum(teacher, batch)
    assert self_taught.item() == pytest.approx((1 - alpha) * ce.item(), abs=1e-4)


def test_all_positions_with_segment_attention_matches_the_mask(tiny_model_dir, teacher_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    _, teacher = load_teacher(str(teacher_dir), torch.float32, RunConfig())  # packed rows: segments
    rows = pack([encode_chat(tiny_tokenizer, d, 512) for d in DIALOGS], 48)
    loss = DistillationLoss(teacher, 0.5, 2.0, positions="all")
    with torch.no_grad():
        masked, n_masked = loss(student, collate_packed(rows, tiny_tokenizer.pad_token_id))
        use_segment_attention(student)
        segmented, n_segmented = loss(student, collate_packed(rows, tiny_tokenizer.pad_token_id, segments=True))
    assert n_masked == n_segmented and segmented.item() == pytest.approx(masked.item(), rel=1e-5)


def test_student_layers_keeps_evenly_spaced_blocks(teacher_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    assert kept_block_indices(30, 12) == [0, 3, 5, 8, 11, 13, 16, 18, 21, 24, 26, 29]
    assert kept_block_indices(4, 2) == [0, 3] and kept_block_indices(5, 5) == [0, 1, 2, 3, 4]
    config = load_config(None, [f"model={teacher_dir}", "task=distill", f"distill.teacher={teacher_dir}",
                                "distill.student_layers=2", "train.precision=fp32"], require_train_data=False)
    _, student = load_base(config)
    full = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    assert len(student.model.layers) == student.config.num_hidden_layers == 2
    for kept, original in zip(student.model.layers, (full.model.layers[0], full.model.layers[3])):
        assert torch.equal(kept.mlp.down_proj.weight, original.mlp.down_proj.weight)
    assert [block.self_attn.layer_idx for block in student.model.layers] == [0, 1]
    # Greedy decoding with the KV cache matches decoding without it: the cache is addressed by the new numbers.
    prompt = tiny_tokenizer("the movie was great", return_tensors="pt")
    cached = student.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = student.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    too_many = config.model_copy(update={"distill": config.distill.model_copy(update={"student_layers": 5})})
    with pytest.raises(TunelabError, match="student_layers=5, but .* has only 4 transformer blocks"):
        load_base(too_many)


def test_task_distill_requires_a_teacher():
    with pytest.raises(ConfigError, match="task distill needs distill.teacher"):
        load_config(None, ["data.train=x.jsonl", "task=distill"])
    with pytest.raises(ConfigError, match="distill.alpha"):
        load_config(None, ["data.train=x.jsonl", "task=distill", "distill.teacher=t", "distill.alpha=1.5"])
    assert load_config(None, ["data.train=x.jsonl", "task=distill", "distill.teacher=t"]).distill.positions == "answer"
    with pytest.raises(ConfigError, match="distill.positions"):
        load_config(None, ["data.train=x.jsonl", "task=distill", "distill.teacher=t", "distill.positions=prompt"])


def test_teacher_with_another_vocabulary_is_refused(tmp_path, tiny_model_dir, sentiment_file):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "the", "movie", "was", "great", "dull"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                    bos_token="<|im_start|>")
    other_teacher = save_llama(tmp_path / "other-family", other, layers=2, seed=2)
    config = load_config(None, [f"model={tiny_model_dir}", f"data.train={sentiment_file}", "task=distill",
                                f"distill.teacher={other_teacher}", f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(TunelabError, match="do not share a vocabulary; token-level distillation") as info:
        run_distill(config)
    assert "\n" not in str(info.value) and "model family" in str(info.value)
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def write_sentiment(path, n=48):
    words = [("great", "positive"), ("dull", "negative"), ("wonderful", "positive"), ("awful", "negative")]
    path.write_text("".join(json.dumps({"text": f"the movie was {w}", "label": label}) + "\n"
                            for w, label in (words[i % 4] for i in range(n))))
    return path


TINY_TRAIN = ["train.batch_size=2", "train.learning_rate=1e-2", "train.logging_steps=2", "train.save_steps=50",
              "train.max_length=64", "train.precision=fp32", "eval.batch_size=8"]


def test_distill_from_a_run_folder_through_the_cli(tmp_path, teacher_dir, tiny_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_sentiment(tmp_path / "reviews.jsonl")
    runs = tmp_path / "runs"
    run_sft(load_config(None, [f"model={teacher_dir}", f"data.train={data}", f"output_dir={runs}", "run_name=teacher",
                               "train.max_steps=10", *TINY_TRAIN]))
    teacher_run = runs / "teacher"

    # A run-folder teacher is its adapter merged into its base: same predictions as base + adapter.
    _, teacher = load_teacher(str(teacher_run), torch.float32)
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32),
                                         teacher_run / "adapter").eval()
    ids = tiny_tokenizer("the movie was dull", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(teacher(ids).logits, unmerged(ids).logits, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training

    # The student: the teacher's own base cut to 2 of its 4 blocks, LoRA-tuned towards the teacher.
    args = ["train", "/dev/null", f"model={teacher_dir}", f"data.train={data}", f"output_dir={runs}",
            "run_name=student", "task=distill", f"distill.teacher={teacher_run}", "distill.student_layers=2",
            "distill.alpha=0.7", "train.max_steps=12", *TINY_TRAIN]
    assert main(args) == 0
    student_run = runs / "student"
    metrics = json.loads((student_run / "metrics.json").read_text())
    assert {"base", "tuned", "teacher"} <= set(metrics) and "accuracy" in metrics["teacher"]
    assert metrics["train"]["alpha"] == 0.7 and metrics["train"]["temperature"] == 2.0
    assert metrics["train"]["teacher"] == str(teacher_run) and metrics["train"]["student_layers"] == 2
    assert metrics["train"]["total_params"] < metrics["train"]["teacher_params"]
    log = [json.loads(line) for line in (student_run / "train_log.jsonl").open()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses[-1] < losses[0]
    assert [row["step"] for row in log if "val_loss" in row] == list(range(2, 13, 2))  # train.val_loss by default
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    rows = [json.loads(line) for line in (student_run / "predictions.jsonl").open()]
    assert {"base_prediction", "tuned_prediction", "teacher_prediction"} <= set(rows[0])
    # tunelab eval rebuilds the 2-block student for the saved adapter.
    assert main(["eval", "--model", str(student_run), "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["tuned"]["loss"] < evaluated["base"]["loss"]
