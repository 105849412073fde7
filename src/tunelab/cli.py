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
    from tunelab.train.classify import run_classification
    from tunelab.train.pretrain import run_pretrain
    from tunelab.train.sft import run_sft

    config = load_config(args.config, args.overrides)
    recipe = {"sft": run_sft, "pretrain": run_pretrain, "classification": run_classification}[config.task]
    recipe(config, resume=args.resume, overwrite=args.overwrite)


def cmd_quickstart(args) -> None:
    from tunelab.quickstart import quickstart

    quickstart(args.overrides, output_dir=args.output_dir)


def cmd_eval(args) -> None:
    from tunelab.eval.cli_eval import evaluate_cli

    evaluate_cli(args.model, args.data, args.out, args.max_examples, args.baseline)


def cmd_export(args) -> None:
    from tunelab.export import export_run

    export_run(args.run_dir, args.out, dtype=args.dtype, max_diff=args.max_diff)


def cmd_data_prepare(args) -> None:
    from tunelab.data.prepare import format_summary, prepare_data

    summary = prepare_data(args.inputs, args.out, shape=args.shape, val_fraction=args.val_fraction,
                           test_fraction=args.test_fraction, seed=args.seed, on_error=args.on_error,
                           pii=args.pii,
                           near_dup_threshold=args.near_dup_threshold if args.near_dup_threshold > 0 else None)
    print(format_summary(summary))


def cmd_data_export(args) -> None:
    from tunelab.data.export import check_export, format_check, write_export

    check = check_export(args.file, model_limit=args.model_limit, system_prompt=args.system_prompt,
                         epochs=args.epochs)
    print(format_check(check))
    out, rejected = write_export(check, args.out, drop_invalid=args.drop_invalid)
    print(f"Wrote {len(check.valid)} examples to {out}"
          + (f"; {len(check.invalid)} failing examples with reasons to {rejected}" if rejected else ""))


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

    p = sub.add_parser("export", help="merge a run's adapter into its base; write a standalone model folder")
    p.add_argument("run_dir", help="run folder made by tunelab train")
    p.add_argument("--out", required=True, help="new folder for the exported model")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dtype of the saved weights")
    p.add_argument("--max-diff", type=float, default=None, metavar="FLOAT",
                   help="largest allowed log-prob difference between the adapter model and the export on the "
                        "golden prompts (default 1e-3 for fp32, 1.0 for bf16, 0.25 for fp16)")
    p.set_defaults(func=cmd_export)

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

    p = data.add_parser("export", help="check a data file and write it as chat JSONL for hosted fine-tuning APIs")
    p.add_argument("file", help="prepared split or raw data file with chat or text/label rows")
    p.add_argument("--format", choices=["openai"], default="openai",
                   help='{"messages": [...]} rows, as OpenAI-style fine-tuning APIs accept')
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--model-limit", type=int, default=16385, metavar="N",
                   help="most tokens one training example may have")
    p.add_argument("--system-prompt", default=None, metavar="TEXT",
                   help="system message put first in examples that have none")
    p.add_argument("--epochs", type=int, default=3, help="epochs for the training-token estimate")
    p.add_argument("--drop-invalid", action="store_true",
                   help="write the valid examples, and the failing ones with reasons to OUT.rejected.jsonl")
    p.set_defaults(func=cmd_data_export)
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
