"""With a master key set, the weights tunelab writes are encrypted at rest and read back in memory.

Two tiny LoRA runs are trained with the same seed on the same rows, one with ``TUNELAB_KEY`` set and one
without. The encrypted run's safetensors files and Trainer pickles all start with the encrypted magic and
none parses without the key; once decrypted they are byte for byte the plaintext run's. Eval, export and a
live server give the encrypted run the same greedy answers as the plaintext one; a resume from an encrypted
checkpoint continues exactly as an uninterrupted run; a flipped byte, or a missing key, is one line.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open

from tests.serve.conftest import tiny_lora_run
from tests.serve.servers import running_server
from tunelab.cli import main
from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.inference.generate import generate
from tunelab.model_files import ENCRYPTED_MAGIC
from tunelab.modeling import sealed_weights
from tunelab.paths import tunelab_home
from tunelab.runs.export import export_run
from tunelab.runs.load import load_model, load_run
from tunelab.security import files
from tunelab.security.crypto import MAGIC, Keyring, MasterKey, is_encrypted_file, rewrap_file
from tunelab.security.rotation import encrypted_files
from tunelab.train.sft import run_sft

KEY = "7f" * 32
PICKLES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")
PROMPTS = ["the movie was great", "the movie was dull", "What is the capital of France?"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The same LoRA run trained twice (same seed, same rows, checkpoints at steps 2 and 4): without a key, and
    with TUNELAB_KEY set."""
    root = tmp_path_factory.mktemp("sealed")
    rows = [{"text": f"the movie was {w}", "label": "positive" if i % 2 == 0 else "negative"}
            for i, w in enumerate(["great", "dull", "wonderful", "tedious", "fun", "awful"] * 4)]
    data = root / "sentiment.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    plain = tiny_lora_run(root / "plain", tiny_model_dir, data, "run", 2e-1, "train.save_steps=2")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_KEY", KEY)
        sealed = tiny_lora_run(root / "sealed", tiny_model_dir, data, "run", 2e-1, "train.save_steps=2")
    return {"plain": plain, "sealed": sealed, "data": data}


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("TUNELAB_KEY", KEY)


def weights_and_pickles(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix == ".safetensors" or p.name in PICKLES)


def answers(model, tokenizer) -> list[str]:
    return generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)


def test_the_magic_is_the_ciphers():
    assert ENCRYPTED_MAGIC == MAGIC  # model_files (ground layer) cannot import security.crypto


def test_weights_and_trainer_state_are_encrypted_and_decrypt_to_the_plaintext_run(runs, key):
    sealed, plain = runs["sealed"], runs["plain"]
    found = weights_and_pickles(sealed)
    names = {p.relative_to(sealed).as_posix() for p in found}
    assert {"adapter/adapter_model.safetensors", "checkpoints/checkpoint-4/adapter_model.safetensors",
            *(f"checkpoints/checkpoint-4/{name}" for name in PICKLES)} <= names
    assert names == {p.relative_to(plain).as_posix() for p in weights_and_pickles(plain)}
    for path in found:
        assert is_encrypted_file(path), path
        if path.suffix == ".safetensors":
            with pytest.raises(SafetensorError):
                safe_open(path, framework="pt")
        else:
            with pytest.raises((pickle.UnpicklingError, RuntimeError)):
                torch.load(path, weights_only=False)
    # without a key nothing changed: the plaintext run's files are the libraries' own, and the encrypted run's
    # weights are exactly those bytes once decrypted (same seed, same rows, on the CPU)
    for path in weights_and_pickles(plain):
        assert not is_encrypted_file(path), path
    for name in ("adapter/adapter_model.safetensors", "checkpoints/checkpoint-4/adapter_model.safetensors"):
        assert files.read_bytes(sealed / name) == (plain / name).read_bytes(), name
    for name in ("adapter/adapter_config.json", "checkpoints/checkpoint-4/adapter_config.json"):
        assert (sealed / name).read_bytes() == (plain / name).read_bytes(), name
    optimizer = [torch.load(plain / "checkpoints/checkpoint-4/optimizer.pt", weights_only=True),
                 sealed_weights.load_torch(sealed / "checkpoints/checkpoint-4/optimizer.pt")]
    assert optimizer[0]["state"].keys() == optimizer[1]["state"].keys()
    assert all(torch.equal(optimizer[0]["state"][i]["exp_avg"], optimizer[1]["state"][i]["exp_avg"])
               for i in optimizer[0]["state"])


def test_an_encrypted_save_is_the_plaintext_save_once_decrypted(tmp_path, tiny_model_dir, monkeypatch):
    """A whole model (tied embeddings), a LoRA adapter and a prompt-tuning adapter: the same files as
    ``save_pretrained`` writes, the same bytes once decrypted, and no library weights writer called on the way."""
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def base():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    lora = get_peft_model(base(), LoraConfig(r=4, task_type="CAUSAL_LM"))
    for name, value in lora.named_parameters():
        if "lora_B" in name:
            value.data.normal_()
    prompt = get_peft_model(base(), PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"))

    def refuse(*args, **kwargs):
        raise AssertionError("a library wrote a weights file itself")

    for what, model in (("model", base()), ("lora", lora), ("prompt", prompt)):
        sealed_weights.save_pretrained(model, tmp_path / f"{what}-plain")
        with monkeypatch.context() as patch:
            patch.setenv("TUNELAB_KEY", KEY)
            for module in ("safetensors.torch", "transformers.modeling_utils", "peft.peft_model"):
                patch.setattr(f"{module}.{'save_file' if module == 'safetensors.torch' else 'safe_save_file'}", refuse)
            sealed_weights.save_pretrained(model, tmp_path / f"{what}-sealed")
        plain_files = sorted(p.name for p in (tmp_path / f"{what}-plain").iterdir())
        assert plain_files == sorted(p.name for p in (tmp_path / f"{what}-sealed").iterdir())
        assert any(name.endswith(".safetensors") for name in plain_files)
        with monkeypatch.context() as patch:
            patch.setenv("TUNELAB_KEY", KEY)
            for name in plain_files:
                sealed_file = tmp_path / f"{what}-sealed" / name
                assert is_encrypted_file(sealed_file) == name.endswith(".safetensors"), name
                assert files.read_bytes(sealed_file) == (tmp_path / f"{what}-plain" / name).read_bytes(), name


def test_eval_export_and_the_server_answer_as_the_plaintext_run(runs, key, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    sealed, plain = runs["sealed"], runs["plain"]
    reference = load_run(plain)
    expected = answers(reference.model, reference.tokenizer)
    loaded = load_run(sealed)  # what tunelab eval loads
    assert answers(loaded.model, loaded.tokenizer) == expected
    assert [r["tuned_prediction"] for r in files.read_jsonl(sealed / "predictions.jsonl")] == \
           [r["tuned_prediction"] for r in files.read_jsonl(plain / "predictions.jsonl")]

    # export: encrypted with the key set; tunelab loads it as a model; its decrypted copy loads in transformers
    export_run(sealed, tmp_path / "exported")
    assert [p.name for p in (tmp_path / "exported").glob("*.safetensors")] == ["model.safetensors"]
    assert all(is_encrypted_file(p) for p in (tmp_path / "exported").glob("*.safetensors"))
    as_model = load_model(str(tmp_path / "exported"))
    assert answers(as_model.model, as_model.tokenizer) == expected
    assert main(["decrypt", str(tmp_path / "exported"), "--out", str(tmp_path / "plaintext")]) == 0
    assert not any(is_encrypted_file(p) for p in (tmp_path / "plaintext").rglob("*"))
    assert json.loads((tmp_path / "plaintext" / "export_check.json").read_text())["passed"]
    copy = AutoModelForCausalLM.from_pretrained(tmp_path / "plaintext", dtype=torch.float32)
    assert answers(copy, as_model.tokenizer) == expected
    assert main(["decrypt", str(tmp_path / "exported"), "--out", str(tmp_path / "plaintext")]) == 2  # not over it

    # the server loads the encrypted adapter from memory and answers as it does for the plaintext one
    with running_server(tiny_model_dir, [("sealed", sealed), ("plain", plain)]) as server:
        client = server.client()
        replies = {name: [client.chat.completions.create(model=name, max_tokens=6, temperature=0,
                                                         messages=[{"role": "user", "content": p}]
                                                         ).choices[0].message.content for p in PROMPTS]
                   for name in ("sealed", "plain")}
    assert replies["sealed"] == replies["plain"]


def test_vllm_export_is_encrypted_and_gguf_is_refused_with_a_key(runs, key, tmp_path, capsys):
    assert main(["export", str(runs["sealed"]), "--out", str(tmp_path / "vllm"), "--for", "vllm"]) == 0
    found = sorted((tmp_path / "vllm").rglob("*.safetensors"))
    assert {"adapter/adapter_model.safetensors", "merged/model.safetensors"} <= \
           {p.relative_to(tmp_path / "vllm").as_posix() for p in found}
    assert all(is_encrypted_file(p) for p in found if "base" not in p.parts)  # base/: the public base model
    assert "tunelab decrypt" in files.read_text(tmp_path / "vllm" / "USAGE.md")
    capsys.readouterr()
    assert main(["export", str(runs["sealed"]), "--out", str(tmp_path / "gguf"), "--for", "gguf"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "tunelab decrypt" in error and "\n" not in error
    assert not (tmp_path / "gguf").exists()


def test_resume_from_an_encrypted_checkpoint_continues_as_an_uninterrupted_run(tmp_path, tiny_model_dir, key,
                                                                               sentiment_file, capsys, monkeypatch):
    """Killed after a checkpoint and the key rotated since: the seal still holds, and the resumed run ends with
    the uninterrupted run's adapter."""
    def config(name: str, steps: int):
        return load_config(None, [f"model={tiny_model_dir}", f"data.train={sentiment_file}",
                                  f"output_dir={tmp_path}", f"run_name={name}", f"train.max_steps={steps}",
                                  "train.batch_size=2", "train.learning_rate=1e-2", "train.save_steps=3",
                                  "train.max_length=64", "train.precision=fp32", "train.compile=false",
                                  "eval.max_examples=2", "eval.max_new_tokens=2", "eval.baseline=false", "lora.r=4"])

    run = tmp_path / "resumed"
    run_sft(config("resumed", 6))
    uninterrupted = sealed_weights.read_weights(run / "adapter" / "adapter_model.safetensors")
    assert all(is_encrypted_file(p) for p in weights_and_pickles(run / "checkpoints"))
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")  # as if the run had been killed after step 3's checkpoint
    # and the master key rotated since: every file's key slots rewritten in place, as tunelab keys rotate does
    new = MasterKey(os.urandom(32))
    before = (run / "checkpoints" / "checkpoint-3" / "optimizer.pt").read_bytes()
    for path in encrypted_files([run, tunelab_home()]):  # the home holds the sealed checkpoint key
        rewrap_file(path, Keyring(MasterKey(bytes.fromhex(KEY))), new)
    assert (run / "checkpoints" / "checkpoint-3" / "optimizer.pt").read_bytes() != before
    monkeypatch.setenv("TUNELAB_KEY", new.secret.hex())
    capsys.readouterr()
    run_sft(config("resumed", 6), resume=True)
    assert "resuming from checkpoint-3, step 3 of 6" in capsys.readouterr().out
    resumed = sealed_weights.read_weights(run / "adapter" / "adapter_model.safetensors")
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.allclose(uninterrupted[k], resumed[k], atol=1e-6) for k in resumed)


def test_a_flipped_byte_in_an_encrypted_adapter_is_one_line(runs, key, tmp_path, tiny_model_dir):
    run = Path(shutil.copytree(runs["sealed"], tmp_path / "run"))
    weights = run / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(TunelabError) as refused:
        load_run(run)
    message = str(refused.value)
    assert "adapter_model.safetensors" in message and "fails its check" in message and "\n" not in message


def test_without_the_key_loading_says_to_set_TUNELAB_KEY(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TUNELAB_KEY", raising=False)
    with pytest.raises(TunelabError) as refused:
        load_run(runs["sealed"])
    assert "TUNELAB_KEY" in str(refused.value) and "\n" not in str(refused.value)
    assert main(["export", str(runs["sealed"]), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the base model's loading bar
    assert error.startswith("error: ") and "TUNELAB_KEY" in error
    # a wrong key names the key ids instead
    monkeypatch.setenv("TUNELAB_KEY", os.urandom(32).hex())
    with pytest.raises(TunelabError, match="sealed under master key"):
        load_run(runs["sealed"])
