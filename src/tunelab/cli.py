"""The tunelab command line. Each subcommand maps to one plain function.

Errors a user can fix print as one line (or one short block for config problems) and exit 2;
Ctrl-C exits 130 after whatever was saved atomically so far.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.model_files import trusting_remote_code


def cmd_train(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.config import load_config
    from tunelab.registry.recorder import recording
    from tunelab.train.recipes import train
    from tunelab.train.setup import resume_config

    positional = [args.config, *args.overrides] if args.config else list(args.overrides)
    resume = args.resume  # False, True (CONFIG --resume) or a value: RUN_DIR, or the old orders' CONFIG / override
    if isinstance(resume, str) and not Path(resume).is_dir():  # train --resume CONFIG ..., train CONFIG --resume k=v
        positional, resume = ([*positional, resume] if "=" in resume else [resume, *positional]), True
    if resume is True and positional and Path(positional[0]).is_dir():  # train RUN_DIR --resume
        resume, positional = positional[0], positional[1:]
    if isinstance(resume, str):
        config = resume_config(resume, positional)
    elif positional:
        config = load_config(positional[0], positional[1:])
    else:
        raise TunelabError("train needs a config (a YAML file, or /dev/null with key=value overrides), or "
                           "--resume RUN_DIR to continue a run from its folder")
    with recording(config.run_dir, url=args.registry):
        train(config, resume=bool(resume), overwrite=args.overwrite)


def cmd_quickstart(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.quickstart import quickstart_config
    from tunelab.registry.recorder import recording
    from tunelab.train.recipes import train

    config = quickstart_config(args.overrides, output_dir=args.output_dir)
    with recording(config.run_dir, url=args.registry):
        train(config, overwrite=True)


def cmd_eval(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.eval.cli_eval import evaluate_cli, output_folder
    from tunelab.registry.audit_trail import record
    from tunelab.registry.recorder import record_eval

    evaluate_cli(args.model, args.data, args.out, args.max_examples, args.baseline, ensemble=args.ensemble)
    if not args.ensemble:  # an ensemble is no single model to file results under
        record_eval(output_folder(args.model, args.data, args.out, None), args.model[0], args.data, url=args.registry)
    else:
        record("eval", registry=args.registry, ensemble=args.ensemble,
               models=[Path(m).name if Path(m).exists() else m for m in args.model])


def cmd_sweep(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.registry.recorder import recording
    from tunelab.sweep import run_sweep

    def record(run_dir, study):
        return recording(run_dir, sweep=study, url=args.registry)

    run_sweep(args.config, args.overrides, trials=args.trials, storage=args.storage, study_name=args.study,
              timeout=args.timeout, record=record)


def cmd_export(args) -> None:
    # start-up time (every import below): a command loads its own modules (torch, transformers) only when it runs
    if args.target != "gguf" and (args.quant or args.llama_cpp):
        raise TunelabError("--quant and --llama-cpp apply to --for gguf only")
    if args.dtype and args.target == "gguf":
        raise TunelabError("--for gguf merges in fp32 and sets the file's precision with --quant, not --dtype")
    if args.target == "gguf":
        from tunelab.runs.export_gguf import export_for_gguf  # start-up time

        export_for_gguf(args.run_dir, args.out, quant=args.quant or "f16", llama_cpp=args.llama_cpp,
                        max_diff=args.max_diff)
    elif args.target == "vllm":
        from tunelab.runs.export_vllm import export_for_vllm  # start-up time

        export_for_vllm(args.run_dir, args.out, dtype=args.dtype or "fp32", max_diff=args.max_diff)
    else:
        from tunelab.runs.export import export_run  # start-up time

        export_run(args.run_dir, args.out, dtype=args.dtype or "fp32", max_diff=args.max_diff)
    from tunelab.registry.audit_trail import artifacts_digest, record  # start-up time: SQLAlchemy, once it is done
    from tunelab.security.files import encryption_on  # start-up time

    if encryption_on():
        print(f"the weights in {args.out} are encrypted at rest (a master key is set); on the machine that serves "
              f"them, `tunelab decrypt {args.out} --out PLAIN` writes the plaintext copy transformers and vLLM "
              f"load", flush=True)

    record("export", run_name=Path(args.run_dir).resolve().name, artifacts_sha256=artifacts_digest(args.run_dir),
           target=args.target, precision=args.quant or args.dtype)


def cmd_data_prepare(args) -> None:
    # start-up time: a command loads its own modules (torch, transformers) only when it runs
    from tunelab.data.filters import FilterSettings
    from tunelab.data.prepare import format_summary, format_timings, prepare_data, read_timings
    from tunelab.registry.recorder import record_prepared_folder

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
    record_prepared_folder(args.out, url=args.registry)


def cmd_data_erase(args) -> None:
    # start-up time: a command loads its own modules only when it runs
    from tunelab.data.erase import Selector
    from tunelab.registry.db import open_registry
    from tunelab.registry.erasure import erase, format_receipt

    if args.user is not None:
        from tunelab.registry.serving import user_hash  # start-up time, as above

        args.subject = user_hash(args.user)
    selector = Selector.parse(args.subject, args.match)
    receipt = erase(open_registry(args.registry), selector, dry_run=args.dry_run)
    print(json.dumps(receipt, indent=2) if args.json else format_receipt(receipt))


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
    trust_option(p)
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
    trust_option(p)
    p.set_defaults(func=cmd_data_augment)


def cmd_cat(args) -> None:
    # start-up time: a command loads its own modules only when it runs
    from tunelab.security.files import open_readable

    with open_readable(args.file) as f:
        while chunk := f.read(1 << 16):
            sys.stdout.buffer.write(chunk)
    sys.stdout.flush()


def cmd_decrypt(args) -> None:
    # start-up time: a command loads its own modules only when it runs
    from tunelab.registry.audit_trail import record
    from tunelab.security.files import decrypt_folder

    decrypted, copied = decrypt_folder(args.folder, args.out)
    record("decrypt", folder=Path(args.folder).resolve().name, out=Path(args.out).resolve().name,
           decrypted=decrypted, copied=copied)
    print(f"wrote a plaintext copy of {args.folder} to {args.out}: {decrypted} files decrypted, {copied} copied "
          f"as they were. It is outside tunelab's encryption at rest: keep it only where it is served, and delete "
          f"it when done", flush=True)


def registry_commands():
    # start-up time: the registry commands load SQLAlchemy (and, for promote, torch) only when they run
    from tunelab.registry import commands

    return commands


def cmd_runs(args) -> None:
    if args.runs_command == "export-html":
        return cmd_export_html(args)
    c = registry_commands()
    if args.runs_command == "list":
        c.runs_list(args.registry, args.status, args.limit, args.json)
    elif args.runs_command == "show":
        c.runs_show(args.registry, args.run, args.json)
    else:
        c.runs_compare(args.registry, args.runs, args.json, args.show)


def cmd_export_html(args) -> None:
    # start-up time: the page's templates and assets load only for this command
    from tunelab.security.files import encryption_on
    from tunelab.ui.export_html import export_run_html

    written = export_run_html(Path(run_folder_of(args.run, args.registry)), Path(args.out))
    if encryption_on():
        print(f"wrote {written}, encrypted at rest under the master key: `tunelab cat {written} > plain.html` gives "
              "a copy a browser opens")
    else:
        print(f"wrote {written} (open it in a browser; it needs no server)")


def run_folder_of(ref: str, registry_url: str | None) -> str:
    """A run folder as given, a registry version's run (NAME@ALIAS, NAME@N), or a recorded run by id or name."""
    if Path(ref).is_dir() or "@" in ref:
        return resolve_run_folder(ref, registry_url)
    # start-up time: the registry (SQLAlchemy) loads only for a registry reference
    from tunelab.registry.db import open_registry
    from tunelab.registry.queries import find_run

    with open_registry(registry_url).session() as session:
        return find_run(session, ref).path


def cmd_review(args) -> None:
    # start-up time: the registry (SQLAlchemy) loads only when a review command runs
    from tunelab.registry.db import open_registry
    from tunelab.registry.review import export_preferences, format_results, review_results

    registry = open_registry(args.registry)
    with registry.session() as session:
        if args.review_command == "export":
            count = export_preferences(session, Path(args.out), include_ties=args.include_ties)
            print(f"wrote {count} preference pairs to {args.out} (prompt, chosen, rejected)")
            return
        results = review_results(session)
    print(json.dumps(results, indent=2) if args.json else format_results(results))


def add_review_parser(sub) -> None:
    review = sub.add_parser("review", help="blind human review (the dashboard's Review page): results, and the "
                                           "choices as preference pairs").add_subparsers(dest="review_command",
                                                                                          required=True)
    p = review.add_parser("results", help="win rate with a 95%% interval for each pair of models reviewed")
    registry_option(p)
    p = review.add_parser("export", help="the reviewers' choices as JSON lines {prompt, chosen, rejected} for "
                                         "preference tuning")
    p.add_argument("--out", required=True, metavar="FILE.jsonl")
    p.add_argument("--include-ties", action="store_true", help="also write tied pairs (with \"tie\": true)")
    registry_option(p, json_output=False)
    for p in review.choices.values():
        p.set_defaults(func=cmd_review)


def _tags(items: list[str]) -> dict:
    tags = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not key:
            raise TunelabError(f"--tag {item!r}: use KEY or KEY=VALUE")
        tags[key] = value or None
    return tags


def cmd_models(args) -> None:
    c = registry_commands()
    if args.models_command == "register":
        c.models_register(args.registry, args.run, args.name, _tags(args.tag), args.json)
    elif args.models_command == "list":
        c.models_list(args.registry, args.json)
    elif args.models_command == "show":
        c.models_show(args.registry, args.name, args.json, card=args.card)
    elif args.models_command == "promote":
        if args.parity:
            promotion_parity(args.registry, f"{args.name}@{args.version}")
        c.models_promote(args.registry, args.name, args.version, args.alias, args.gate, args.margin, args.eval_set,
                         args.force, args.reason, args.json, args.metric)
    else:
        c.models_rollback(args.registry, args.name, args.alias, args.json)


def cmd_datasets(args) -> None:
    c = registry_commands()
    if args.datasets_command == "list":
        c.datasets_list(args.registry, args.json)
    else:
        c.datasets_show(args.registry, args.dataset, args.json)


def cmd_keys(args) -> None:
    if args.keys_command in ("generate-master", "rotate"):
        # start-up time: these need SQLAlchemy only, not the model stack that registry_commands() brings
        from tunelab.registry import encryption_commands as e

        if args.keys_command == "generate-master":
            e.keys_generate_master(args.out)
        else:
            e.keys_rotate(args.registry, args.new_key_file, args.path)
        return
    c = registry_commands()
    if args.keys_command == "create":
        c.keys_create(args.registry, args.name, args.role, args.json)
    elif args.keys_command == "list":
        c.keys_list(args.registry, args.json)
    else:
        c.keys_revoke(args.registry, args.id, args.json)


def cmd_ab(args) -> None:
    c = registry_commands()
    if args.ab_command == "show":
        c.ab_show(args.registry, args.name, args.json)
    else:
        c.ab_list(args.registry, args.json)


def cmd_lineage(args) -> None:
    registry_commands().lineage_show(args.registry, args.ref, args.json)


def cmd_audit(args) -> None:
    # start-up time: SQLAlchemy only (not the other registry commands' torch) for checks run by cron
    from tunelab.registry import audit_trail as c

    if args.audit_command == "verify":
        if not c.audit_verify(args.registry, args.repair, args.json):
            raise SystemExit(1)
    elif args.audit_command == "checkpoint":
        c.audit_checkpoint(args.registry, args.json)
    else:
        c.audit_show(args.n, args.json)


def registry_option(parser, json_output: bool = True) -> None:
    parser.add_argument("--registry", default=None, metavar="URL",
                        help="registry database URL (default $TUNELAB_REGISTRY_URL, else $TUNELAB_HOME/registry.db)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_registry_parsers(sub) -> None:
    runs = sub.add_parser("runs", help="recorded runs: list, show, compare").add_subparsers(dest="runs_command",
                                                                                             required=True)
    p = runs.add_parser("list", help="every recorded run, newest first, with its status")
    p.add_argument("--status", choices=["running", "finished", "failed", "killed"], default=None)
    p.add_argument("--limit", type=int, default=None)
    registry_option(p)
    p = runs.add_parser("show", help="a run's config, environment, metrics, logged series, evaluations, artifacts")
    p.add_argument("run", help="run folder, run id (or its first characters) or run name")
    registry_option(p)
    p = runs.add_parser("compare", help="config diff, metric deltas and the flip table of two or more runs")
    p.add_argument("runs", nargs="+", help="run folders, ids or names; the first is the reference")
    p.add_argument("--show", type=int, default=10, metavar="N", help="flipped items printed per direction")
    registry_option(p)
    p = runs.add_parser("export-html", help="one self-contained HTML page of a run (curves, metrics, predictions, "
                                            "config) that opens from disk with no server and no network")
    p.add_argument("run", help="run folder, run id or name, or a registry version MODEL@ALIAS / MODEL@N")
    p.add_argument("--out", required=True, metavar="FILE.html", help="the page to write")
    registry_option(p, json_output=False)
    for p in runs.choices.values():
        p.set_defaults(func=cmd_runs)

    models = sub.add_parser("models", help="named models: register, list, show, promote, rollback").add_subparsers(
        dest="models_command", required=True)
    p = models.add_parser("register", help="a finished run's adapter or model as a new version; writes MODEL_CARD.md")
    p.add_argument("run", help="run folder, run id or run name")
    p.add_argument("--name", required=True, help="model name (created on first use)")
    p.add_argument("--tag", action="append", metavar="KEY[=VALUE]", help="tag the version (repeatable)")
    registry_option(p)
    p = models.add_parser("list", help="registered models with their versions and aliases")
    registry_option(p)
    p = models.add_parser("show", help="a model's versions, aliases and promotion history")
    p.add_argument("name", help="NAME, or NAME@VERSION / NAME@ALIAS with --card")
    p.add_argument("--card", action="store_true", help="print the version's model card")
    registry_option(p)
    p = models.add_parser("promote", help="move an alias to a version if it beats the holder on the same items "
                                          "(paired test)")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--alias", default="production")
    p.add_argument("--gate", choices=["better", "non-inferior"], default="better",
                   help="better: the 95%% interval of challenger - holder is above 0; non-inferior: above -margin")
    p.add_argument("--margin", type=float, default=0.0, help="allowed loss for --gate non-inferior, e.g. 0.01")
    p.add_argument("--metric", choices=["accuracy", "exact_match", "f1", "rouge_l"], default=None,
                   help="what is compared: accuracy and exact_match by an exact McNemar test, f1 (token F1) and "
                        "rouge_l by a paired bootstrap (default: accuracy for label answers, else f1)")
    p.add_argument("--eval-set", default=None, metavar="FILE",
                   help="score both on this file (default: the holder's registered eval set)")
    p.add_argument("--force", action="store_true", help="promote even when the gate refuses (needs --reason)")
    p.add_argument("--no-parity", dest="parity", action="store_false",
                   help="skip the train-to-serve parity check (tunelab parity) run before the gate")
    p.add_argument("--reason", default=None, metavar="TEXT", help="why the gate was overridden; kept in the record")
    registry_option(p)
    p = models.add_parser("rollback", help="point an alias back at the version it held before")
    p.add_argument("name")
    p.add_argument("--alias", default="production")
    registry_option(p)
    for p in models.choices.values():
        p.set_defaults(func=cmd_models)

    datasets = sub.add_parser("datasets", help="recorded dataset versions").add_subparsers(dest="datasets_command",
                                                                                          required=True)
    p = datasets.add_parser("list", help="every dataset version with its row counts and runs")
    registry_option(p)
    p = datasets.add_parser("show", help="a dataset's versions, settings, report and the runs that used it")
    p.add_argument("dataset", help="NAME, NAME@VERSION or a content-hash prefix")
    registry_option(p)
    for p in datasets.choices.values():
        p.set_defaults(func=cmd_datasets)

    keys = sub.add_parser("keys", help="API keys for the server (create, list, revoke) and the master key for "
                                           "encryption at rest (generate-master, rotate)").add_subparsers(
        dest="keys_command", required=True)
    p = keys.add_parser("create", help="a new key, printed once (only its HMAC is stored)")
    p.add_argument("--name", required=True, help="who or what uses the key")
    p.add_argument("--role", default="inference", metavar="{inference,viewer,trainer,admin}",
                   help="inference (default) calls models and rates its answers; viewer reads models, metrics, "
                        "adapters and A/B tests; trainer does both and loads adapters, runs A/B tests; admin also "
                        "manages keys ('user', the old name of inference, still works)")
    registry_option(p)
    p = keys.add_parser("list", help="keys with role, dates and state (never the keys themselves)")
    registry_option(p)
    p = keys.add_parser("revoke", help="stop a key from working")
    p.add_argument("id", help="the key's id (from keys list) or the key itself")
    registry_option(p)
    p = keys.add_parser("generate-master", help="a new random master key for encryption at rest, in a 0600 file "
                                               "(default: $TUNELAB_HOME/master.key, which turns encryption on)")
    p.add_argument("--out", default=None, metavar="FILE", help="write it here instead (then set TUNELAB_KEY_FILE)")
    p = keys.add_parser("rotate", help="re-wrap every encrypted file's and registry value's data key under a new "
                                      "master key (no data re-encrypted; safe to re-run after a crash)")
    p.add_argument("--new-key-file", default=None, metavar="FILE",
                   help="the new key (from keys generate-master --out); needed when the key comes from "
                        "TUNELAB_KEY or TUNELAB_KEY_FILE")
    p.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="also re-wrap files under DIR (the home folder and every recorded run, dataset and model "
                        "are always covered); repeatable")
    registry_option(p, json_output=False)
    for p in keys.choices.values():
        p.set_defaults(func=cmd_keys)

    ab = sub.add_parser("ab", help="A/B tests of served models: list, show").add_subparsers(
        dest="ab_command", required=True)
    p = ab.add_parser("list", help="A/B tests with their arms, state and requests served")
    registry_option(p)
    p = ab.add_parser("show", help="a test's arms compared: latency, tokens, feedback, significance, verdict")
    p.add_argument("name", help="the A/B test's name")
    registry_option(p)
    for p in ab.choices.values():
        p.set_defaults(func=cmd_ab)

    p = sub.add_parser("lineage", help="dataset versions and rows -> runs -> models -> aliases, from any of them")
    p.add_argument("ref", help="NAME[@VERSION|@ALIAS], a run (folder, id, name), a dataset (NAME[@N]), row:HASH or "
                               "FILE:LINE; prefix model:, run:, dataset: or row: when a name is ambiguous")
    registry_option(p)
    p.set_defaults(func=cmd_lineage)

    audit = sub.add_parser("audit", help="the tamper-evident audit log ($TUNELAB_HOME/audit.jsonl): verify, "
                                         "checkpoint, show").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", help="check the hash chain and the signed checkpoints; exit 1 and name the first "
                                        "bad entry when the log was altered")
    p.add_argument("--repair", action="store_true",
                   help="cut off an incomplete last entry (an append a crash interrupted) and record the cut")
    registry_option(p)
    p = audit.add_parser("checkpoint", help="sign the log's length and head hash into the registry now "
                                            "(after checking the whole log)")
    registry_option(p)
    p = audit.add_parser("show", aliases=["tail"], help="the last entries as a table")
    p.add_argument("-n", type=int, default=20, metavar="N", help="entries to show (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    for p in audit.choices.values():
        p.set_defaults(func=cmd_audit)


def cmd_serve(args) -> None:
    # start-up time: the server's modules (FastAPI, torch) load only when it runs
    from tunelab.serve.app import ServeSettings
    from tunelab.serve.command import parse_ab, parse_adapter, serve
    from tunelab.serve.completions import Limits

    settings = ServeSettings(
        base=args.base, adapters=[parse_adapter(a) for a in args.adapter], auth=args.auth, registry_url=args.registry,
        adapter_roots=[Path(r) for r in (args.adapter_root or ["runs"])], ab_tests=[parse_ab(t) for t in args.ab],
        max_batch=1 if args.no_batching else args.max_batch, max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes, max_model_len=args.max_model_len, parity_check=args.parity_check,
        allow_tainted=args.allow_tainted,
        limits=Limits(max_tokens=args.max_tokens, max_n=args.max_n, default_max_tokens=min(512, args.max_tokens)))
    serve(settings, args.host, args.port, args.ssl_certfile, args.ssl_keyfile, args.access_log,
          add_pages=dashboard_pages(args.registry, secure=bool(args.ssl_certfile)) if args.ui else None)


def dashboard_pages(registry_url: str | None, secure: bool = False):
    """``tunelab serve --ui``: mounts the dashboard on the API server, with the server's registry and keys; its
    playground calls this very server. The /ui pages log in with the same API keys (a session cookie)."""

    def add_pages(app, state) -> None:
        # start-up time: the dashboard's modules load only with --ui
        from tunelab.serve.auth import KeyCheck
        from tunelab.ui.app import UiSettings, UiState, add_ui

        settings = UiSettings(registry_url=registry_url, serves_models=True, secure_cookies=secure)
        add_ui(app, UiState(settings, registry=state.registry, keys=state.keys or KeyCheck(state.registry)))

    return add_pages


def cmd_parity(args) -> None:
    # start-up time: as for serve
    from tunelab.serve.parity import check_parity, explain

    report = check_parity(resolve_run_folder(args.run, args.registry), server=args.server,
                          api_key=args.api_key or os.environ.get("TUNELAB_API_KEY"), model=args.model,
                          limit=args.limit, merged=not args.no_merged)
    print(explain(report))
    if report.accuracy:
        print("accuracy on these prompts: " + ", ".join(f"{k} {v:.3f}" for k, v in report.accuracy.items()))
    if not report.passed:
        raise SystemExit(1)


def promotion_parity(registry_url: str | None, ref: str) -> None:
    """Before a gate: a LoRA version must answer through a server as it does in eval (tunelab parity)."""
    folder = Path(resolve_run_folder(ref, registry_url))
    if not (folder / "adapter" / "adapter_config.json").is_file():
        return  # a full fine-tune or a non-adapter method: served as a --base model, nothing to compare
    # start-up time: the server's modules (FastAPI, torch) load only when a check runs
    from tunelab.serve.parity import check_parity, explain

    report = check_parity(folder, limit=8, progress=False)  # promote's output stays its result or refusal
    if not report.passed:
        raise TunelabError(f"not promoting {ref}: it fails train-to-serve parity; {explain(report)} "
                           "(--no-parity skips this check)")


def resolve_run_folder(ref: str, registry_url: str | None) -> str:
    """A run folder as given, or the run behind a registry model version (NAME@ALIAS, NAME@N)."""
    if Path(ref).is_dir():
        return ref
    # start-up time: the registry (SQLAlchemy) loads only for a registry reference
    from tunelab.registry.db import open_registry
    from tunelab.registry.models import resolve

    with open_registry(registry_url).session() as session:
        _, version = resolve(session, ref)
        return str(Path(version.artifact_path).parent)


def cmd_ui(args) -> None:
    # start-up time: the web stack loads only for the dashboard
    from tunelab.ui.app import UiSettings
    from tunelab.ui.command import run_dashboard

    settings = UiSettings(registry_url=args.registry, runs_root=Path(args.runs_dir),
                          data_roots=[Path(d) for d in (args.data_dir or ["data"])], server_url=args.server)
    run_dashboard(settings, args.host, args.port, args.ssl_certfile, args.ssl_keyfile)


def add_ui_parser(sub) -> None:
    p = sub.add_parser("ui", help="the web dashboard: runs with live curves, compare, datasets, models and "
                                  "promotion, new runs, playground, blind review, A/B tests and feedback")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--server", default=None, metavar="URL",
                   help="a running tunelab serve (e.g. http://127.0.0.1:8000) for the playground and the A/B page")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where runs started from the dashboard go")
    p.add_argument("--data-dir", action="append", default=None, metavar="DIR",
                   help="folders whose data files the New-run form offers (default: data; repeat for more)")
    p.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--ssl-keyfile", default=None, help="the certificate's private key (PEM)")
    registry_option(p, json_output=False)
    p.set_defaults(func=cmd_ui)


def add_serve_parsers(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible server for a base model and many LoRA adapters "
                                     "(batched, authenticated, with feedback, A/B tests and metrics)")
    p.add_argument("--base", default="smollm2-135m", help="the base model: embedded name, Hugging Face id or folder")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN",
                   help="serve a LoRA run as model NAME: a run folder, or a registry version MODEL@ALIAS / MODEL@N "
                        "(repeat for more; requests for different adapters share batches)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-auth", dest="auth", action="store_false",
                   help="serve without API keys (everyone is admin); warns loudly off loopback")
    p.add_argument("--adapter-root", action="append", default=None, metavar="DIR",
                   help="folders the admin API may load adapters from (default: runs; repeat for more)")
    p.add_argument("--ab", action="append", default=[], metavar="NAME=A:0.5,B:0.5",
                   help="an A/B test: requests for NAME go to the arms by weight, sticky per user")
    p.add_argument("--max-batch", type=int, default=32, help="rows per decode step (default 32)")
    p.add_argument("--no-batching", action="store_true", help="one request at a time (for comparison)")
    p.add_argument("--max-queue", type=int, default=256, help="choices that may wait for a row; more get 429")
    p.add_argument("--max-tokens", type=int, default=2048, help="largest max_tokens a request may ask for")
    p.add_argument("--max-n", type=int, default=8, help="largest n a request may ask for")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default the model's, at most "
                                                                   "8192)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--allow-tainted", action="store_true",
                   help="serve adapters trained on rows that tunelab data erase removed (refused by default)")
    p.add_argument("--parity-check", action="store_true",
                   help="answer a few held-out prompts of each adapter's run through the server and through eval's "
                        "generation when it loads, and refuse an adapter whose answers differ")
    p.add_argument("--access-log", action="store_true", help="log one line per request (off: it costs CPU under load)")
    p.add_argument("--ui", action="store_true", help="also serve the web dashboard at /ui/ (log in with an API key; "
                                                     "its playground calls this server)")
    p.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--ssl-keyfile", default=None, help="the certificate's private key (PEM)")
    registry_option(p, json_output=False)
    trust_option(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("parity", help="the run's held-out prompts through eval, the merged export and a live server: "
                                      "same prompt, same stop, same greedy answer, or a readable diff")
    p.add_argument("run", help="run folder, or a registry version (NAME@ALIAS, NAME@N)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="a running tunelab (or other OpenAI-compatible) server; default: start one on loopback")
    p.add_argument("--model", default=None, help="the model name the server serves the run as (with --server)")
    p.add_argument("--api-key", default=None, help="key for --server (default $TUNELAB_API_KEY)")
    p.add_argument("--limit", type=int, default=32, help="held-out prompts to compare (default 32)")
    p.add_argument("--no-merged", action="store_true", help="skip the merged-export path")
    registry_option(p, json_output=False)
    trust_option(p)
    p.set_defaults(func=cmd_parity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune, evaluate and compare language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="LoRA-tune the embedded SmolLM2 on movie sentiment; print base vs tuned")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.max_steps=20")
    p.add_argument("--output-dir", default="runs")
    registry_option(p, json_output=False)
    trust_option(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("train", help="train from a YAML config (use /dev/null and overrides for none)")
    p.add_argument("config", nargs="?", help="YAML config (omit it with --resume RUN_DIR)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50 method=dora")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue from the run's last checkpoint (verified before it loads): --resume RUN_DIR "
                        "needs only the run folder and its config.yaml (overrides still apply); CONFIG --resume "
                        "works as before")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    trust_option(p)
    registry_option(p, json_output=False)
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
    registry_option(p, json_output=False)
    trust_option(p)
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
    registry_option(p, json_output=False)
    trust_option(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="merge a run's adapter into its base; write a standalone model folder, a "
                                      "vLLM serving folder or a GGUF file for llama.cpp and Ollama")
    p.add_argument("run_dir", help="run folder made by tunelab train")
    p.add_argument("--out", required=True, help="new folder for the export (it must not exist, or be empty)")
    p.add_argument("--for", dest="target", choices=["hf", "vllm", "gguf"], default="hf",
                   help="hf: a merged transformers model folder. vllm: the base, the adapter and the merged model, "
                        "with serve_vllm.sh (vllm serve --enable-lora --lora-modules RUN=adapter) and USAGE.md. "
                        "gguf: RUN_NAME.gguf made by llama.cpp's converter, an Ollama Modelfile, and "
                        "gguf_check.json comparing it with the merged model when llama-cpp-python is installed")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="dtype of the saved weights with --for hf or vllm (default fp32)")
    p.add_argument("--quant", choices=["f16", "q8_0", "bf16", "f32"], default=None,
                   help="GGUF weight type with --for gguf (default f16: it gives the merged model's greedy answers; "
                        "q8_0 is half the size, and on SmolLM2-135M changed 3 of 22 answers)")
    p.add_argument("--llama-cpp", default=None, metavar="DIR",
                   help="with --for gguf: a llama.cpp checkout, or an extracted llama-cpp-python sdist (pip download "
                        "--no-deps --no-binary :all: llama-cpp-python), holding convert_hf_to_gguf.py (default: "
                        "$TUNELAB_LLAMA_CPP, then the installed llama_cpp package's source tree)")
    p.add_argument("--max-diff", type=float, default=None, metavar="FLOAT",
                   help="largest allowed log-prob difference between the adapter model and the merged export on the "
                        "golden prompts (default 1e-3 for fp32, 1.0 for bf16, 0.25 for fp16)")
    trust_option(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("cat", help="print a file tunelab wrote (prepared data, predictions, reports), decrypting it "
                                   "when it is encrypted at rest")
    p.add_argument("file")
    p.set_defaults(func=cmd_cat)
    about = ("write a plaintext copy of a folder tunelab encrypted at rest (an export, a run's adapter/), for a "
             "server that cannot read encrypted files (vLLM, llama.cpp's converter): this is where content "
             "deliberately leaves tunelab's encryption; needs the master key it was written with")
    p = sub.add_parser("decrypt", help=about, description=about)
    p.add_argument("folder", help="the encrypted folder, e.g. made by tunelab export with a master key set")
    p.add_argument("--out", required=True, help="new folder for the plaintext copy (it must not exist, or be empty)")
    p.set_defaults(func=cmd_decrypt)
    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("erase", help="remove a person's rows from every dataset version, run copy and the server's "
                                      "logs; mark the runs, models and aliases trained on them as tainted")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", default=None, metavar="ID", help="the salted user hash the server stores (user_hash)")
    who.add_argument("--user", default=None, metavar="NAME",
                     help="the user field clients sent the server; tunelab hashes it with the salt to find the rows")
    who.add_argument("--match", default=None, metavar="FIELD=VALUE",
                     help="rows whose top-level or meta FIELD equals VALUE, e.g. customer_id=C-1042")
    p.add_argument("--dry-run", action="store_true", help="report what would be removed and tainted; change nothing")
    registry_option(p)
    p.set_defaults(func=cmd_data_erase)
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
    registry_option(p, json_output=False)
    trust_option(p)
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
    add_registry_parsers(sub)
    add_serve_parsers(sub)
    add_ui_parser(sub)
    add_review_parser(sub)
    return parser


def quiet_library_noise() -> None:
    """Hide warnings users cannot act on (deprecations inside libraries, optional hub kernels)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    # bitsandbytes tries to fetch an optional CPU kernel from the hub and warns when it cannot.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def trust_option(parser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="load models whose config asks to run their own Python code (auto_map); without "
                             "this flag they are refused")


# Errors of the disk, not of tunelab: one line, like a TunelabError.
STORAGE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EFBIG: "file too large for this system or its size limit (ulimit -f)",
                  errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                  errno.EROFS: "the file system is read-only"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_noise()
    try:
        with trusting_remote_code(getattr(args, "trust_remote_code", False)):
            args.func(args)
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (tunelab cat FILE | head): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        if exc.errno not in STORAGE_ERRORS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {STORAGE_ERRORS[exc.errno]}{where}; files tunelab writes are replaced whole or not at all, "
              "so nothing was left half-written", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; completed checkpoints are kept (continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
