"""``tunelab export RUN --for vllm``: a folder vLLM serves as it is, and the exact command that serves it.

A LoRA-family run (lora, rslora, qlora) is served the way vLLM users expect, the base model plus the
run's adapter (``vllm serve BASE --enable-lora --lora-modules RUN=adapter``), so one base serves many
runs side by side. The merged model is written as well, by ``export_run``, for three reasons: its
golden-prompt check proves the adapter loads and means what training meant; it is the single-model
alternative without LoRA overhead (USAGE.md gives that command); and it holds the run's tokenizer and
generation config, which both commands use. The output folder:

    base/               the base model (embedded or local base; a Hugging Face id is referenced, not copied)
    adapter/            the peft adapter, base_model_name_or_path pointing at what vLLM loads
    merged/             the merged model with tokenizer, chat template and generation config (export_run)
    chat_template.jinja the template training rendered with
    serve_vllm.sh       the command line (also printed)
    USAGE.md            how to start it and call it with the openai client

vLLM cannot load DoRA or IA3 adapters as LoRA, so those runs are exported merged only and served as a
plain model; full and freeze runs likewise. Prefix and prompt tuning can be neither loaded nor merged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.data.records import Record
from tunelab.data.templates import to_messages, with_system_prompt
from tunelab.errors import TunelabError
from tunelab.io import atomic_write_text
from tunelab.model_files import EMBEDDED, resolve_model, tokenizer_options
from tunelab.modeling.methods import VIRTUAL_TOKEN_METHODS
from tunelab.runs.export import FALLBACK_QUESTIONS, export_run
from tunelab.runs.folder import RunFolder
from tunelab.security import files as sealed

# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LORA_SERVABLE = ("lora", "rslora", "qlora")
MERGED_ONLY_REASONS = {
    "dora": "vLLM does not support DoRA adapters",
    "ia3": "vLLM serves only LoRA adapters, not IA3",
    "full": "a full fine-tune has no adapter",
    "freeze": "a freeze run saved a whole model",
}
HERE = "$HERE"  # the script's own folder, so the exported folder can be moved or copied to a GPU machine
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # copied; adapter_config.json is rewritten


@dataclass
class BaseModel:
    """What vLLM loads under the adapter: a folder copied into the export, or a Hugging Face id."""

    served_name: str  # --served-model-name: what clients pass as model= to get the base alone
    folder: Path | None  # a local folder to copy into base/; None for a hub id
    hub_id: str | None = None


@dataclass
class VllmPlan:
    """Everything the command line and USAGE.md are written from."""

    run_name: str
    mode: str  # "lora" (base + adapter) or "merged"
    base: BaseModel
    max_lora_rank: int | None = None
    reason: str | None = None  # why a run is served merged


def export_for_vllm(run_dir: str | Path, out: str | Path, dtype: str = "fp32", max_diff: float | None = None) -> dict:
    """Write ``out`` for vLLM and print the command that serves it; return the plan as a dict."""
    run_dir, out = Path(run_dir), Path(out)
    config = RunFolder(run_dir).config()
    mode = serving_mode(config)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TunelabError(f"output folder {out} already exists; remove it or choose another --out")
    adapter_config = check_adapter(run_dir / "adapter") if mode == "lora" else None
    plan = VllmPlan(config.run_name, mode, base_model(config.model),
                    vllm_lora_rank(adapter_rank(adapter_config)) if adapter_config else None,
                    MERGED_ONLY_REASONS.get(config.method))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.exporting-", dir=out.parent))
    try:
        export_run(run_dir, staging / "merged", dtype=dtype, max_diff=max_diff)
        if plan.mode == "lora":
            write_lora_files(run_dir / "adapter", adapter_config, plan, staging, out.resolve())
        write_serving_files(run_dir, config, plan, staging)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    command = format_command(serve_args(plan, str(out.resolve())))
    if plan.reason:
        print(f"note: {plan.reason}, so {config.method} run {config.run_name} is served as the merged model",
              flush=True)
    print(f"wrote a vLLM export of run {run_dir} to {out}; serve it with {out / 'serve_vllm.sh'}:\n{command}",
          flush=True)
    return {"run": str(run_dir), "out": str(out), "mode": plan.mode, "command": command}


def serving_mode(config: RunConfig) -> str:
    """``lora`` when vLLM can load the run's adapter, ``merged`` when only the merged model can be served."""
    if config.task not in ("sft", "pretrain"):
        raise TunelabError(f"--for vllm exports causal LM runs (task sft or pretrain), not task {config.task}; "
                           f"use --for hf and a server that runs that kind of model")
    if config.method in VIRTUAL_TOKEN_METHODS:
        raise TunelabError(f"vLLM cannot serve method {config.method}: it loads only LoRA adapters, and "
                           f"{config.method} tuning's virtual tokens cannot be merged into the weights either "
                           f"(so --for hf cannot help); serve the run with peft, or retrain with method: lora")
    return "lora" if config.method in LORA_SERVABLE else "merged"


def check_adapter(adapter_dir: Path) -> dict:
    """The adapter's config, refused up front (before the merge) when vLLM's loader would reject it."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise TunelabError(f"run folder {adapter_dir.parent} has no adapter/adapter_config.json; did the run finish?")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # vllm/lora/peft_helper.py rejects these three at load time; say so now, with the way out.
    problems = [("use_dora", "a DoRA adapter"), ("modules_to_save", f"modules_to_save {config.get('modules_to_save')}")]
    for key, what in problems:
        if config.get(key):
            raise TunelabError(f"vLLM cannot load {what} ({config_path}); export the merged model with --for hf "
                               f"and serve that folder with `vllm serve`")
    if config.get("bias", "none") != "none":
        raise TunelabError(f"vLLM cannot load LoRA bias terms (bias: {config['bias']} in {config_path}); export "
                           f"the merged model with --for hf and serve that folder with `vllm serve`")
    return config


def adapter_rank(adapter_config: dict) -> int:
    """The largest rank in the adapter: ``r``, or a larger per-module rank from ``rank_pattern``."""
    return max([int(adapter_config["r"])] + [int(r) for r in (adapter_config.get("rank_pattern") or {}).values()])


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank`` (it takes only a fixed set of values)."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise TunelabError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]}); "
                       f"export the merged model with --for hf and serve that folder with `vllm serve`")


def base_model(model: str) -> BaseModel:
    """The run's base as vLLM will load it: an embedded or local model is copied, a hub id referenced."""
    if model in EMBEDDED:
        return BaseModel(model, resolve_model(model))
    path = Path(model).expanduser()
    if path.is_dir():
        return BaseModel(path.resolve().name, resolve_model(model))
    return BaseModel(model, None, hub_id=model)


def write_lora_files(adapter_dir: Path, adapter_config: dict, plan: VllmPlan, staging: Path, final: Path) -> None:
    """base/ (unless a hub id) and adapter/, whose config names the base by the path it will have after the rename.

    peft and vLLM do not load the base from ``base_model_name_or_path``, but model cards, the Hub and
    people read it, and the run's copy names this machine's model cache.
    """
    if plan.base.folder is not None:
        shutil.copytree(plan.base.folder, staging / "base")
    (staging / "adapter").mkdir()
    for name in ADAPTER_WEIGHTS:
        if (adapter_dir / name).exists() and sealed.encryption_on():  # sealed under the key now set, whatever it was
            sealed.write_bytes(staging / "adapter" / name, sealed.read_bytes(adapter_dir / name))
        elif (adapter_dir / name).exists():
            shutil.copy2(adapter_dir / name, staging / "adapter" / name)
    base_ref = plan.base.hub_id or str(final / "base")
    config = adapter_config | {"base_model_name_or_path": base_ref}
    atomic_write_text(staging / "adapter" / "adapter_config.json", json.dumps(config, indent=2) + "\n")


def write_serving_files(run_dir: Path, config: RunConfig, plan: VllmPlan, staging: Path) -> None:
    """chat_template.jinja, serve_vllm.sh and USAGE.md; the chat template comes from the merged model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(staging / "merged", **tokenizer_options(staging / "merged"))
    if tokenizer.chat_template:
        atomic_write_text(staging / "chat_template.jinja", tokenizer.chat_template)
    args = serve_args(plan, HERE, chat_template=bool(tokenizer.chat_template))
    script = staging / "serve_vllm.sh"
    atomic_write_text(script, shell_script(args, config.run_name))
    script.chmod(0o755)
    sealed.write_text(staging / "USAGE.md", usage_text(plan, args, example_messages(run_dir, config)))  # quotes a row


def serve_args(plan: VllmPlan, root: str, chat_template: bool = True) -> list[str]:
    """``vllm serve`` and its arguments, paths under ``root`` (``$HERE`` in the script, the real folder when printed).

    The tokenizer, chat template and generation config come from the run, not from the base: training
    rendered with that template and taught the model to stop at its end-of-turn token (merged/'s
    generation_config.json lists it as EOS, so vLLM stops there too).
    """
    merged = f"{root}/merged"
    template = ["--chat-template", f"{root}/chat_template.jinja"] if chat_template else []
    common = ["--tokenizer", merged, *template, "--generation-config", merged]
    if plan.mode == "merged":
        return ["vllm", "serve", merged, "--served-model-name", plan.run_name, *common]
    base = plan.base.hub_id or f"{root}/base"
    return ["vllm", "serve", base, "--served-model-name", plan.base.served_name, *common,
            "--enable-lora", "--max-lora-rank", str(plan.max_lora_rank), "--max-loras", "1",
            "--lora-modules", f"{plan.run_name}={root}/adapter"]


def format_command(args: list[str], continued: str = " \\\n  ") -> str:
    """One argument per flag and line; ``$HERE`` paths double-quoted so the shell expands them."""
    def quote(arg: str) -> str:
        if HERE in arg:
            return f'"{arg}"'
        return arg if all(c.isalnum() or c in "-_./=:@+," for c in arg) else "'" + arg.replace("'", "'\\''") + "'"

    parts, line = [], [quote(args[0]), quote(args[1]), quote(args[2])]
    for arg in args[3:]:
        if arg.startswith("--") and line:
            parts.append(" ".join(line))
            line = []
        line.append(quote(arg))
    parts.append(" ".join(line))
    return continued.join(parts)


def shell_script(args: list[str], run_name: str) -> str:
    return ("#!/usr/bin/env bash\n"
            f"# Serve tunelab run {run_name} with vLLM's OpenAI-compatible server on port 8000.\n"
            "# Extra arguments are passed on to vllm serve (e.g. --port 8001 --max-model-len 4096).\n"
            "set -euo pipefail\n"
            'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n'
            f"exec {format_command(args)} \\\n  \"$@\"\n")


def example_messages(run_dir: Path, config: RunConfig) -> list[dict]:
    """A request like the ones the run was trained on: its first held-out input, as training phrased it."""
    rows = RunFolder(run_dir).predictions()[:1]
    summary = RunFolder(run_dir).data_summary() or {}
    if not rows:
        return with_system_prompt([{"role": "user", "content": FALLBACK_QUESTIONS[0]}], config.data.system_prompt)
    row = rows[0]
    if summary.get("kind") == "labeled":
        record = Record(kind="labeled", text=row["input"], label=row.get("reference") or "")
    else:
        record = Record(kind="chat", messages=[{"role": "user", "content": row["input"]},
                                               {"role": "assistant", "content": row.get("reference") or ""}])
    messages = to_messages(record, summary.get("labels"), config.data.label_prompt, config.data.system_prompt)
    return messages[:-1]  # without the answer


def usage_text(plan: VllmPlan, args: list[str], messages: list[dict]) -> str:
    """USAGE.md: what is in the folder, how to start the server, how to call it."""
    model = plan.run_name
    lines = [f"# Serving `{plan.run_name}` with vLLM", "",
             "Written by `tunelab export --for vllm`. Start the server (a GPU machine with `pip install vllm`):", "",
             "```bash", "./serve_vllm.sh", "```", "", "which runs:", "", "```bash",
             format_command(args).replace(HERE, "<this folder>"), "```", ""]
    if sealed.encryption_on():
        lines += ["The weights here (`adapter/`, `merged/`) are encrypted at rest: a master key was set when tunelab "
                  "wrote them, and vLLM cannot read them. On the serving machine, with the same key set, "
                  "`tunelab decrypt <this folder> --out PLAIN` writes a plaintext copy; run `PLAIN/serve_vllm.sh`. "
                  "That copy is outside tunelab's protection.", ""]
    if plan.mode == "lora":
        base = f"The Hub model `{plan.base.hub_id}`" if plan.base.hub_id else "`base/`"
        lines += [f"{base} is loaded once and the run's adapter `adapter/` "
                  f"is applied per request: `model=\"{model}\"` asks for the tuned model, "
                  f"`model=\"{plan.base.served_name}\"` for the base alone. To serve more runs on the same base, add "
                  f"`NAME=PATH` pairs to `--lora-modules` and raise `--max-loras` (and `--max-lora-rank` to the "
                  f"largest rank, one of {', '.join(map(str, VLLM_LORA_RANKS))}).", "",
                  "One model without LoRA (no adapter overhead, the same answers): "
                  f"`vllm serve merged --served-model-name {model}`. "
                  "`merged/export_check.json` shows that the merge gives the adapter's greedy answers on the golden "
                  "prompts.", ""]
    else:
        lines += [f"The run is served as one merged model (`merged/`): {plan.reason}.", ""]
    lines += ["Call it with any OpenAI client (`pip install openai`):", "", "```python", "from openai import OpenAI",
              "",
              'client = OpenAI(base_url="http://localhost:8000/v1", api_key="EMPTY")',
              "reply = client.chat.completions.create(", f"    model={json.dumps(model)},",
              f"    messages={json.dumps(messages, ensure_ascii=False)},", "    temperature=0,", "    max_tokens=64,",
              ")", "print(reply.choices[0].message.content)", "```", ""]
    return "\n".join(lines)
