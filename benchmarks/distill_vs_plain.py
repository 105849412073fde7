"""Does the teacher help? The same small student trained with and without it, on the same budget.

Both arms train the same student (``--model`` cut to ``--student-layers`` transformer blocks) with
the same method, seeded training examples, steps, learning rate and seed, on the bundled movie-review
sentiment data with the splits of the run that made the teacher, so the teacher never saw the test
sentences. Only the teacher differs: the plain arm trains on the labels alone, the distilled arm adds
the teacher's distributions at ``--temperature`` with weight ``--alpha``. All arms are scored on the
same held-out sentences. With several ``--seeds`` each arm trains once per seed (``train.seed``:
initialisation and example order) on the same data (``data.seed`` stays at 42), and the table shows
the means.

``--task sft`` (token level, task distill): a causal LM student learns the label word as an answer and
the teacher's next-token distributions, at every position of each example (``--positions all``) or at
the answer only (``--positions answer``). ``--task classification`` (label level, task classification
with distill.teacher): a classification head learns the teacher classifier's class probabilities.

    tunelab quickstart                                      # the sft teacher: runs/quickstart
    python benchmarks/distill_vs_plain.py --teacher runs/quickstart    # 20 blocks, LoRA, KL at all positions
    tunelab train configs/classification/minilm.yaml        # the classification teacher: runs/movie-minilm
    python benchmarks/distill_vs_plain.py --task classification --teacher runs/movie-minilm

Prints a table and writes benchmarks/results/distill_vs_plain.md and .json (``--results``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tunelab.config import load_config  # noqa: E402
from tunelab.io import atomic_write_json, atomic_write_text  # noqa: E402
from tunelab.quickstart import EXAMPLE_DATA  # noqa: E402
from tunelab.train.classification import run_classification  # noqa: E402
from tunelab.train.distill import run_distill  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHOWN = ("accuracy", "f1", "ece", "loss")

# Per task: the recipe, the splits of the run that makes the teacher (tunelab quickstart, and
# configs/classification/minilm.yaml), and the defaults of the options left unset.
TASKS = {
    "sft": {"recipe": run_distill, "fractions": (0.05, 0.05), "max_length": 256,
            "defaults": {"teacher": "runs/quickstart", "model": "smollm2-135m", "student_layers": 20,
                         "method": "lora", "alpha": 0.5, "epochs": 1.0, "learning_rate": 1e-3, "batch_size": 8,
                         "eval_examples": 502, "results": RESULTS / "distill_vs_plain"}},
    "classification": {"recipe": run_classification, "fractions": (0.1, 0.1), "max_length": 128,
                       "defaults": {"teacher": "runs/movie-minilm", "model": "minilm-l6", "student_layers": 2,
                                    "method": "full", "alpha": 0.9, "epochs": 3.0, "learning_rate": 2e-4,
                                    "batch_size": 32, "eval_examples": None,
                                    "results": RESULTS / "distill_vs_plain_classification"}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=tuple(TASKS), default="sft")
    parser.add_argument("--teacher", help="run folder, model folder or embedded name (default: per task)")
    parser.add_argument("--model", help="the model the student is cut from (default: per task)")
    parser.add_argument("--student-layers", type=int)
    parser.add_argument("--method")
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--positions", choices=("answer", "all"), default="all",
                        help="task sft: where the KL term is taken (distill.positions)")
    parser.add_argument("--train-examples", type=int, default=1000)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--eval-examples", type=int, help="test sentences scored (default: per task; all of them "
                        "for classification)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="training seeds; the data stays fixed")
    parser.add_argument("--output-dir", default="runs/distill-bench")
    parser.add_argument("--results", type=Path, help="path stem for the .md and .json results (default: per task)")
    parser.add_argument("overrides", nargs="*", help="more key=value config overrides for both arms")
    args = parser.parse_args(argv)
    for key, value in TASKS[args.task]["defaults"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0 < args.alpha <= 1:
        parser.error("--alpha must be in (0, 1]: the plain arm (no teacher) always runs")
    return args


def arm_config(args: argparse.Namespace, name: str, distilled: bool, baseline: bool, seed: int):
    """One arm's config. The plain arm of task sft is task distill at alpha 0 (the teacher is not loaded);
    that of task classification is plain classification of the same cut student."""
    task = TASKS[args.task]
    val, test = task["fractions"]
    teacher = [f"distill.teacher={args.teacher}", f"distill.alpha={args.alpha}",
               f"distill.temperature={args.temperature}"] if distilled else []
    if args.task == "sft":
        teacher = [f"distill.teacher={args.teacher}", f"distill.positions={args.positions}",
                   *(teacher[1:] if distilled else ["distill.alpha=0"])]
    return load_config(None, [
        f"run_name={name}", f"model={args.model}", f"task={'distill' if args.task == 'sft' else args.task}",
        f"method={args.method}", f"data.train={EXAMPLE_DATA}", f"data.val_fraction={val}",
        f"data.test_fraction={test}", "data.seed=42", f"train.seed={seed}",
        f"data.max_train_examples={args.train_examples}", *teacher,
        f"distill.student_layers={args.student_layers}",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
        f"train.learning_rate={args.learning_rate}", f"train.max_length={task['max_length']}", "train.save_steps=1000",
        f"eval.max_examples={args.eval_examples if args.eval_examples else 'null'}",
        f"eval.baseline={str(baseline).lower()}", f"output_dir={args.output_dir}", *args.overrides])


def table(columns: dict[str, dict]) -> str:
    header = ["metric", *columns]
    rows = [[name, *(f"{m[name]:.4f}" if name in m else "-" for m in columns.values())] for name in SHOWN]
    lines = [header, ["---"] + ["---:"] * len(columns), *rows]
    return "\n".join("| " + " | ".join(row) + " |" for row in lines)


def correct_by_sentence(run_dir: Path) -> dict:
    rows = (json.loads(line) for line in (run_dir / "predictions.jsonl").open())
    return {row["id"]: row["tuned_correct"] for row in rows}


def paired_test(plain_dirs: list[Path], distilled_dirs: list[Path]) -> dict:
    """Exact sign test over the sentences both arms scored: on how many the distilled student was right
    more often (over the seeds) than the student alone, and on how many less often.

    The arms share their test sentences, so the sentence-to-sentence noise that a difference of two
    accuracies carries cancels; only the sentences where they disagree count. With one seed this is
    the exact McNemar test.
    """
    plain = [correct_by_sentence(d) for d in plain_dirs]
    distilled = [correct_by_sentence(d) for d in distilled_dirs]
    shared = set.intersection(*(set(arm) for arm in plain + distilled))
    difference = {i: sum(arm[i] for arm in distilled) - sum(arm[i] for arm in plain) for i in shared}
    better = sum(d > 0 for d in difference.values())
    worse = sum(d < 0 for d in difference.values())
    n, k = better + worse, min(better, worse)
    p_value = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"sentences": len(shared), "seeds": len(plain), "distilled_better": better, "plain_better": worse,
            "p_value": p_value}


def mean_metrics(runs: list[dict]) -> dict:
    return {name: sum(run[name] for run in runs) / len(runs) for name in SHOWN if all(name in run for run in runs)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = {arm: [f"student-{arm}-seed{seed}" for seed in args.seeds] for arm in ("plain", "distilled")}
    recipe = TASKS[args.task]["recipe"]
    plain = [recipe(arm_config(args, name, False, False, seed), overwrite=True)
             for name, seed in zip(names["plain"], args.seeds)]
    distilled = [recipe(arm_config(args, name, True, True, seed), overwrite=True)
                 for name, seed in zip(names["distilled"], args.seeds)]
    seeds = f"mean of {len(args.seeds)} seeds" if len(args.seeds) > 1 else f"seed {args.seeds[0]}"
    where = f", {args.positions} positions" if args.task == "sft" else ""
    columns = {"student before training": distilled[0]["base"],
               f"student alone (alpha 0, {seeds})": mean_metrics([m["tuned"] for m in plain]),
               f"student distilled (alpha {args.alpha}, T {args.temperature}{where}, {seeds})":
                   mean_metrics([m["tuned"] for m in distilled]),
               "teacher": distilled[0]["teacher"]}
    budget = {arm: {k: runs[0]["train"][k] for k in ("examples", "steps", "tokens", "trainable_params", "total_params")}
              | {"seconds": [m["train"]["seconds"] for m in runs]}
              for arm, runs in (("plain", plain), ("distilled", distilled))}
    budget["teacher_params"] = distilled[0]["train"]["teacher_params"]
    per_seed = {seed: {"plain": p["tuned"]["accuracy"], "distilled": d["tuned"]["accuracy"]}
                for seed, p, d in zip(args.seeds, plain, distilled)}
    out = Path(args.output_dir)
    paired = paired_test([out / name for name in names["plain"]], [out / name for name in names["distilled"]])
    teacher_time = ("the teacher's forward passes included" if args.task == "sft" else
                    "the teacher's logits are computed once, before training, and are not included")
    command = "python benchmarks/distill_vs_plain.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = "\n\n".join([
        "# Distillation against plain fine-tuning of the same student",
        f"Command: `{command}`",
        f"Student: {args.model} cut to {args.student_layers} blocks, method {args.method}, "
        f"{budget['plain']['total_params']:,} parameters; teacher: {args.teacher}, "
        f"{budget['teacher_params']:,} parameters. Both arms: {budget['plain']['examples']} training examples, "
        f"{budget['plain']['steps']} steps, learning rate {args.learning_rate}, training seeds "
        f"{', '.join(map(str, args.seeds))}; {distilled[0]['data']['test']} test sentences, scored on "
        f"{args.eval_examples or 'all'} of them.",
        table(columns),
        "Accuracy per seed (alone / distilled): " + "; ".join(
            f"{seed}: {acc['plain']:.4f} / {acc['distilled']:.4f}" for seed, acc in per_seed.items()) + ".",
        f"Paired on the same {paired['sentences']} sentences (exact sign test over sentences, each arm's "
        f"correctness summed over the seeds): the distilled student did better on {paired['distilled_better']}, "
        f"the student alone on {paired['plain_better']} (p = {paired['p_value']:.2g}).",
        f"Training time per seed: {budget['plain']['seconds']} s alone, {budget['distilled']['seconds']} s "
        f"distilled ({teacher_time}).",
    ])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(f"{args.results}.md"), text + "\n")
    atomic_write_json(Path(f"{args.results}.json"), {"command": command, "columns": columns, "budget": budget,
                                                             "per_seed": per_seed, "paired": paired})
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
