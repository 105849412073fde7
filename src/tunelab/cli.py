"""The tunelab command line. Each subcommand maps to one plain function.

Errors a user can fix print as one line (or one short block for config problems) and exit 2;
Ctrl-C exits 130 after whatever was saved atomically so far.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from tunelab.errors import TunelabError


def cmd_train(args) -> None:
    from tunelab.config import load_config
    from tunelab.train.pretrain import run_pretrain
    from tunelab.train.sft import run_sft

    config = load_config(args.config, args.overrides)
    recipe = {"sft": run_sft, "pretrain": run_pretrain}[config.task]
    recipe(config, resume=args.resume, overwrite=args.overwrite)


def cmd_quickstart(args) -> None:
    from tunelab.quickstart import quickstart

    quickstart(args.overrides, output_dir=args.output_dir)


def cmd_eval(args) -> None:
    from tunelab.eval.cli_eval import evaluate_cli

    evaluate_cli(args.model, args.data, args.out, args.max_examples, args.baseline)


def cmd_data_prepare(args) -> None:
    from tunelab.data.prepare import format_summary, prepare_data

    summary = prepare_data(args.inputs, args.out, shape=args.shape, val_fraction=args.val_fraction,
                           test_fraction=args.test_fraction, seed=args.seed, on_error=args.on_error,
                           pii=args.pii,
                           near_dup_threshold=args.near_dup_threshold if args.near_dup_threshold > 0 else None)
    print(format_summary(summary))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune, evaluate and compare language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="LoRA-tune the embedded SmolLM2 on movie sentiment; print base vs tuned")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.max_steps=20")
    p.add_argument("--output-dir", default="runs")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("train", help="train from a YAML config (use /dev/null and overrides for none)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50 method=dora")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run (tuned vs its base) or a model on a data file")
    p.add_argument("--model", required=True, help="run folder, model folder, Hugging Face id or embedded name")
    p.add_argument("--data", required=True, help="data file in any supported shape")
    p.add_argument("--out", default=None, help="folder for metrics.json and predictions.jsonl")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the base model")
    p.set_defaults(func=cmd_eval)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="validate, normalize, de-duplicate and split; quarantine bad rows")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--shape", default="auto")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--on-error", choices=["quarantine", "raise"], default="quarantine")
    p.add_argument("--pii", choices=["report", "redact", "drop", "off"], default="report",
                   help="emails, phones, cards, IBANs, IPs, SSNs, secrets: count them (report), replace "
                        "them with placeholders (redact), or quarantine their rows (drop)")
    p.add_argument("--near-dup-threshold", type=float, default=0.85, metavar="FLOAT",
                   help="similarity (word 5-gram Jaccard) at which a row is a near duplicate of an "
                        "earlier one or a val/test row leaks a train row; 0 turns both checks off")
    p.set_defaults(func=cmd_data_prepare)
    return parser


def quiet_library_noise() -> None:
    """Hide warnings users cannot act on (deprecations inside libraries, optional hub kernels)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    # bitsandbytes tries to fetch an optional CPU kernel from the hub and warns when it cannot.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_noise()
    try:
        args.func(args)
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; completed checkpoints are kept (continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
