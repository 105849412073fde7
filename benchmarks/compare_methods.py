"""Every fine-tuning method side by side on movie-review sentiment: cost against quality.

Each method trains in its own `tunelab train` process, one after another, on the same seeded subset
of data/examples/movie_sentiment.jsonl (the quickstart's split and label prompt), with the same
epochs, batch size, seed and evaluation examples; only the method, its learning rate and its own
settings differ. Per method: trainable parameters, training seconds and tokens/s (from the run's
metrics.json), wall seconds and peak RSS of the whole process (/usr/bin/time -v), test accuracy and
macro F1 of the base and the tuned model, and the held-out loss.

    python benchmarks/compare_methods.py                  # every method (an estimated 20-30 minutes on 2 CPU cores)
    python benchmarks/compare_methods.py --methods lora,ia3,classifier
    python benchmarks/compare_methods.py --quick          # tiny sizes, for development only

Writes benchmarks/results/compare_methods.md (and .json with every raw number) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

from tunelab.io import atomic_write_json, atomic_write_text
from tunelab.quickstart import EXAMPLE_DATA, QUICKSTART

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark, also when imported by tests
from train_throughput import machine, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The quickstart's held-out split, so these test sentences are the ones `tunelab quickstart` reports on.
SPLIT = [o for o in QUICKSTART if o.startswith(("data.val_fraction=", "data.test_fraction="))]
SEED = 42
MAX_LENGTH = 256


@dataclass(frozen=True)
class Method:
    """One row of the comparison: what `tunelab train` is told besides the shared settings."""

    task: str
    method: str
    learning_rate: float
    settings: tuple[str, ...]  # further key=value overrides of this method
    source: str  # where the learning rate and settings come from

    def overrides(self, model: str) -> list[str]:
        return [f"model={model}", f"task={self.task}", f"method={self.method}",
                f"train.learning_rate={self.learning_rate}", *self.settings]


LORA = ("lora.r=16", "lora.alpha=32", "lora.dropout=0", "lora.target_modules=all-linear")
# Learning rates and method settings of the shipped example configs (a test keeps them equal).
METHODS = {
    "lora": Method("sft", "lora", 2e-4, LORA, "configs/sft/lora.yaml"),
    "dora": Method("sft", "dora", 2e-4, LORA, "configs/sft/dora.yaml"),
    "rslora": Method("sft", "rslora", 2e-4, LORA, "configs/sft/lora.yaml with method rslora"),
    "qlora": Method("sft", "qlora", 2e-4, (*LORA, "qlora.compute_dtype=auto", "qlora.double_quant=true"),
                    "configs/sft/qlora.yaml"),
    "ia3": Method("sft", "ia3", 3e-3, (), "configs/sft/ia3.yaml"),
    "prefix": Method("sft", "prefix", 1e-2, ("prefix.num_virtual_tokens=20", "prefix.init=zero"),
                     "configs/sft/prefix.yaml"),
    "prompt": Method("sft", "prompt", 3e-2, ("prompt.num_virtual_tokens=20", "prompt.init_text=Classify the "
                                             "sentiment of this movie review as positive or negative."),
                     "configs/sft/prompt.yaml"),
    "freeze": Method("sft", "freeze", 2e-5, ("freeze.last_n_layers=4", "freeze.train_norm=true"),
                     "configs/sft/freeze.yaml"),
    "full": Method("sft", "full", 2e-5, (), "the learning rate of configs/sft/freeze.yaml"),
    "classifier": Method("classification", "full", 1e-4, ("classification.class_weights=none",),
                         "configs/classification/minilm.yaml"),
}

# Estimated from --quick runs: 20-30 minutes for all methods on 2 CPU cores, a few on a GPU.
FULL = {"train_examples": 500, "eval_examples": 200}
QUICK = {"train_examples": 24, "eval_examples": 16}


def run_overrides(name: str, args: argparse.Namespace, work: Path) -> list[str]:
    """Everything `tunelab train /dev/null` is told for one method; only the method's part differs."""
    method = METHODS[name]
    model = args.classifier_model if method.task == "classification" else args.model
    shared = [f"run_name={name}", f"output_dir={work / 'runs'}", f"data.train={EXAMPLE_DATA}", *SPLIT,
              f"data.max_train_examples={args.train_examples}", f"train.epochs={args.epochs}",
              f"train.batch_size={args.batch_size}", f"train.max_length={MAX_LENGTH}", f"train.seed={SEED}",
              "train.save_steps=1000000",  # no intermediate checkpoints: their disk writes would be timed too
              f"eval.max_examples={args.eval_examples}", "eval.baseline=true"]
    return shared + method.overrides(model)


def run_method(name: str, args: argparse.Namespace, work: Path, env: dict) -> dict:
    """Train one method in its own process; its cost and its scores, read back from metrics.json."""
    cmd = [sys.executable, "-m", "tunelab.cli", "train", "/dev/null", *run_overrides(name, args, work), "--overwrite"]
    method = METHODS[name]
    row = {"name": name, "task": method.task, "method": method.method, "learning_rate": method.learning_rate,
           "settings": list(method.settings), "source": method.source, "cmd": cmd,
           "model": args.classifier_model if method.task == "classification" else args.model}
    try:
        measured = run_measured(cmd, work / f"{name}.log", env)
    except SystemExit as failure:  # run_measured exits on a failed command; the other methods still run
        return row | {"error": str(failure)}
    metrics = json.loads((work / "runs" / name / "metrics.json").read_text(encoding="utf-8"))
    train, base, tuned = metrics["train"], metrics.get("base", {}), metrics["tuned"]
    return row | measured | {
        "trainable_params": train["trainable_params"], "total_params": train["total_params"],
        "examples": train["examples"], "steps": train["steps"], "tokens": train["tokens"],
        "train_s": train["seconds"], "tokens_per_s": train["tokens_per_second"],
        "train_peak_rss_mb": train["peak_rss_mb"], "final_train_loss": train["final_loss"],
        "test_examples": metrics["data"].get("test"),
        "base": {k: base.get(k) for k in ("accuracy", "f1", "loss")},
        "tuned": {k: tuned.get(k) for k in ("accuracy", "f1", "loss")}}


def compare(names: list[str], args: argparse.Namespace, work: Path) -> list[dict]:
    """Run the methods one after another; one row each, failed runs included with their error."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    rows = []
    with tqdm(names, desc="methods", unit="run") as bar:
        for name in bar:
            bar.set_postfix_str(name)
            row = run_method(name, args, work, env)
            bar.write(f"{name}: " + (row["error"].splitlines()[0] if "error" in row else
                                     f"wall {row['wall_s']:.0f} s, train {row['train_s']:.0f} s, "
                                     f"{row['tokens_per_s']:.0f} tokens/s, peak RSS {row['peak_rss_mb']:.0f} MB, "
                                     f"accuracy {_num(row['base']['accuracy'])} -> {_num(row['tuned']['accuracy'])}"))
            rows.append(row)
    return rows


# ---------------------------------------------------------------- report

def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    header = ("| method | model | learning rate | trainable params | train s | wall s | tokens/s | peak RSS MB "
              "| accuracy base | accuracy tuned | macro F1 base | macro F1 tuned | held-out loss base "
              "| held-out loss tuned |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = r["name"] if r["task"] == "sft" else f"{r['name']} ({r['method']})"
        model = Path(r["model"]).name
        if "error" in r:
            lines.append(f"| {label} | {model} | {r['learning_rate']:g} | failed: {r['error'].splitlines()[0]} |")
            continue
        share = 100 * r["trainable_params"] / r["total_params"]
        b, t = r["base"], r["tuned"]
        lines.append(" ".join([
            f"| {label} | {model} | {r['learning_rate']:g} | {r['trainable_params']:,} ({share:.3g}%) |",
            f"{r['train_s']:.1f} | {r['wall_s']:.1f} | {r['tokens_per_s']:.1f} | {r['peak_rss_mb']:.0f} |",
            f"{_num(b['accuracy'])} | {_num(t['accuracy'])} | {_num(b['f1'])} | {_num(t['f1'])} |",
            f"{_num(b['loss'])} | {_num(t['loss'])} |"]))
    return "\n".join(lines)


def markdown(res: dict) -> str:
    cfg, rows = res["config"], res["rows"]
    versions = ", ".join(f"{k} {v}" for k, v in res["versions"].items())
    done = [r for r in rows if "error" not in r]
    test_n = {r["test_examples"] for r in done if r.get("test_examples")}
    settings = [f"- **{r['name']}**: {r['task']}, method {r['method']}, learning rate {r['learning_rate']:g}"
                + (f", {', '.join(r['settings'])}" if r["settings"] else "") + f" (from {r['source']})"
                for r in rows]
    lines = [
        "# Fine-tuning methods side by side",
        "",
        f"{res['date']} · {res['machine']} · {versions}"
        + (" · **--quick (development smoke run, not a result)**" if res["quick"] else ""),
        "",
        f"Movie-review sentiment (data/examples/movie_sentiment.jsonl, the quickstart's split: "
        f"{', '.join(SPLIT)}). Every method: the same seeded {cfg['train_examples']} training sentences, "
        f"{cfg['epochs']:g} epoch(s), batch size {cfg['batch_size']}, max_length {MAX_LENGTH}, seed {SEED}; base "
        f"and tuned model scored on the same {cfg['eval_examples']} test sentences"
        + (f" (of {', '.join(str(n) for n in sorted(test_n))})" if test_n else "") + ". "
        f"Causal-LM rows ({Path(cfg['model']).name}) train on the chat-formatted label and score each label by "
        f"its log-likelihood; the classifier row trains a sequence-classification head on "
        f"{Path(cfg['classifier_model']).name}, whose base is the untrained head.",
        "",
        table(rows),
        "",
        "- trainable params: as the run counts them (a 4-bit weight counts its elements), with the share of "
        "all parameters.",
        "- train s, tokens/s: the training loop alone (tunelab's metrics.json; tokens are non-pad tokens).",
        "- wall s, peak RSS: the whole `tunelab train` process (model load, base and tuned evaluation, saving "
        "included), from /usr/bin/time -v.",
        "- held-out loss: causal-LM rows, the mean cross-entropy of the answer tokens on "
        f"{cfg['eval_examples']} validation sentences; classifier row, the label cross-entropy on the test "
        "sentences. The two are not comparable with each other.",
        "- base columns: each run scores its own base model, as the method loads it: qlora's is the 4-bit "
        "quantized model, full's is in fp32 (the other methods' frozen base is in bf16 where the hardware runs it "
        "fast), and prefix/prompt compute the held-out loss without packing; small differences between base "
        "columns come from that.",
        f"- sampling error: with {cfg['eval_examples']} test sentences, an accuracy has a standard error of up to "
        f"{(0.25 / cfg['eval_examples']) ** 0.5:.3f}.",
        "",
        "Per-method settings:",
        "",
        *settings,
        "",
        "## Command lines",
        "",
        "```",
        "# $WORK: a temporary folder",
        res["command"],
        *[f"# {r['name']}:\n{r['shown_cmd']}" for r in rows],
        "```",
    ]
    return "\n".join(lines) + "\n"


def shown(cmd: list[str], work: Path) -> str:
    """A child's command as a reader would type it."""
    return shlex.join(["tunelab"] + cmd[3:]).replace(str(work), "$WORK").replace(str(ROOT) + os.sep, "")


def versions() -> dict:
    """Installed versions, read without importing the packages (the runs import them, not this process)."""
    found = {}
    for package in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset, run in this order (default: all: {','.join(METHODS)})")
    parser.add_argument("--train-examples", type=int, default=None,
                        help=f"training sentences per method (default {FULL['train_examples']}, "
                             f"{QUICK['train_examples']} with --quick)")
    parser.add_argument("--eval-examples", type=int, default=None,
                        help=f"test sentences scored per arm, and validation sentences for the held-out loss "
                             f"(default {FULL['eval_examples']}, {QUICK['eval_examples']} with --quick)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4, help="examples per optimizer step (as the configs)")
    parser.add_argument("--model", default="smollm2-135m", help="causal LM of the sft rows (name or folder)")
    parser.add_argument("--classifier-model", default="minilm-l6", help="model of the classifier row")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for development (not a result)")
    parser.add_argument("--out", default=None, help="Markdown result file (JSON written next to it)")
    parser.add_argument("--work", default=None, help="keep run folders and logs in this folder")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    args.train_examples = args.train_examples or sizes["train_examples"]
    args.eval_examples = args.eval_examples or sizes["eval_examples"]
    args.names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in METHODS]
    if unknown or not args.names:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else HERE / "results" / (
        "compare_methods_quick.md" if args.quick else "compare_methods.md")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tunelab-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)

    rows = compare(args.names, args, work)
    for row in rows:
        row["shown_cmd"] = shown(row.pop("cmd"), work)
        if "error" in row:
            row["error"] = row["error"].replace(str(work), "$WORK")
    res = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "quick": args.quick, "versions": versions(),
        "command": shlex.join(["python", "benchmarks/compare_methods.py"] + (sys.argv[1:] if argv is None else argv)),
        "config": {"train_examples": args.train_examples, "eval_examples": args.eval_examples, "epochs": args.epochs,
                   "batch_size": args.batch_size, "max_length": MAX_LENGTH, "seed": SEED, "split": SPLIT,
                   "model": args.model, "classifier_model": args.classifier_model},
        "rows": rows,
    }
    text = markdown(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    atomic_write_json(out.with_suffix(".json"), res)
    print()
    print(text)
    print(f"written: {out} and {out.with_suffix('.json')}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
