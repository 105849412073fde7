"""Training throughput and memory: TRL SFTTrainer against `tunelab train`, side by side.

Contenders, each LoRA-tuning the same model on the same prompt/completion data in its own process:

    A       TRL SFTTrainer with TRL's real defaults, bf16 autocast included (TRL 1.16's default)
    A-fp32  the same with bf16=False: fp32, not TRL's default, a second and labelled row
    B       `tunelab train` with its defaults

at LoRA dropout 0 (the peft and tunelab default) and 0.05 (the value most published recipes use).
Every ratio and goal compares with A, TRL's defaults, at the same dropout. Runs alternate: per seed
A, B, A-fp32 at dropout 0, then A, B at dropout 0.05. By default the dropout-0 comparison of A and B
runs twice per contender; A-fp32 and the dropout-0.05 rows run once each (--extra-runs), which about
doubles the training time of the version with only A (fp32) and B, instead of tripling it with every
row repeated. Estimated from the per-run times measured so far, the training processes take about
27 minutes on a 2-core Xeon with AMX (43 with --extra-runs 2), plus a few minutes of held-out loss
and generation; longer on CPUs without AMX. The report states the measured total.
Per run: wall time (model load included), non-pad tokens trained per second, peak RSS, final train
loss and a held-out loss computed afterwards by one shared function. A matmul peak measured in the
same run turns tokens/s into MFU. A second section times batched against one-at-a-time generation
with tunelab's evaluator.

    python benchmarks/train_throughput.py            # the full benchmark, every row (see above)
    python benchmarks/train_throughput.py --quick    # a small smoke run, for development only

Writes benchmarks/results/train_throughput.md (and .json with every raw number) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the results

import torch  # noqa: E402

from tunelab.data.pack import collate_packed  # noqa: E402
from tunelab.data.templates import DEFAULT_LABEL_PROMPT, encode_chat, render  # noqa: E402
from tunelab.model_files import resolve_model  # noqa: E402
from tunelab.modeling.loss import reference_loss_sum  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "data" / "examples" / "movie_sentiment.jsonl"
MODEL = "smollm2-135m"
SEED = 1234
INSTRUCTION = ("Give the sentiment (positive or negative) of each numbered movie review sentence. "
               "Answer with one line per sentence, keeping the numbers.")
GOALS = {"tokens_ratio_min": 5.0, "rss_ratio_max": 0.4, "heldout_diff_pct_max": 2.0}

FULL = {"train": 128, "heldout": 32, "max_length": 512, "max_k": 15, "token_cap": 400, "gen_prompts": 500,
        "gen_single": 50, "matmul_repeats": 10}
QUICK = {"train": 16, "heldout": 8, "max_length": 256, "max_k": 6, "token_cap": 240, "gen_prompts": 20,
         "gen_single": 20, "matmul_repeats": 3}


# ---------------------------------------------------------------- data

def build_data(tokenizer, sizes: dict, work: Path) -> dict:
    """Deterministic prompt/completion files: k numbered review sentences -> k numbered labels.

    k is drawn from 1..max_k; sentences that would push an example past token_cap tokens (chat
    template included) are left out, so no example is ever truncated at max_length.
    """
    with DATA.open(encoding="utf-8") as f:
        sentences = [json.loads(line) for line in f if line.strip()]
    order = list(range(len(sentences)))
    random.Random(SEED).shuffle(order)
    pool = iter(order)
    rng = random.Random(SEED + 1)

    def example() -> dict:
        picked: list[dict] = []
        for _ in range(rng.randint(1, sizes["max_k"])):
            candidate = picked + [sentences[next(pool)]]
            row = _pair(candidate)
            if picked and len(encode_chat(tokenizer, _messages(row), 10**6).input_ids) > sizes["token_cap"]:
                break
            picked = candidate
        return _pair(picked)

    train = [example() for _ in range(sizes["train"])]
    heldout = [example() for _ in range(sizes["heldout"])]
    # Generation prompts: single sentences not used above, with tunelab's default label prompt.
    gen = [sentences[next(pool)]["text"] for _ in range(sizes["gen_prompts"])]
    paths = {"train": work / "train.jsonl", "heldout": work / "heldout.jsonl"}
    for name, rows in (("train", train), ("heldout", heldout)):
        with paths[name].open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"train": train, "heldout": heldout, "gen_texts": gen, "paths": paths}


def _pair(rows: list[dict]) -> dict:
    prompt = INSTRUCTION + "\n\n" + "\n".join(f"{i}. {r['text']}" for i, r in enumerate(rows, 1))
    completion = "\n".join(f"{i}. {r['label']}" for i, r in enumerate(rows, 1))
    return {"prompt": prompt, "completion": completion}


def _messages(row: dict) -> list[dict[str, str]]:
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


def token_stats(tokenizer, rows: list[dict], max_length: int) -> dict:
    """Non-pad tokens of the examples as trained (chat template, truncated to max_length)."""
    encoded = [encode_chat(tokenizer, _messages(r), max_length) for r in rows]
    lengths = [len(e.input_ids) for e in encoded]
    return {"tokens": sum(lengths), "loss_tokens": sum(e.loss_tokens for e in encoded), "min": min(lengths),
            "max": max(lengths), "mean": round(sum(lengths) / len(lengths), 1),
            "truncated": sum(1 for r, n in zip(rows, lengths) if n >= max_length)}


# ---------------------------------------------------------------- measurements

def matmul_peak(dtype: torch.dtype, repeats: int, n: int = 2048) -> float:
    """Best-of-`repeats` FLOP/s of an n x n torch.matmul."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def run_measured(cmd: list[str], log: Path, env: dict) -> dict:
    """Run a command; wall seconds and peak RSS (MB) from /usr/bin/time -v, or by polling psutil."""
    time_bin = "/usr/bin/time" if Path("/usr/bin/time").exists() else None
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        if time_bin:
            rusage = log.with_suffix(".time")
            proc = subprocess.run([time_bin, "-v", "-o", str(rusage)] + cmd, stdout=out, stderr=subprocess.STDOUT,
                                  env=env, cwd=ROOT)
            wall = time.perf_counter() - started
            text = rusage.read_text(encoding="utf-8", errors="replace") if rusage.exists() else ""
            match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
            peak = int(match.group(1)) / 1024 if match else float("nan")
        else:
            proc, peak = _poll_rss(cmd, out, env)
            wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        sys.exit(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak, 1)}


def _poll_rss(cmd: list[str], out, env: dict):
    """Fallback without /usr/bin/time: the largest summed RSS of the process tree, sampled every 0.2 s."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.2)
    return proc, peak / 2**20


def heldout_loss(model_dir: Path, adapter_dir: Path | None, tokenizer, rows: list[dict], max_length: int) -> float:
    """Mean completion-token cross-entropy of base fp32 + adapter; the one function for both contenders."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            example = encode_chat(tokenizer, _messages(row), max_length)
            loss, n = reference_loss_sum(model, collate_packed([[example]], tokenizer.pad_token_id))
            total += float(loss)
            count += n
    return total / max(count, 1)


def generation_section(model_dir: Path, tokenizer, texts: list[str], single_n: int) -> dict:
    """tunelab's generate: its default eval batch on every prompt against batch 1 on an evenly spread subset."""
    from transformers import AutoModelForCausalLM

    from tunelab.config import EvalConfig
    from tunelab.inference.generate import generate
    from tunelab.modeling.precision import pick_dtype

    dtype = pick_dtype("auto", "lora")  # the dtype tunelab evaluates in after training on this machine
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").eval()
    prompt = DEFAULT_LABEL_PROMPT
    prompts = [render(tokenizer, [{"role": "user", "content": prompt.format(text=t, choices="negative, positive")}],
                      add_generation_prompt=True) for t in texts]
    generate(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2, desc="warm-up")
    started = time.perf_counter()
    batch_size = EvalConfig().batch_size  # tunelab's default evaluation batch
    batched = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=batch_size)
    batched_s = time.perf_counter() - started
    step = max(1, len(prompts) // single_n)
    subset = list(range(0, len(prompts), step))[:single_n]
    started = time.perf_counter()
    single = generate(model, tokenizer, [prompts[i] for i in subset], max_new_tokens=8, batch_size=1)
    single_s = time.perf_counter() - started
    single_scaled = single_s * len(prompts) / len(subset)
    same = sum(1 for k, i in enumerate(subset) if single[k] == batched[i])
    return {"prompts": len(prompts), "dtype": str(dtype).replace("torch.", ""), "batch_size": batch_size,
            "max_new_tokens": 8, "batched_s": round(batched_s, 2), "single_prompts": len(subset),
            "single_s": round(single_s, 2), "single_scaled_s": round(single_scaled, 2),
            "speedup": round(single_scaled / batched_s, 2), "same_output": same}


# ---------------------------------------------------------------- contenders

def run_seed(i: int) -> int:
    """Run i of each contender trains with seed 41 + i, so both see the same seeds (data order, init)."""
    return 41 + i


CONTENDER_ORDER = ("A", "A-fp32", "B")


def make_arm(contender: str, dropout: float) -> dict:
    """One row of the results: a contender at one LoRA dropout."""
    return {"id": f"{contender}@{dropout:g}", "contender": contender, "dropout": dropout,
            "fp32": contender == "A-fp32", "slug": f"{contender}-dropout{dropout:g}".replace(".", "p")}


def plan(dropouts: list[float], runs: int, extra_runs: int, fp32: bool) -> list[tuple[int, dict]]:
    """(run index, arm) in the order run: per seed A, B (, A-fp32) at the main dropout, then A, B at the others.

    The main dropout (the first) runs `runs` times per contender; A-fp32 and the other dropouts
    `extra_runs` times. Run i of every arm uses seed 41 + i, so single runs share seed 42.
    """
    main, order = dropouts[0], []
    for i in range(1, max(runs, extra_runs) + 1):
        for d in dropouts:
            if i <= (runs if d == main else extra_runs):
                order += [(i, make_arm("A", d)), (i, make_arm("B", d))]
            if d == main and fp32 and i <= extra_runs:
                order.append((i, make_arm("A-fp32", d)))
    return order


def run_trl(i: int, arm: dict, model_dir: Path, files: dict, sizes: dict, work: Path, env: dict) -> dict:
    name = f"trl-{arm['slug']}-run{i}"
    out, result = work / name, work / f"{name}.json"
    cmd = [sys.executable, str(HERE / "trl_sft_run.py"), "--model", str(model_dir), "--train", str(files["train"]),
           "--out", str(out), "--result", str(result), "--max-length", str(sizes["max_length"]),
           "--batch-size", "8", "--epochs", "1", "--lr", "2e-4", "--seed", str(run_seed(i))]
    if arm["dropout"]:
        cmd += ["--lora-dropout", f"{arm['dropout']:g}"]
    if arm["fp32"]:
        cmd += ["--fp32"]  # bf16=False; without it TRL's default (bf16 autocast) applies
    measured = run_measured(cmd, work / f"{name}.log", env)
    inner = json.loads(result.read_text(encoding="utf-8"))
    precision = ("bf16 autocast" if inner.get("bf16_autocast") else
                 "fp16 autocast" if inner.get("fp16_autocast") else "fp32")
    return {**measured, "train_s": inner["train_seconds"], "final_loss": inner["final_loss"], "adapter": str(out),
            "dtype": inner["dtype"].replace("torch.", ""), "precision": precision, "raw": inner, "cmd": cmd}


def tunelab_cmd(i: int, arm: dict, files: dict, sizes: dict, work: Path) -> list[str]:
    dropout = [f"lora.dropout={arm['dropout']:g}"] if arm["dropout"] else []  # 0 is tunelab's default
    return [sys.executable, "-m", "tunelab.cli", "train", "/dev/null", f"model={MODEL}",
            f"data.train={files['train']}", f"data.val={files['heldout']}", f"data.test={files['heldout']}",
            "lora.r=16", "lora.alpha=32", *dropout, f"train.max_length={sizes['max_length']}",
            "train.batch_size=8", "train.epochs=1", f"train.seed={run_seed(i)}", "eval.baseline=false",
            f"run_name={arm['slug']}-run{i}",
            f"output_dir={work / 'tunelab-runs'}", "--overwrite"]


def run_tunelab(i: int, arm: dict, files: dict, sizes: dict, work: Path, env: dict) -> dict:
    cmd = tunelab_cmd(i, arm, files, sizes, work)
    log = work / f"tunelab-{arm['slug']}-run{i}.log"
    measured = run_measured(cmd, log, env)
    run_dir = work / "tunelab-runs" / f"{arm['slug']}-run{i}"
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    match = re.search(r"^model: .*\(torch\.(\w+)\)", log.read_text(encoding="utf-8", errors="replace"), re.M)
    train = metrics["train"]
    return {**measured, "train_s": train["seconds"], "final_loss": train["final_loss"],
            "adapter": str(run_dir / "adapter"), "dtype": match.group(1) if match else "?",
            "raw": {"train": train, "tuned": metrics.get("tuned")}, "cmd": cmd}


# ---------------------------------------------------------------- report

def shown(cmd: list[str], work: Path, model_dir: Path) -> list[str]:
    """A command as a reader would type it: no interpreter path, temp folder or cache path."""
    if cmd[1:3] == ["-m", "tunelab.cli"]:
        cmd = ["tunelab"] + cmd[3:]
    else:
        cmd = ["python", os.path.relpath(cmd[1], ROOT)] + cmd[2:]
    return [c.replace(str(work), "$WORK").replace(str(model_dir), "$MODEL_DIR") for c in cmd]


def summarize(runs: list[dict], peaks: dict, n_base: int) -> dict:
    tps = [r["tokens_per_s"] for r in runs]
    mean_tps = statistics.mean(tps)
    achieved = 4 * n_base * mean_tps
    return {"runs": len(runs), "tokens_per_s": round(mean_tps, 1),
            "tokens_per_s_min": round(min(tps), 1), "tokens_per_s_max": round(max(tps), 1),
            "wall_s": round(statistics.mean(r["wall_s"] for r in runs), 1),
            "train_s": round(statistics.mean(r["train_s"] for r in runs), 1),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
            "final_loss": round(statistics.mean(r["final_loss"] for r in runs), 4),
            "heldout_loss": round(statistics.mean(r["heldout_loss"] for r in runs), 4),
            "mfu_fp32_pct": round(100 * achieved / peaks["fp32"], 2),
            "mfu_bf16_pct": round(100 * achieved / peaks["bf16"], 2)}


def arm_label(res: dict, arm: str) -> str:
    """The row label of an arm, its precision taken from what the runs themselves reported."""
    s, v = res["summary"][arm], res["versions"]["trl"]
    if s["contender"] == "A":
        return f"A: TRL {v} SFTTrainer, TRL's defaults ({s['precision']}, {s['dtype']} weights, no packing)"
    if s["contender"] == "A-fp32":
        return f"A-fp32: TRL {v} SFTTrainer, bf16=False ({s['precision']}; not TRL's default)"
    extra = f", lora.dropout={s['dropout']:g}" if s["dropout"] else ""
    return f"B: tunelab train, its defaults{extra} (packing, {s['dtype']} frozen base)"


def _ratio_cells(res: dict, arm: str) -> str:
    s = res["summary"][arm]
    ref = f"A@{s['dropout']:g}"
    if arm == ref:
        return "reference | reference | reference"
    r = res["ratios"].get(f"{arm} vs {ref}")
    if r is None:
        return "- | - | -"
    return f"{r['tokens_per_s']:.2f}x | {r['peak_rss']:.2f} | {r['heldout_diff_pct']:+.2f} %"


def markdown(res: dict) -> str:
    cfg, tok, arms = res["config"], res["tokens"], res["arms"]
    dropouts = cfg["dropouts"]
    main = dropouts[0]
    v = res["versions"]["trl"]
    a_main = res["summary"].get(f"A@{main:g}", {})
    lines = [
        "# Training throughput: TRL SFTTrainer vs tunelab",
        "",
        f"{res['date']} · {res['machine']} · torch {res['versions']['torch']}, transformers "
        f"{res['versions']['transformers']}, peft {res['versions']['peft']}, trl {v}"
        + (" · **--quick (development smoke run, not a result)**" if res["quick"] else ""),
        "",
        f"SmolLM2-135M-Instruct, LoRA r=16 alpha=32 on all linear layers at LoRA dropout "
        f"{' and '.join(f'{d:g}' for d in dropouts)} (0: the peft and tunelab default; 0.05: the value most "
        f"published recipes use), lr 2e-4, 1 epoch, "
        f"max_length {cfg['max_length']}, batch size 8. Data: {cfg['train']} training and {cfg['heldout']} "
        f"held-out prompt/completion examples built from data/examples/movie_sentiment.jsonl "
        f"(k = 1..{cfg['max_k']} numbered review sentences -> k numbered labels; {tok['min']}-{tok['max']} "
        f"tokens, mean {tok['mean']}, {tok['tokens']} non-pad tokens, {tok['loss_tokens']} completion tokens; "
        f"{tok['truncated']} truncated).",
        "",
        f"Contenders: **A** is TRL {v} SFTTrainer with TRL's own defaults, bf16 autocast included (TRL's "
        f"SFTConfig turns bf16 on unless fp16 is set; these runs reported {a_main.get('precision', '?')} over "
        f"{a_main.get('dtype', '?')} weights). "
        + ("**A-fp32** is the same with bf16=False, i.e. fp32 throughout: not TRL's default, shown as a second "
           "row because earlier versions of this benchmark used it as A. "
           if any(res["summary"][a]["contender"] == "A-fp32" for a in arms) else "")
        + "**B** is `tunelab train` with its defaults. **Every ratio and goal compares with A (TRL's defaults) "
        "at the same LoRA dropout.**",
        "",
    ]
    others = (["A-fp32"] if cfg.get("trl_fp32") else []) + [f"dropout {d:g}" for d in dropouts[1:]]
    if cfg["extra_runs"] < cfg["runs"] and others:
        lines += [
            f"Repeats: the LoRA dropout {main:g} comparison of A and B runs {cfg['runs']} times per contender; "
            f"the other rows ({', '.join(others)}) run "
            f"{cfg['extra_runs']} time{'s' if cfg['extra_runs'] != 1 else ''} each, to keep the full run time "
            "down. A single run shows no seed spread: read those rows with the "
            f"spread of the repeated rows in mind (--extra-runs {cfg['runs']} repeats every row).",
            "",
        ]
    lines += [
        "| contender | LoRA dropout | runs | tokens/s mean (min-max) | wall s | train s | peak RSS MB | final loss "
        "| held-out loss | tokens/s ÷ A (TRL defaults, same dropout) | peak RSS ÷ A (same dropout) "
        "| held-out loss vs A (same dropout) | MFU fp32 % | MFU bf16 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        s = res["summary"][arm]
        lines.append(f"| {arm_label(res, arm)} | {s['dropout']:g} | {s['runs']} | {s['tokens_per_s']:.1f} "
                     f"({s['tokens_per_s_min']:.1f}-{s['tokens_per_s_max']:.1f}) | {s['wall_s']:.1f} "
                     f"| {s['train_s']:.1f} | {s['peak_rss_mb']:.0f} | {s['final_loss']:.4f} | {s['heldout_loss']:.4f} "
                     f"| {_ratio_cells(res, arm)} | {s['mfu_fp32_pct']:.2f} | {s['mfu_bf16_pct']:.2f} |")
    lines += ["", f"Base model without adapter, held-out loss: {res['base_heldout_loss']:.4f}.", ""]
    for d in dropouts:
        r = res["ratios"].get(f"B@{d:g} vs A@{d:g}")
        if r is None:
            continue
        na, nb = res["summary"][f"A@{d:g}"]["runs"], res["summary"][f"B@{d:g}"]["runs"]
        lines.append(f"- **LoRA dropout {d:g}, B against A (TRL's defaults; A {na} run{'s' if na != 1 else ''}, "
                     f"B {nb} run{'s' if nb != 1 else ''}): tokens/s {r['tokens_per_s']:.2f}x, "
                     f"peak RSS {r['peak_rss']:.2f}, held-out loss {r['heldout_diff_pct']:+.2f} %** "
                     "(negative: B lower)")
    r = res["ratios"].get(f"A-fp32@{main:g} vs A@{main:g}")
    if r is not None:
        lines.append(f"- TRL in fp32 against TRL's defaults (A-fp32 against A, dropout {main:g}): tokens/s "
                     f"{r['tokens_per_s']:.2f}x, peak RSS {r['peak_rss']:.2f}, held-out loss "
                     f"{r['heldout_diff_pct']:+.2f} %")
    r = res["ratios"].get(f"B@{main:g} vs A-fp32@{main:g}")
    if r is not None:
        lines.append(f"- Only for comparison with earlier versions of this benchmark, whose A was the fp32 row "
                     f"(not a goal's baseline): B against A-fp32, dropout {main:g}: tokens/s "
                     f"{r['tokens_per_s']:.2f}x, peak RSS {r['peak_rss']:.2f}, held-out loss "
                     f"{r['heldout_diff_pct']:+.2f} %")
    lines += ["", "Goals (B against A, TRL's defaults, at the same LoRA dropout):"]
    for goal in res["goals"]:
        lines.append(f"- {'PASS' if goal['pass'] else 'FAIL'}: {goal['name']} (measured {goal['value']})")
    lines += [
        "",
        "Per run (in the order run):",
        "",
        "| run | contender | LoRA dropout | seed | precision | wall s | train s | tokens/s | peak RSS MB | final loss "
        "| held-out loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in res["runs"]:
        lines.append(f"| {run['order']} | {run['contender']} | {run['dropout']:g} | {run['seed']} "
                     f"| {run.get('precision') or str(run.get('dtype', '?')) + ' base'} | {run['wall_s']:.1f} "
                     f"| {run['train_s']:.1f} "
                     f"| {run['tokens_per_s']:.1f} | {run['peak_rss_mb']:.0f} | {run['final_loss']:.4f} "
                     f"| {run['heldout_loss']:.4f} |")
    p, cc = res["peaks"], res["crosscheck"]
    lines += [
        "",
        "How the numbers are taken:",
        "",
        f"- tokens/s: the non-pad tokens of the training examples ({tok['tokens']}, tokenized once with the "
        "model's chat template, the same count for every row) divided by the seconds of the training loop "
        "(TRL: around `trainer.train()`; tunelab: `metrics.json[\"train\"][\"seconds\"]`). Model loading, "
        "tokenization and saving are outside it, and inside wall s. Cross-checks: TRL tokenized "
        f"{cc['trl_tokens']} tokens; tunelab's metrics.json reports {cc['tunelab_tokens']} tokens, at "
        + ", ".join(f"{tps} tokens/s (B, dropout {arm.split('@')[1]})" for arm, tps in cc["tunelab_tokens_per_s"].items())
        + " (mean of its runs).",
        "- batch size: 8 examples per optimizer step for every row (TRL "
        f"{res['steps']['A']} steps, tunelab {res['steps']['B']} steps). TRL pads each batch to its longest example; "
        "tunelab packs a step's examples into micro-batches of at most train.micro_batch_tokens (2048, the default) tokens, "
        "whose gradients accumulate into the one update; on CPU each micro-batch is one row whose examples attend "
        "causally within themselves (train.packed_attention: segments, the default), elsewhere rows of max_length "
        "with a block-causal mask.",
        "- wall s: the whole process, model load included. tunelab's also includes its built-in evaluation of the "
        "tuned adapter after training (generation on the held-out prompts and held-out loss; "
        "eval.baseline=false); TRL does no evaluation.",
        "- peak RSS: \"Maximum resident set size\" of the process from `/usr/bin/time -v`; the table shows the "
        "largest over a row's runs. For reference, the peak each process reported itself at the end of training: "
        + ", ".join(f"{arm.split('@')[0]} at dropout {arm.split('@')[1]} {mb:.0f} MB"
                    for arm, mb in cc["self_peak_rss_mb"].items()) + ".",
        "- seeds: run i of every row uses seed 41 + i (data order and adapter init), so all rows train with the "
        "same seeds (a row run once uses seed 42, like run 1 of the others) and the spread between a row's runs "
        "shows the seed noise.",
        "- final loss: the last logged training loss (both log every 5 optimizer steps, a mean over those "
        "steps); TRL and tunelab take different numbers of steps, so compare the held-out loss.",
        "- held-out loss: one function for every row, after training: base model in fp32 + the saved adapter, mean "
        "cross-entropy over the completion tokens (answer and end-of-turn token) of the "
        f"{cfg['heldout']} held-out examples, each run alone with the chat template.",
        f"- MFU: achieved FLOP/s / measured peak, achieved = 4 x N_base x tokens/s with N_base = "
        f"{res['n_base']:,} (forward 2N plus the input-gradient half of the backward 2N through frozen weights; "
        "LoRA's own FLOPs, attention scores and gradient-checkpointing recompute are not counted). Peak: best "
        f"of {cfg['matmul_repeats']} 2048x2048 torch.matmul in this run: fp32 {p['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {p['bf16'] / 1e9:.1f} GFLOP/s (torch threads: {res['torch_threads']}).",
        f"- A is TRL {v}'s SFTTrainer with its defaults: bf16 autocast on (SFTConfig's default; bf16 is not "
        "passed at all), gradient checkpointing on, no packing, the model loaded in fp32 (TRL's default "
        "when given a folder). "
        + ("Without a GPU, transformers accepts bf16 only with use_cpu=True, so every TRL run here passes it; "
           "it names the device the run uses anyway and changes nothing else on a CPU-only machine. "
           if res["trl_use_cpu"] else "")
        + "Set explicitly, and the same for tunelab: learning rate 2e-4 (TRL's default "
        "is 2e-5), batch 8, 1 epoch, max_length, logging every 5 steps (TRL's default is 10), the seed and "
        "the LoRA shape; saving checkpoints, evaluation and reporting are off. A-fp32 differs from A only "
        "by bf16=False (`--fp32`).",
        "- LoRA dropout: TRL gets it in its peft LoraConfig (`lora_dropout`), tunelab as the override "
        "`lora.dropout=...`; 0 is the default of both.",
    ]
    g = res["generation"]
    lines += [
        "",
        "## Evaluation: batched vs one-at-a-time generation",
        "",
        f"tunelab.inference.generate.generate, greedy, max_new_tokens {g['max_new_tokens']}, base SmolLM2-135M in "
        f"{g['dtype']}, {g['prompts']} single-sentence prompts (tunelab's default label prompt).",
        "",
        "| mode | prompts timed | seconds | seconds for all prompts |",
        "|---|---|---|---|",
        f"| batch_size {g['batch_size']} (eval.batch_size default) | {g['prompts']} | {g['batched_s']:.1f} | {g['batched_s']:.1f} |",
        f"| batch_size 1 | {g['single_prompts']} | {g['single_s']:.1f} | {g['single_scaled_s']:.1f}"
        + (" (scaled linearly)" if g["single_prompts"] != g["prompts"] else "") + " |",
        "",
        f"**Speedup of batched generation: {g['speedup']:.2f}x.** "
        + (f"batch_size 1 was timed on {g['single_prompts']} evenly spread prompts and scaled linearly to "
           f"{g['prompts']}. " if g["single_prompts"] != g["prompts"] else "")
        + f"Same output in both modes for {g['same_output']} of {g['single_prompts']} prompts.",
        "",
        f"Whole benchmark: {res['elapsed_s'] / 60:.1f} minutes.",
        "",
        "## Command lines",
        "",
        "```",
        "# $MODEL_DIR: the converted embedded model (tunelab.model_files.resolve_model); $WORK: a temporary folder",
        res["command"],
    ]
    for arm in arms:
        s = res["summary"][arm]
        lines += [f"# {s['contender']}, LoRA dropout {s['dropout']:g}, per run:", " ".join(res["commands"][arm])]
    lines.append("```")
    return "\n".join(lines) + "\n"


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            model = found.group(1).strip() if found else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _dropouts(text: str) -> list[float]:
    values: list[float] = []
    for part in text.split(","):
        d = float(part)
        if not 0 <= d < 1:
            raise argparse.ArgumentTypeError(f"LoRA dropout must be in [0, 1): {part}")
        if d not in values:
            values.append(d)
    if not values:
        raise argparse.ArgumentTypeError("no dropout given")
    return values


def compare(s: dict, ref: dict, against: str) -> dict:
    """Ratios of one row's summary against another's (the reference is the denominator)."""
    return {"against": against, "tokens_per_s": round(s["tokens_per_s"] / ref["tokens_per_s"], 3),
            "peak_rss": round(s["peak_rss_mb"] / ref["peak_rss_mb"], 3),
            "heldout_diff_pct": round(100 * (s["heldout_loss"] - ref["heldout_loss"]) / ref["heldout_loss"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TRL SFTTrainer vs tunelab train: throughput, memory, loss.")
    parser.add_argument("--runs", type=int, default=None, help="runs per contender of the main comparison (A "
                        "and B at the first dropout), alternating A, B, A, B (default 2, or 1 with --quick)")
    parser.add_argument("--extra-runs", type=int, default=1, help="runs of each other row: A-fp32 and every "
                        "dropout after the first (default 1, to keep the full run time down)")
    parser.add_argument("--dropouts", type=_dropouts, default=[0.0, 0.05], help="LoRA dropouts, comma-separated; "
                        "the first is the main comparison (default 0,0.05)")
    parser.add_argument("--trl-fp32", action=argparse.BooleanOptionalAction, default=True,
                        help="also run TRL with bf16=False (A-fp32, a labelled extra row; default on)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for development (1 run each)")
    parser.add_argument("--out", default=None, help="Markdown result file (JSON written next to it)")
    parser.add_argument("--work", default=None, help="keep data, logs and adapters in this folder")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    runs = args.runs or (1 if args.quick else 2)
    extra_runs = args.extra_runs
    if runs < 1 or extra_runs < 1:
        parser.error("--runs and --extra-runs must be at least 1")
    out = Path(args.out) if args.out else HERE / "results" / (
        "train_throughput_quick.md" if args.quick else "train_throughput.md")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")

    from transformers import AutoTokenizer

    import peft
    import transformers

    try:
        import trl
    except ImportError:
        sys.exit("TRL is needed for contender A: pip install -c constraints.txt trl==1.16.0 (or pip install -e .[bench])")

    model_dir = resolve_model(MODEL)  # converts the embedded model once, before anything is timed
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = build_data(tokenizer, sizes, work)
    tokens = token_stats(tokenizer, data["train"], sizes["max_length"])
    print(f"work folder: {work}\ndata: {len(data['train'])} train / {len(data['heldout'])} held-out examples, "
          f"{tokens['tokens']} training tokens ({tokens['min']}-{tokens['max']} per example)", flush=True)

    peaks = {"fp32": matmul_peak(torch.float32, sizes["matmul_repeats"]),
             "bf16": matmul_peak(torch.bfloat16, sizes["matmul_repeats"])}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s", flush=True)

    order = plan(args.dropouts, runs, extra_runs, args.trl_fp32)
    results: list[dict] = []
    for n, (i, arm) in enumerate(order, 1):
        print(f"[{n}/{len(order)}] run {i}: {arm['contender']} at LoRA dropout {arm['dropout']:g} ...", flush=True)
        if arm["contender"] == "B":
            run = run_tunelab(i, arm, data["paths"], sizes, work, env)
        else:
            run = run_trl(i, arm, model_dir, data["paths"], sizes, work, env)
        run.update(contender=arm["contender"], dropout=arm["dropout"], arm=arm["id"], order=len(results) + 1,
                   seed=run_seed(i), tokens_per_s=round(tokens["tokens"] / run["train_s"], 2))
        print(f"  wall {run['wall_s']:.1f} s, train {run['train_s']:.1f} s, {run['tokens_per_s']:.1f} tokens/s, "
              f"peak RSS {run['peak_rss_mb']:.0f} MB, final loss {run['final_loss']:.4f}"
              + (f", {run['precision']}" if "precision" in run else ""), flush=True)
        results.append(run)

    print("held-out loss (base fp32 + adapter) ...", flush=True)
    base_loss = heldout_loss(model_dir, None, tokenizer, data["heldout"], sizes["max_length"])
    for run in results:
        run["heldout_loss"] = round(heldout_loss(model_dir, Path(run["adapter"]), tokenizer, data["heldout"],
                                                 sizes["max_length"]), 5)
    for run in results:
        run["cmd"] = shown(run["cmd"], work, model_dir)
        run["adapter"] = run["adapter"].replace(str(work), "$WORK")
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        n_base = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
                     .parameters())

    print("generation: batched vs one at a time ...", flush=True)
    generation = generation_section(model_dir, tokenizer, data["gen_texts"], sizes["gen_single"])

    # Rows in display order: by dropout as given, then A, A-fp32, B.
    arms = sorted({r["arm"] for r in results}, key=lambda a: (
        args.dropouts.index(next(r["dropout"] for r in results if r["arm"] == a)),
        CONTENDER_ORDER.index(a.split("@")[0])))
    by = {a: [r for r in results if r["arm"] == a] for a in arms}
    summary = {}
    for a, rows in by.items():
        summary[a] = {"contender": rows[0]["contender"], "dropout": rows[0]["dropout"], **summarize(rows, peaks, n_base),
                      "dtype": rows[0].get("dtype", "?")}
        if rows[0]["contender"] != "B":
            summary[a]["precision"] = rows[0]["precision"]
    ratios = {}
    for a, s in summary.items():
        ref = f"A@{s['dropout']:g}"
        if a != ref and ref in summary:
            ratios[f"{a} vs {ref}"] = compare(s, summary[ref], ref)
    main_d = args.dropouts[0]
    if f"B@{main_d:g}" in summary and f"A-fp32@{main_d:g}" in summary:
        ratios[f"B@{main_d:g} vs A-fp32@{main_d:g}"] = compare(summary[f"B@{main_d:g}"],
                                                               summary[f"A-fp32@{main_d:g}"], f"A-fp32@{main_d:g}")
    goals = []
    for d in args.dropouts:
        r = ratios.get(f"B@{d:g} vs A@{d:g}")
        if r is None:
            continue
        goals += [
            {"dropout": d, "name": f"LoRA dropout {d:g}: B/A tokens/s >= {GOALS['tokens_ratio_min']:g}",
             "value": f"{r['tokens_per_s']:.2f}", "pass": r["tokens_per_s"] >= GOALS["tokens_ratio_min"]},
            {"dropout": d, "name": f"LoRA dropout {d:g}: B/A peak RSS <= {GOALS['rss_ratio_max']:g}",
             "value": f"{r['peak_rss']:.2f}", "pass": r["peak_rss"] <= GOALS["rss_ratio_max"]},
            {"dropout": d, "name": f"LoRA dropout {d:g}: held-out loss of B at most {GOALS['heldout_diff_pct_max']:g} % "
             "above A's (lower is better)", "value": f"{r['heldout_diff_pct']:+.2f} %",
             "pass": r["heldout_diff_pct"] <= GOALS["heldout_diff_pct_max"]},
        ]
    trl_runs = [r for r in results if r["contender"] != "B"]
    tunelab_runs = [r for r in results if r["contender"] == "B"]
    res = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "quick": args.quick,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "trl": trl.__version__},
        "config": {**sizes, "runs": runs, "extra_runs": extra_runs, "dropouts": args.dropouts,
                   "trl_fp32": args.trl_fp32},
        "tokens": tokens, "peaks": peaks, "n_base": n_base,
        "torch_threads": torch.get_num_threads(),
        "arms": arms,
        "trl_precision": {a: s["precision"] for a, s in summary.items() if "precision" in s},
        "trl_use_cpu": any(r["raw"].get("use_cpu") for r in trl_runs),
        "tunelab_dtype": tunelab_runs[0].get("dtype", "?"),
        "steps": {"A": trl_runs[0]["raw"]["steps"], "B": tunelab_runs[0]["raw"]["train"]["steps"]},
        "crosscheck": {
            "trl_tokens": trl_runs[0]["raw"]["tokens"],
            "tunelab_tokens": tunelab_runs[0]["raw"]["train"]["tokens"],
            "tunelab_tokens_per_s": {a: round(statistics.mean(r["raw"]["train"]["tokens_per_second"] for r in rows), 1)
                                     for a, rows in by.items() if rows[0]["contender"] == "B"},
            "self_peak_rss_mb": {a: max(r["raw"]["self_peak_rss_mb"] if r["contender"] != "B"
                                        else r["raw"]["train"]["peak_rss_mb"] for r in rows)
                                 for a, rows in by.items()}},
        "base_heldout_loss": round(base_loss, 5), "runs": results, "summary": summary, "ratios": ratios,
        "goals": goals, "generation": generation,
        "command": shlex.join(["python", os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else argv))
        .replace(str(work), "$WORK"),
        "commands": {a: rows[0]["cmd"] for a, rows in by.items()},
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    text = markdown(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print()
    print(text)
    print(f"written: {out} and {out.with_suffix('.json')}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
