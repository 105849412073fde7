"""Malicious model, adapter and checkpoint files are refused before anything unpickles or imports them.

Every payload is live: unpickling it (or importing the module a config names) creates a canary file, and
``test_the_payload_is_live`` shows that plain ``torch.load`` does run it. Each refusal is one line (a
TunelabError, or exit 2 with one ``error:`` line from the CLI), and the canary never appears.
"""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from tunelab.cli import main
from tunelab.config import RunConfig, load_config
from tunelab.errors import TunelabError
from tunelab.model_files import (check_weights, remote_code_trusted, tokenizer_options, trusting_remote_code,
                                 weights_options)
from tunelab.modeling.load import load_causal_lm
from tunelab.runs.folder import sha256_file
from tunelab.runs.load import load_run
from tunelab.serve.pool import check_adapter
from tunelab.train.checkpoints import SEAL_NAME
from tunelab.train.recipes import train


class Canary:
    """Unpickling this creates ``path``: the stand-in for whatever code a malicious pickle would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def write_payload(path, canary, raw: bool = False) -> None:
    """A torch.save archive (what pytorch_model.bin, adapter_model.bin and optimizer.pt are), or a bare pickle."""
    if raw:
        path.write_bytes(pickle.dumps({"weight": Canary(canary)}))
    else:
        torch.save({"state": Canary(canary)}, path)


def model_copy(tiny_model_dir, folder):
    shutil.copytree(tiny_model_dir, folder)
    return folder


def one_line_cli_error(capsys, argv: list[str]) -> str:
    """The CLI's stderr for ``argv``: exit 2, ending in one ``error:`` line (progress bars may come before it)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().replace("\r", "\n").splitlines()[-1]
    assert last.startswith("error: "), err
    return last


def tiny_config(tmp_path, model_dir, data, name, *extra):
    return load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'runs'}",
                              f"run_name={name}", "train.max_steps=4", "train.batch_size=2", "train.save_steps=2",
                              "train.max_length=64", "train.learning_rate=1e-2", "train.precision=fp32",
                              "train.compile=false", "eval.max_examples=4", "eval.max_new_tokens=2",
                              "eval.baseline=false", "lora.r=4", *extra])


def test_the_payload_is_live(tmp_path):
    """A control: without tunelab's checks, loading the file runs the payload."""
    canary = tmp_path / "ran"
    write_payload(tmp_path / "optimizer.pt", canary)
    torch.load(tmp_path / "optimizer.pt", weights_only=False)
    assert canary.exists()


def test_pickle_weights_in_a_model_folder_are_refused(tmp_path, tiny_model_dir, sentiment_file, capsys):
    canary = tmp_path / "ran"
    folder = model_copy(tiny_model_dir, tmp_path / "pickled-model")
    (folder / "model.safetensors").unlink()
    write_payload(folder / "pytorch_model.bin", canary)
    with pytest.raises(TunelabError, match=r"holds pickle weights \(pytorch_model\.bin\); tunelab loads safetensors"):
        load_causal_lm(RunConfig(model=str(folder)))
    err = one_line_cli_error(capsys, ["eval", "--model", str(folder), "--data", str(sentiment_file), "--no-baseline",
                                      "--out", str(tmp_path / "eval")])
    assert "pytorch_model.bin" in err
    err = one_line_cli_error(capsys, ["train", "/dev/null", f"model={folder}", f"data.train={sentiment_file}",
                                      f"output_dir={tmp_path / 'runs'}", "train.max_steps=1"])
    assert "pytorch_model.bin" in err
    assert not canary.exists()


def test_a_model_folder_with_both_formats_loads_only_safetensors(tmp_path, tiny_model_dir):
    """Hub folders often ship both: the safetensors file is read and the pickle is never opened."""
    canary = tmp_path / "ran"
    folder = model_copy(tiny_model_dir, tmp_path / "both")
    write_payload(folder / "pytorch_model.bin", canary)
    _, model = load_causal_lm(RunConfig(model=str(folder), train={"precision": "fp32"}))
    assert model.config.num_hidden_layers == 2
    assert not canary.exists()


@pytest.mark.parametrize("raw", [False, True], ids=["torch-archive", "bare-pickle"])
def test_pickle_bytes_named_safetensors_are_refused(tmp_path, tiny_model_dir, raw):
    canary = tmp_path / "ran"
    folder = model_copy(tiny_model_dir, tmp_path / "posing")
    write_payload(folder / "model.safetensors", canary, raw=raw)
    with pytest.raises(TunelabError, match=r"model\.safetensors is not a safetensors file"):
        load_causal_lm(RunConfig(model=str(folder)))
    assert not canary.exists()


@pytest.mark.parametrize("pointer", ["config", "shard-index"])
def test_a_config_or_index_pointing_transformers_at_a_pickle_is_refused(tmp_path, tiny_model_dir, pointer):
    """transformers 5 reads ``transformers_weights`` from config.json before it looks at use_safetensors, and
    loads whatever shard files a ``*.safetensors.index.json`` names (torch.load for any that is not safetensors)."""
    canary = tmp_path / "ran"
    folder = model_copy(tiny_model_dir, tmp_path / "pointed")
    if pointer == "config":
        write_payload(folder / "adapter_model.bin", canary)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"transformers_weights": "adapter_model.bin"}))
    else:
        (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
        write_payload(folder / "model-00002-of-00002.bin", canary)
        weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                      "model.norm.weight": "model-00002-of-00002.bin"}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(TunelabError, match="not a safetensors file"):
        load_causal_lm(RunConfig(model=str(folder)))
    assert not canary.exists()


def test_pickle_adapter_weights_are_refused(tmp_path, tiny_model_dir, sentiment_file, capsys):
    canary = tmp_path / "ran"
    train(tiny_config(tmp_path, tiny_model_dir, sentiment_file, "pickled-adapter"))
    run = tmp_path / "runs" / "pickled-adapter"
    (run / "adapter" / "adapter_model.safetensors").unlink()
    write_payload(run / "adapter" / "adapter_model.bin", canary)
    with pytest.raises(TunelabError, match=r"holds pickle weights \(adapter_model\.bin\)"):
        load_run(run)
    with pytest.raises(TunelabError, match=r"adapter_model\.bin"):
        check_adapter(str(run), str(tiny_model_dir), None, None)  # tunelab serve --adapter NAME=RUN
    assert "adapter_model.bin" in one_line_cli_error(capsys, ["export", str(run), "--out", str(tmp_path / "out")])
    assert "adapter_model.bin" in one_line_cli_error(capsys, ["eval", "--model", str(run), "--data",
                                                              str(sentiment_file), "--out", str(tmp_path / "ev")])
    # A pickle posing as the adapter's safetensors file is refused the same way.
    write_payload(run / "adapter" / "adapter_model.safetensors", canary)
    with pytest.raises(TunelabError, match="is not a safetensors file"):
        check_weights(run / "adapter", adapter=True)
    assert not canary.exists()


def test_a_tampered_optimizer_state_is_refused_before_torch_load(tmp_path, tiny_model_dir, sentiment_file, capsys):
    """optimizer.pt is a pickle that Trainer unpickles on resume; the checkpoint's signed seal must match first."""
    canary = tmp_path / "ran"
    config = tiny_config(tmp_path, tiny_model_dir, sentiment_file, "tampered")
    train(config)
    run = tmp_path / "runs" / "tampered"
    checkpoint = run / "checkpoints" / "checkpoint-4"
    seal = json.loads((checkpoint / SEAL_NAME).read_text())
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin"} <= set(seal["files"])
    write_payload(checkpoint / "optimizer.pt", canary)
    longer = config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 6})})
    with pytest.raises(TunelabError, match=r"refusing to resume from .*checkpoint-4: optimizer\.pt is not the file"):
        train(longer, resume=True)
    err = one_line_cli_error(capsys, ["train", "--resume", str(run), "train.max_steps=6"])
    assert "optimizer.pt" in err

    # Rewriting the seal to match needs the signing key, which only this user's tunelab home holds.
    seal["files"]["optimizer.pt"] = sha256_file(checkpoint / "optimizer.pt")
    (checkpoint / SEAL_NAME).write_text(json.dumps(seal))
    err = one_line_cli_error(capsys, ["train", "--resume", str(run), "train.max_steps=6"])
    assert "not signed with this machine's checkpoint key" in err
    assert not canary.exists()


def test_an_unsealed_checkpoint_is_skipped_for_the_one_before(tmp_path, tiny_model_dir, sentiment_file, capsys):
    """A run killed between Trainer writing a checkpoint and sealing it resumes from the previous checkpoint."""
    config = tiny_config(tmp_path, tiny_model_dir, sentiment_file, "unsealed")
    train(config)
    (tmp_path / "runs" / "unsealed" / "checkpoints" / "checkpoint-4" / SEAL_NAME).unlink()
    capsys.readouterr()
    longer = config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 6})})
    assert train(longer, resume=True)["train"]["steps"] == 6
    out = capsys.readouterr().out
    assert "skipping checkpoint-4: it has no seal" in out and "resuming from checkpoint-2, step 2 of 6" in out


AUTO_MAPS = {
    "config.json": {"AutoModelForCausalLM": "modeling_canary.CanaryForCausalLM"},
    "tokenizer_config.json": {"AutoTokenizer": ["tokenization_canary.CanaryTokenizer", None]},
}


@pytest.mark.parametrize("file", AUTO_MAPS)
def test_remote_code_is_refused_unless_trusted(tmp_path, tiny_model_dir, sentiment_file, capsys, file):
    canary = tmp_path / "ran"
    folder = model_copy(tiny_model_dir, tmp_path / "remote")
    for module in ("modeling_canary.py", "tokenization_canary.py"):
        (folder / module).write_text(f"open({str(canary)!r}, 'w').close()\n")
    settings = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps(settings | {"auto_map": AUTO_MAPS[file]}))
    with pytest.raises(TunelabError, match=rf"asks to run its own Python code \(auto_map in {file}\); .*"
                                           r"--trust-remote-code"):
        load_causal_lm(RunConfig(model=str(folder)))
    err = one_line_cli_error(capsys, ["train", "/dev/null", f"model={folder}", f"data.train={sentiment_file}",
                                      f"output_dir={tmp_path / 'runs'}", "train.max_steps=1"])
    assert "--trust-remote-code" in err
    assert not canary.exists()
    with trusting_remote_code():  # what --trust-remote-code does: transformers is told to trust the folder
        assert weights_options(folder) == {"use_safetensors": True, "trust_remote_code": True}
        assert tokenizer_options(folder) == {"trust_remote_code": True}
    assert not remote_code_trusted()
    assert not canary.exists()


@pytest.mark.parametrize("argv, command", [
    (["train", "c.yaml"], "cmd_train"), (["train", "--resume", "runs/x"], "cmd_train"),
    (["eval", "--model", "m", "--data", "d"], "cmd_eval"), (["serve"], "cmd_serve"),
    (["export", "runs/x", "--out", "o"], "cmd_export"), (["quickstart"], "cmd_quickstart"),
    (["sweep", "c.yaml"], "cmd_sweep"), (["parity", "runs/x"], "cmd_parity"),
    (["data", "prepare", "f.jsonl", "--out", "o"], "cmd_data_prepare"),
    (["data", "synth", "--docs", "d", "--out", "o"], "cmd_data_synth"),
    (["data", "augment", "f.jsonl", "--out", "o"], "cmd_data_augment")])
def test_trust_remote_code_flag_holds_for_the_command_only(monkeypatch, argv, command):
    seen = []
    monkeypatch.setattr(f"tunelab.cli.{command}", lambda args: seen.append(remote_code_trusted()))
    assert main(argv) == 0 and main([*argv, "--trust-remote-code"]) == 0
    assert seen == [False, True] and not remote_code_trusted()
