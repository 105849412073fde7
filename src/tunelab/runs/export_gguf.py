"""``tunelab export RUN --for gguf``: one GGUF file for llama.cpp and Ollama, an Ollama Modelfile, and a check.

The run is merged into its base in fp32 (``export_run`` into a temporary folder, golden-prompt check
included), then llama.cpp's own converter, ``convert_hf_to_gguf.py``, writes ``RUN_NAME.gguf`` with one
rounding to the chosen weight type. tunelab does not reimplement the converter: llama.cpp's tensor
names, tokenizer metadata and quantization change with llama.cpp, and its converter follows them.
The converter is not on PyPI as a module; it ships inside the llama-cpp-python source package, so it
is found in a source tree (``--llama-cpp DIR``, ``$TUNELAB_LLAMA_CPP``, or the one an installed
``llama_cpp`` package was built from) and never downloaded at run time.

When ``llama_cpp`` is importable, the written file is loaded and the golden prompts are run through it
and through the merged model, token for token, and compared (``gguf_check.json``). Ollama needs its
prompt template in Go template syntax: a ChatML chat template (SmolLM2's) is recognized by what it
renders for probe conversations and translated; other templates are refused before anything is merged.

With a master key set (weights encrypted at rest) ``--for gguf`` is refused: the converter reads the merged
folder from disk and llama.cpp writes and reads a plaintext file, so the merged weights would lie on disk in
plaintext. Export with ``--for hf`` and convert a ``tunelab decrypt`` copy where plaintext is meant to be.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.io import atomic_write_text
from tunelab.model_files import tokenizer_options, weights_options
from tunelab.modeling.methods import VIRTUAL_TOKEN_METHODS
from tunelab.runs.export import GOLDEN_NEW_TOKENS, GoldenPrompt, export_run, golden_prompts, snapshot
from tunelab.runs.folder import RunFolder
from tunelab.security import files as sealed

QUANTS = ("f16", "q8_0", "bf16", "f32")
CONVERTER = "convert_hf_to_gguf.py"
SDIST_VENDOR = Path("vendor") / "llama.cpp"  # where llama-cpp-python's sdist keeps llama.cpp
FETCH_HINT = ("run `pip download --no-deps --no-binary :all: llama-cpp-python`, extract the .tar.gz and pass its "
              "folder with --llama-cpp DIR (or set TUNELAB_LLAMA_CPP)")
# What the GGUF file must reproduce of the merged fp32 model on the golden prompts: the tokenization
# always; the first greedy token on at least `first_token` of them; the whole greedy output (16 new
# tokens) on at least `greedy` of them; and the next-token distribution at the prompt's end within
# `max_kl_divergence` (KL(merged || gguf), the measure llama.cpp's own quantization reports use; the
# largest |log-prob| difference over the vocabulary is recorded too, but it is set by tail tokens
# nobody samples). Measured on SmolLM2-135M (a LoRA run, 16 label prompts + 6 free-text prompts):
#   f32   22/22 first tokens, 22/22 greedy, max KL 5e-6
#   f16   22/22, 22/22, max KL 3e-5
#   bf16  22/22, 22/22, max KL 9e-3
#   q8_0  21/22, 19/22 (3/6 free-text answers drift after a few tokens), max KL 0.046: its token
#         embedding, which SmolLM2 ties to the output head, and the activations are 8-bit too.
# A broken conversion (wrong tokenizer, RoPE or weights) moves KL to 1 and beyond. The limits leave
# about 5x to 40x headroom; q8_0 is held to its first tokens and KL, its full answers are reported.
TOLERANCES = {
    "f32": {"first_token": 0.9, "greedy": 0.75, "max_kl_divergence": 1e-3},
    "f16": {"first_token": 0.9, "greedy": 0.75, "max_kl_divergence": 1e-3},
    "bf16": {"first_token": 0.9, "greedy": 0.5, "max_kl_divergence": 0.05},
    "q8_0": {"first_token": 2 / 3, "greedy": 0.0, "max_kl_divergence": 0.25},
}
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"


@dataclass(frozen=True)
class Converter:
    """llama.cpp's converter script and the gguf-py package beside it (None when the tree has none)."""

    script: Path
    gguf_py: Path | None


def export_for_gguf(run_dir: str | Path, out: str | Path, quant: str = "f16", llama_cpp: str | Path | None = None,
                    max_diff: float | None = None) -> dict:
    """Write ``out/RUN_NAME.gguf``, ``out/Modelfile``, ``out/gguf_check.json`` and the converter's
    ``out/convert.log``; return the check."""
    run_dir, out = Path(run_dir), Path(out)
    config = RunFolder(run_dir).config()
    check_exportable(config, quant)
    if sealed.encryption_on():  # the converter and llama.cpp read plaintext files only, and a merged folder on disk
        raise TunelabError("--for gguf is refused while a master key is set: llama.cpp's converter needs the merged "
                           "weights in plaintext on disk; export with --for hf (encrypted), then on the machine that "
                           "converts it run `tunelab decrypt OUT --out PLAIN` and convert PLAIN with llama.cpp's "
                           "convert_hf_to_gguf.py")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TunelabError(f"output folder {out} already exists; remove it or choose another --out")
    # Everything that needs no merged model is checked before the merge: the converter and the template.
    converter = find_converter(llama_cpp)
    template = ollama_template(_tokenizer(RunFolder(run_dir).weights_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.exporting-", dir=out.parent))
    try:
        merged = staging / "merged"
        export_run(run_dir, merged, dtype="fp32", max_diff=max_diff)
        tokenizer = _tokenizer(merged)
        modelfile = ollama_modelfile(f"{config.run_name}.gguf", template, stop_tokens(tokenizer, merged),
                                     config.data.system_prompt)
        gguf_file = staging / f"{config.run_name}.gguf"
        seconds = convert(converter, merged, gguf_file, quant, config.run_name, staging / "convert.log")
        check = {"run": str(run_dir), "quant": quant, "converter": str(converter.script),
                 "convert_seconds": round(seconds, 1), "file_bytes": gguf_file.stat().st_size}
        check |= verify(gguf_file, merged, tokenizer, golden_prompts(run_dir, config, tokenizer), quant)
        if check.get("checked") and not check["passed"]:
            sealed.write_json(run_dir / "gguf_check.json", check)  # quotes golden prompts
            raise TunelabError(gguf_refusal(check, run_dir / "gguf_check.json"))
        shutil.rmtree(merged)
        atomic_write_text(staging / "Modelfile", modelfile)
        sealed.write_json(staging / "gguf_check.json", check)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(summary_line(check, out / gguf_file.name), flush=True)
    print(f"run it with Ollama: cd {out} && ollama create {config.run_name} -f Modelfile && ollama run "
          f"{config.run_name}; or with llama.cpp: llama-cli -m {out / gguf_file.name}", flush=True)
    return check


def check_exportable(config: RunConfig, quant: str) -> None:
    if quant not in QUANTS:
        raise TunelabError(f"--quant {quant}: expected one of {', '.join(QUANTS)}")
    if config.task not in ("sft", "pretrain"):
        raise TunelabError(f"--for gguf exports causal LM runs (task sft or pretrain), not task {config.task}; "
                           f"use --for hf")
    if config.method in VIRTUAL_TOKEN_METHODS:
        raise TunelabError(f"method {config.method} cannot be merged into the base weights, and a GGUF file holds "
                           f"plain weights only; retrain with method: lora to export it")


# ---- finding llama.cpp's converter


def find_converter(explicit: str | Path | None = None) -> Converter:
    """The converter in ``explicit``, else in ``$TUNELAB_LLAMA_CPP``, else beside the installed ``llama_cpp``.

    A folder the user names wins over the installed package: it is a deliberate choice (a newer
    llama.cpp, say), while the package is only where a source install would have left the converter.
    """
    for where, folder in (("--llama-cpp", explicit), ("TUNELAB_LLAMA_CPP", os.environ.get("TUNELAB_LLAMA_CPP"))):
        if folder:
            return _converter_in(Path(folder).expanduser(), where)
    for folder in _installed_llama_cpp_trees():
        found = _find_script(folder)
        if found:
            return _converter(found)
    raise TunelabError(f"llama.cpp's converter {CONVERTER} was not found: {FETCH_HINT}")


def _converter_in(folder: Path, where: str) -> Converter:
    if not folder.is_dir():
        raise TunelabError(f"{where} {folder}: no such folder; {FETCH_HINT}")
    found = _find_script(folder)
    if found is None:
        raise TunelabError(f"{where} {folder} has no {CONVERTER} (expected a llama.cpp checkout, or an extracted "
                           f"llama-cpp-python sdist with {SDIST_VENDOR}/); {FETCH_HINT}")
    return _converter(found)


def _find_script(folder: Path) -> Path | None:
    """The converter at the top of a llama.cpp checkout, or under vendor/llama.cpp/ of llama-cpp-python's sdist."""
    for candidate in (folder / CONVERTER, folder / SDIST_VENDOR / CONVERTER):
        if candidate.is_file():
            return candidate
    return None


def _converter(script: Path) -> Converter:
    gguf_py = script.parent / "gguf-py"
    return Converter(script.resolve(), gguf_py.resolve() if (gguf_py / "gguf").is_dir() else None)


def _installed_llama_cpp_trees() -> list[Path]:
    """The installed llama_cpp package folder and its parent: an editable or in-tree install of llama-cpp-python
    keeps vendor/llama.cpp/ beside the package; a wheel install ships no converter."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    package = Path(list(spec.submodule_search_locations)[0])
    return [package, package.parent]


# ---- converting


def convert(converter: Converter, model_dir: Path, outfile: Path, quant: str, name: str, log: Path) -> float:
    """Run the converter as a subprocess (its own module layout and imports stay out of ours); return seconds.

    The converter imports ``gguf`` and puts its own gguf-py first unless told otherwise; putting it
    first on PYTHONPATH too means the constants it was written against are used even if a different
    ``gguf`` is installed (the converter often needs a gguf-py newer than the last PyPI release).
    """
    env = dict(os.environ)
    if converter.gguf_py is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(converter.gguf_py)] + [p for p in [env.get("PYTHONPATH")] if p])
    command = [sys.executable, str(converter.script), str(model_dir), "--outfile", str(outfile), "--outtype", quant,
               "--model-name", name]
    print(f"converting with {converter.script} to {quant}", flush=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not outfile.is_file():
        raise TunelabError(converter_failure(log.read_text(encoding="utf-8", errors="replace"), converter.script))
    return seconds


def converter_failure(output: str, script: Path) -> str:
    """One line from the converter's output that says what went wrong, with what to do where tunelab knows."""
    missing = re.findall(r"No module named '([\w.]+)'", output)
    if missing:
        package = missing[-1].split(".")[0]
        return (f"llama.cpp's converter ({script}) needs the Python package {package!r}, which is not installed: "
                f"pip install {package}")
    if "BPE pre-tokenizer was not recognized" in output:
        return (f"llama.cpp's converter ({script}) does not know this model's tokenizer (its BPE pre-tokenizer hash is "
                f"not in its table); use a llama.cpp version that supports the base model")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1] if lines else "")
    return f"llama.cpp's converter ({script}) failed: {last[:300]}"


# ---- Ollama


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, **tokenizer_options(folder))


def chatml_default_system(tokenizer) -> tuple[bool, str | None]:
    """Whether the chat template is ChatML, and the system message it adds when a conversation has none.

    Found by rendering probe conversations and comparing them with ChatML, so a template is accepted
    only for what it does, whatever its Jinja looks like. SmolLM2's adds
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face" when there is no system message.
    """
    turns = [{"role": "user", "content": "Probe question one?"}, {"role": "assistant", "content": "Probe answer.\n"},
             {"role": "user", "content": "Probe question two?"}]
    header = f"{CHATML_START}assistant\n"
    try:
        with_system = tokenizer.apply_chat_template([{"role": "system", "content": "Probe system."}] + turns,
                                                    tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template may raise on a system message or on alternation; then it is not plain ChatML
        return False, None
    expected = chatml(turns) + header
    if with_system != chatml([{"role": "system", "content": "Probe system."}]) + expected:
        return False, None
    if without == expected:
        return True, None
    match = re.fullmatch(re.escape(CHATML_START) + r"system\n(.*?)" + re.escape(CHATML_END) + r"\n",
                         without[:-len(expected)] if without.endswith(expected) else "", flags=re.S)
    return (True, match.group(1)) if match else (False, None)


def chatml(messages: list[dict]) -> str:
    return "".join(f"{CHATML_START}{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages)


def ollama_chatml_template(default_system: str | None) -> str:
    """ChatML as an Ollama (Go text/template) TEMPLATE.

    Ollama passes the conversation as ``.Messages`` and every system message (or the Modelfile's
    SYSTEM) as ``.System``; the system turn is written first, then the other turns, and a final
    assistant header unless the last turn is the assistant's (then Ollama continues that turn).
    """
    default = ""
    if default_system is not None:
        text = default_system if "{{" not in default_system else "{{ " + json.dumps(default_system) + " }}"
        default = f"{{{{ else }}}}{CHATML_START}system\n{text}{CHATML_END}\n"
    return ("{{- if .System }}" f"{CHATML_START}system\n{{{{ .System }}}}{CHATML_END}\n" f"{default}{{{{ end }}}}\n"
            "{{- range $i, $_ := .Messages }}\n"
            "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
            '{{- if ne .Role "system" }}' f"{CHATML_START}{{{{ .Role }}}}\n"
            '{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}' f"{CHATML_END}\n{{{{ end }}}}\n"
            "{{- end }}\n"
            '{{- if and (ne .Role "assistant") $last }}' f"{CHATML_START}assistant\n{{{{ end }}}}\n"
            "{{- end }}")


def ollama_template(tokenizer) -> str:
    """The Modelfile TEMPLATE for the run's tokenizer: ChatML translated, raw text for a model without a template."""
    if not tokenizer.chat_template:
        return "{{ .Prompt }}"  # a base model tuned on raw text: the prompt is the text
    is_chatml, default_system = chatml_default_system(tokenizer)
    if not is_chatml:
        raise TunelabError("the run's chat template is not ChatML (<|im_start|>role ... <|im_end|>), and tunelab "
                           "translates only ChatML into an Ollama TEMPLATE; export with --for hf and use llama.cpp's "
                           "converter by hand, or train on a ChatML model such as smollm2-135m")
    return ollama_chatml_template(default_system)


def stop_tokens(tokenizer, model_dir: Path) -> list[str]:
    """EOS, every EOS id in the generation config, and ChatML's turn markers: where an answer ends."""
    config_path = model_dir / "generation_config.json"
    ids = json.loads(config_path.read_text()).get("eos_token_id") if config_path.exists() else None
    ids = ids if isinstance(ids, list) else [ids]
    tokens = [tokenizer.eos_token] + [tokenizer.convert_ids_to_tokens(i) for i in ids if i is not None]
    if tokenizer.chat_template and CHATML_END in tokenizer.chat_template:
        tokens += [CHATML_END, CHATML_START]  # a new turn header means the answer is over
    return list(dict.fromkeys(t for t in tokens if t))


def ollama_modelfile(gguf_name: str, template: str, stops: list[str], system_prompt: str | None) -> str:
    """The Modelfile: the file beside it, the prompt template, where answers stop, and the run's system prompt."""
    for name, text in (("TEMPLATE", template), ("SYSTEM", system_prompt or "")):
        if '"""' in text:
            raise TunelabError(f'the Modelfile {name} cannot hold three double quotes ("""): {text[:60]!r}')
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{template}"""', ""]
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    if system_prompt:
        lines += ["", f'SYSTEM """{system_prompt}"""']
    return "\n".join(lines) + "\n"


# ---- checking the file


def verify(gguf_file: Path, merged: Path, tokenizer, prompts: list[GoldenPrompt], quant: str) -> dict:
    """Run the golden prompts greedily through the GGUF file (llama.cpp) and the merged model, and compare."""
    if importlib.util.find_spec("llama_cpp") is None:
        return unchecked("llama_cpp is not installed (pip install 'tunelab[gguf]')")
    import torch
    from transformers import AutoModelForCausalLM

    ids = [tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
    answers = llama_cpp_answers(gguf_file, prompts, ids, tokenizer.eos_token_id)
    if isinstance(answers, str):
        return unchecked(answers)
    rows, logits = answers
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, **weights_options(merged)).eval()
    reference = snapshot(model, tokenizer, prompts)
    compared = []
    for prompt, prompt_ids, row, row_logits, ref_lp, ref_out in zip(prompts, ids, rows, logits, reference.logprobs,
                                                                    reference.outputs):
        lp = torch.log_softmax(torch.from_numpy(row_logits).float(), dim=-1)
        diff = float((lp - ref_lp).abs().max())
        kl = float((ref_lp.exp() * (ref_lp - lp)).sum())  # KL(merged || gguf) of the next-token distribution
        output = tokenizer.decode(row["new_tokens"], skip_special_tokens=True).strip()  # as generate decodes
        compared.append({"input": prompt.shown, "same_tokens": row["llama_ids"] == prompt_ids,
                         "kl_divergence": kl if math.isfinite(kl) else None,
                         "logprob_diff": diff if math.isfinite(diff) else None,
                         "first_token_match": int(lp.argmax()) == int(ref_lp.argmax()), "gguf_output": output,
                         "merged_output": ref_out, "same_output": output == ref_out})
    return judge(compared, quant)


def unchecked(reason: str) -> dict:
    print(f"warning: the GGUF file was not checked: {reason}", file=sys.stderr, flush=True)
    return {"checked": False, "reason": reason}


def llama_cpp_answers(gguf_file: Path, prompts: list[GoldenPrompt], ids: list[list[int]], eos: int):
    """llama.cpp's answers to the golden prompts, from a child process: per-prompt rows and last-position logits.

    llama.cpp is native code; if it crashes on the file (or on this CPU), the export reports that instead
    of dying with it. Returns the reason as a string when the child fails.
    """
    with tempfile.TemporaryDirectory(prefix="tunelab-gguf-check-") as folder:
        request = Path(folder) / "request.json"
        sealed.write_json(request, {"gguf": str(gguf_file), "eos": eos, "new_tokens": GOLDEN_NEW_TOKENS,
                                    "prompts": [{"text": p.text, "ids": i} for p, i in zip(prompts, ids)]})
        done = subprocess.run([sys.executable, "-m", "tunelab.runs.export_gguf", str(request)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
            lines = done.stderr.strip().splitlines()
            return f"llama.cpp failed running the file ({how}){': ' + lines[-1][:200] if lines else ''}"
        import numpy as np

        rows = sealed.read_json(Path(folder) / "rows.json")
        return rows, list(np.load(Path(folder) / "logits.npy"))


def run_golden_prompts_in_llama_cpp(request_path: Path) -> None:
    """The child process: feed each prompt's HF token ids to llama.cpp, keep the last-position logits, decode greedily.

    Feeding the HF ids keeps a tokenizer difference (reported from llama.cpp's own tokenization) from also
    showing up as a weight difference. Generation stops at the tokenizer's EOS, as ``generate`` does.
    """
    import numpy as np
    from llama_cpp import Llama

    request = sealed.read_json(request_path)  # it quotes golden prompts: sealed when a key is set
    _reference_kernels_only()
    longest = max(len(p["ids"]) for p in request["prompts"])
    llm = Llama(model_path=request["gguf"], n_ctx=longest + request["new_tokens"] + 8, logits_all=True,
                verbose=False, n_threads=os.cpu_count() or 1)
    rows, logits = [], []
    for prompt in request["prompts"]:
        llm.reset()
        llm.eval(prompt["ids"])
        logits.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
        new = []
        for _ in range(request["new_tokens"]):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token == request["eos"]:
                break
            new.append(token)
            llm.eval([token])
        rows.append({"llama_ids": llm.tokenize(prompt["text"].encode("utf-8"), add_bos=False, special=True),
                     "new_tokens": new})
    llm.close()
    np.save(request_path.parent / "logits.npy", np.stack(logits))
    sealed.write_json(request_path.parent / "rows.json", rows)


def _reference_kernels_only() -> None:
    """Load weights in llama.cpp's plain layout, without the repacked ones (AMX, ARM repack).

    The check is about the file, not the kernels, and in llama-cpp-python 0.3.36 built with
    GGML_NATIVE on an AMX Xeon, the AMX Q8_0 kernels crash on multi-token batches (a general protection
    fault in libggml-cpu). llama-cpp-python has no argument for this model parameter, so its default is
    replaced, in this child process only.
    """
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def plain_layout():
        params = default()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = plain_layout


def judge(rows: list[dict], quant: str) -> dict:
    """The figures of gguf_check.json and the verdict against ``TOLERANCES[quant]``."""
    limits, n = TOLERANCES[quant], len(rows)
    kls = [r["kl_divergence"] for r in rows]
    diffs = [r["logprob_diff"] for r in rows if r["logprob_diff"] is not None]
    counts = {"same_tokens": sum(r["same_tokens"] for r in rows),
              "first_token_matches": sum(r["first_token_match"] for r in rows),
              "greedy_matches": sum(r["same_output"] for r in rows)}
    max_kl = None if None in kls else max(kls)
    passed = (counts["same_tokens"] == n and counts["first_token_matches"] >= math.ceil(limits["first_token"] * n)
              and counts["greedy_matches"] >= math.ceil(limits["greedy"] * n)
              and max_kl is not None and max_kl <= limits["max_kl_divergence"])
    return {"checked": True, "passed": passed, "prompts_checked": n, **counts, "max_kl_divergence": max_kl,
            "mean_kl_divergence": None if max_kl is None else statistics.fmean(kls),
            "max_logprob_diff": max(diffs) if len(diffs) == n else None, "tolerance": limits,
            "golden_new_tokens": GOLDEN_NEW_TOKENS, "prompts": rows}


def gguf_refusal(check: dict, path: Path) -> str:
    hint = ("try --quant f16" if check["quant"] in ("q8_0", "bf16") else
            "this llama.cpp may not convert or run the model correctly; try a newer one with --llama-cpp")
    return (f"export refused: the {check['quant']} GGUF file differs from the merged model more than allowed "
            f"({summary_figures(check)}; allowed: {check['tolerance']}); per-prompt figures in {path}; {hint}")


def summary_figures(check: dict) -> str:
    n = check["prompts_checked"]
    kl = check["max_kl_divergence"]
    return (f"tokenization same on {check['same_tokens']}/{n}, first token same on {check['first_token_matches']}/{n}, "
            f"greedy output same on {check['greedy_matches']}/{n}, next-token KL divergence at most "
            f"{'not finite' if kl is None else f'{kl:.2g}'}")


def summary_line(check: dict, path: Path) -> str:
    size = check["file_bytes"] / 2**20
    done = f"wrote {path} ({check['quant']}, {size:.1f} MiB, converted in {check['convert_seconds']:.1f} s)"
    if not check.get("checked"):
        return f"{done}; not checked: {check['reason']}"
    return f"{done}; checked against the merged model on the golden prompts: {summary_figures(check)}"


if __name__ == "__main__":  # the llama.cpp child of llama_cpp_answers
    run_golden_prompts_in_llama_cpp(Path(sys.argv[1]))
