"""Does the teacher help? The same small student trained with and without it, on the same budget.

Both arms train the same student (``--model`` cut to ``--student-layers`` transformer blocks) with
the same method, seeded training examples, steps, learning rate and seed, on the bundled movie-review
sentiment data with the quickstart's prompt and splits, so the teacher made by ``tunelab quickstart``
never saw the test sentences. Only ``distill.alpha`` differs: 0 trains on the answers alone (plain SFT
of the student), ``--alpha`` adds the teacher's distributions at ``--temperature``, at every position
of each example (``--positions all``) or at the answer tokens only (``--positions answer``).
All arms are scored on the same held-out sentences.

    tunelab quickstart                                      # the teacher: runs/quickstart
    python benchmarks/distill_vs_plain.py --teacher runs/quickstart    # 20 blocks, LoRA, KL at all positions

Prints a table and writes benchmarks/results/distill_vs_plain.md and .json.
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
from tunelab.train.distill import run_distill  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "distill_vs_plain"
SHOWN = ("accuracy", "f1", "ece", "loss")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="runs/quickstart", help="run folder, model folder or embedded name")
    parser.add_argument("--model", default="smollm2-135m", help="the model the student is cut from")
    parser.add_argument("--student-layers", type=int, default=20)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--positions", choices=("answer", "all"), default="all",
                        help="where the KL term is taken (distill.positions)")
    parser.add_argument("--train-examples", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-examples", type=int, default=502)
    parser.add_argument("--output-dir", default="runs/distill-bench")
    parser.add_argument("--results", type=Path, default=RESULTS, help="path stem for the .md and .json results")
    parser.add_argument("overrides", nargs="*", help="more key=value config overrides for both arms")
    args = parser.parse_args(argv)
    if not 0 < args.alpha <= 1:
        parser.error("--alpha must be in (0, 1]: alpha 0 is the plain arm, which always runs")
    return args


def arm_config(args: argparse.Namespace, name: str, alpha: float, baseline: bool):
    # The quickstart's splits and prompt: same file, fractions and seed, so the same test sentences.
    return load_config(None, [
        f"run_name={name}", f"model={args.model}", "task=distill", f"method={args.method}",
        f"data.train={EXAMPLE_DATA}", "data.val_fraction=0.05", "data.test_fraction=0.05",
        f"data.max_train_examples={args.train_examples}",
        f"distill.teacher={args.teacher}", f"distill.alpha={alpha}", f"distill.temperature={args.temperature}",
        f"distill.positions={args.positions}",
        f"distill.student_layers={args.student_layers}",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
        f"train.learning_rate={args.learning_rate}", "train.max_length=256", "train.save_steps=1000",
        f"eval.max_examples={args.eval_examples}", f"eval.baseline={str(baseline).lower()}",
        f"output_dir={args.output_dir}", *args.overrides])


def table(columns: dict[str, dict]) -> str:
    header = ["metric", *columns]
    rows = [[name, *(f"{m[name]:.4f}" if name in m else "-" for m in columns.values())] for name in SHOWN]
    lines = [header, ["---"] + ["---:"] * len(columns), *rows]
    return "\n".join("| " + " | ".join(row) + " |" for row in lines)


def paired_test(plain_dir: Path, distilled_dir: Path) -> dict:
    """Exact McNemar test on the sentences both arms scored: how often each is right where the other is wrong.

    The two arms share their test sentences, so the sentence-to-sentence noise that a difference of two
    accuracies carries cancels; only the sentences where they disagree count.
    """
    def correct(run_dir: Path) -> dict:
        rows = (json.loads(line) for line in (run_dir / "predictions.jsonl").open())
        return {row["id"]: row["tuned_correct"] for row in rows}

    plain, distilled = correct(plain_dir), correct(distilled_dir)
    shared = plain.keys() & distilled.keys()
    only_distilled = sum(distilled[i] and not plain[i] for i in shared)
    only_plain = sum(plain[i] and not distilled[i] for i in shared)
    n, k = only_distilled + only_plain, min(only_distilled, only_plain)
    p_value = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"sentences": len(shared), "only_distilled_right": only_distilled, "only_plain_right": only_plain,
            "mcnemar_p": p_value}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plain = run_distill(arm_config(args, "student-plain", 0.0, baseline=False), overwrite=True)
    distilled = run_distill(arm_config(args, "student-distilled", args.alpha, baseline=True), overwrite=True)
    columns = {"student before training": distilled["base"], "student alone (alpha 0)": plain["tuned"],
               f"student distilled (alpha {args.alpha}, T {args.temperature}, {args.positions} positions)":
                   distilled["tuned"],
               "teacher": distilled["teacher"]}
    budget = {arm: {k: m["train"][k] for k in ("examples", "steps", "tokens", "seconds", "trainable_params",
                                               "total_params")}
              for arm, m in (("plain", plain), ("distilled", distilled))}
    budget["teacher_params"] = distilled["train"]["teacher_params"]
    paired = paired_test(Path(args.output_dir) / "student-plain", Path(args.output_dir) / "student-distilled")
    command = "python benchmarks/distill_vs_plain.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = "\n\n".join([
        "# Distillation against plain fine-tuning of the same student",
        f"Command: `{command}`",
        f"Student: {args.model} cut to {args.student_layers} blocks, method {args.method}, "
        f"{budget['plain']['total_params']:,} parameters; teacher: {args.teacher}, "
        f"{budget['teacher_params']:,} parameters. Both arms: {budget['plain']['examples']} training examples, "
        f"{budget['plain']['steps']} steps, learning rate {args.learning_rate}; "
        f"{distilled['data']['test']} test sentences, scored on {args.eval_examples} of them.",
        table(columns),
        f"Paired on the same {paired['sentences']} sentences: the distilled student is right where the student "
        f"alone is wrong on {paired['only_distilled_right']}, the reverse on {paired['only_plain_right']} "
        f"(exact McNemar p = {paired['mcnemar_p']:.2g}).",
        f"Training time: {budget['plain']['seconds']} s alone, {budget['distilled']['seconds']} s distilled "
        f"(the teacher's forward passes included).",
    ])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results.with_suffix(".md"), text + "\n")
    atomic_write_json(args.results.with_suffix(".json"), {"command": command, "columns": columns, "budget": budget,
                                                             "paired": paired})
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
