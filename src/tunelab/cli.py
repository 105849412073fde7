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
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.config import load_config
    from tunelab.train.recipes import train

    train(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)


def cmd_quickstart(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.quickstart import quickstart

    quickstart(args.overrides, output_dir=args.output_dir)


def cmd_eval(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.eval.cli_eval import evaluate_cli

    evaluate_cli(args.model, args.data, args.out, args.max_examples, args.baseline, ensemble=args.ensemble)


def cmd_sweep(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.sweep import run_sweep

    run_sweep(args.config, args.overrides, trials=args.trials, storage=args.storage, study_name=args.study,
              timeout=args.timeout)


def cmd_export(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.runs.export import export_run

    export_run(args.run_dir, args.out, dtype=args.dtype, max_diff=args.max_diff)


def cmd_data_prepare(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.data.filters import FilterSettings
    from tunelab.data.prepare import format_summary, format_timings, prepare_data, read_timings

    filters = FilterSettings(strip_html=args.strip_html, min_tokens=args.min_tokens, max_tokens=args.max_tokens,
                             tokenizer=args.tokenizer, languages=tuple(args.languages or ()),
                             drop_degenerate=not args.keep_degenerate)
    summary = prepare_data(args.inputs, args.out, shape=args.shape, val_fraction=args.val_fraction,
                           test_fraction=args.test_fraction, seed=args.seed, on_error=args.on_error,
                           pii=args.pii,
                           near_dup_threshold=args.near_dup_threshold if args.near_dup_threshold > 0 else None,
                           filters=filters, workers=args.workers)
    print(format_summary(summary))
    print(format_timings(read_timings(args.out)))


def cmd_data_export(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.data.export import check_export, format_check, write_export

    check = check_export(args.file, model_limit=args.model_limit, system_prompt=args.system_prompt,
                         epochs=args.epochs)
    print(format_check(check))
    out, rejected = write_export(check, args.out, drop_invalid=args.drop_invalid)
    print(f"Wrote {len(check.valid)} examples to {out}"
          + (f"; {len(check.invalid)} failing examples with reasons to {rejected}" if rejected else ""))


SYNTH_OPTIONS = {  # flag -> SynthConfig field; help and defaults come from the config
    "--kind": ("kind", str), "--pairs-per-chunk": ("pairs_per_chunk", int), "--model": ("model", str),
    "--server": ("server", str), "--min-support": ("min_support", float), "--min-overlap": ("min_overlap", float),
    "--min-relevance": ("min_relevance", float),
    "--chunk-words": ("chunk_words", int), "--chunk-overlap": ("chunk_overlap_words", int),
    "--context-chunks": ("context_chunks", int), "--max-chunks": ("max_chunks", int),
    "--max-new-tokens": ("max_new_tokens", int), "--batch-size": ("batch_size", int),
    "--timeout": ("timeout", float), "--embedding-model": ("embedding_model", str), "--seed": ("seed", int),
}


def cmd_data_synth(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.generate.synth import format_summary, synth_config, synthesize

    config = synth_config(**{field: getattr(args, field) for field, _ in SYNTH_OPTIONS.values()})
    print(format_summary(synthesize(args.docs, args.out, config, golden=args.golden)))


def add_synth_parser(data) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.config import SynthConfig

    p = data.add_parser("synth", help="write grounded question/answer or instruction pairs from a folder of documents")
    p.add_argument("--docs", required=True, help="folder of .txt, .md, .html and .pdf documents (read recursively)")
    p.add_argument("--out", required=True, help="output .jsonl; OUT.quarantine.jsonl and OUT.summary.json go beside it")
    p.add_argument("--golden", default=None, metavar="FILE",
                   help="past answers (text rows, or chat rows' answers): the model writes the input each one "
                        "answers, and the golden text is kept unchanged as the completion")
    for flag, (field, kind) in SYNTH_OPTIONS.items():
        info = SynthConfig.model_fields[field]
        p.add_argument(flag, dest=field, type=kind, default=None, metavar={int: "N", float: "FLOAT"}.get(kind),
                       help=f"{info.description} (default: {info.default})")
    p.set_defaults(func=cmd_data_synth)


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


AUGMENT_OPTIONS = {  # flag -> AugmentConfig field; help and defaults come from the config
    "--paraphrases": ("paraphrases", int), "--ops": ("ops", _comma_list), "--ops-per-row": ("ops_per_row", int),
    "--model": ("model", str), "--server": ("server", str), "--api-key": ("api_key", str),
    "--temperature": ("temperature", float), "--top-p": ("top_p", float),
    "--max-new-tokens": ("max_new_tokens", int), "--batch-size": ("batch_size", int),
    "--timeout": ("timeout", float), "--workers": ("workers", int), "--seed": ("seed", int),
}


def cmd_data_augment(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.generate.augment import augment_config, augment_file, format_summary

    config = augment_config(**{field: getattr(args, field) for field, _ in AUGMENT_OPTIONS.values()})
    print(format_summary(augment_file(args.file, args.out, config)))


def add_augment_parser(data) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.config import AugmentConfig

    p = data.add_parser("augment", help="add paraphrased and word-edited copies of each row's input, linked to "
                                        "their source row")
    p.add_argument("file", help="data file in any supported shape")
    p.add_argument("--out", required=True, help="output .jsonl with the source rows and their copies; rejected "
                                                "copies go to OUT.quarantine.jsonl with their reasons")
    for flag, (field, kind) in AUGMENT_OPTIONS.items():
        info = AugmentConfig.model_fields[field]
        default = "" if field == "api_key" else f" (default: {info.default})"
        p.add_argument(flag, dest=field, type=kind, default=None, help=f"{info.description}{default}")
    p.set_defaults(func=cmd_data_augment)


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

    p = sub.add_parser("sweep", help="hyperparameter search (optuna) over the config's sweep.space; "
                                     "each trial is a run")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every trial")
    p.add_argument("--trials", type=int, default=None, help="trials to run now (default sweep.trials); "
                   "again on the same study adds trials")
    p.add_argument("--storage", default=None, help="database URL of the study, shared by several machines "
                   "(default sweep.storage, else <output_dir>/<run_name>/sweep.db)")
    p.add_argument("--study", default=None, help="study name (default run_name)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="start no new trial after this many seconds")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("eval", help="evaluate a run (tuned vs its base) or a model on a data file")
    p.add_argument("--model", required=True, action="append",
                   help="run folder, model folder, Hugging Face id or embedded name; repeat it with --ensemble")
    p.add_argument("--ensemble", choices=["vote", "mean"], default=None,
                   help="evaluate the --model members as one ensemble next to each member: vote (majority of "
                        "their answers) or mean (averaged label probabilities)")
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
    p.add_argument("--strip-html", action="store_true",
                   help="remove HTML tags, scripts and styles and unescape entities; rows left empty are quarantined")
    p.add_argument("--min-tokens", type=int, default=None, metavar="N",
                   help="quarantine rows with fewer tokens (all texts of a row; see --tokenizer)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="quarantine rows with more tokens")
    p.add_argument("--tokenizer", default=None, metavar="MODEL",
                   help="model whose tokenizer counts tokens (default: a fast estimate, words and punctuation)")
    p.add_argument("--languages", type=_comma_list, default=None, metavar="CODES",
                   help="keep only rows in these languages, ISO 639-1 codes such as en,fr (langid)")
    p.add_argument("--keep-degenerate", action="store_true",
                   help="keep rows that look broken (long repeats, mostly symbols, truncated JSON or markup, "
                        "answers echoing the prompt), which are quarantined by default")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes that clean rows while one reads (default: one per core for inputs over 32 MB)")
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
    add_synth_parser(data)
    add_augment_parser(data)
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
