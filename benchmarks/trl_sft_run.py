"""Contender A of benchmarks/train_throughput.py: one TRL SFTTrainer run, LoRA, TRL defaults.

Trains on a prompt/completion JSONL (plain strings, turned into one user and one assistant message
so that TRL renders the model's chat template and takes the loss on the completion only), saves
only the final adapter into --out and writes a small JSON of measurements to --result.

Everything not set below is TRL's default (no packing, gradient checkpointing on, logits for every
position, and bf16 autocast: TRL 1.16's SFTConfig turns `bf16` on when neither bf16 nor fp16 is
given, and this script leaves it unset). On a machine without a GPU, transformers refuses bf16 unless
use_cpu=True, so the script passes use_cpu=True there: it only states the device the run would use
anyway (its one other effect, no pinned dataloader memory, does nothing without CUDA). --fp32 passes
bf16=False instead, for a second, labelled fp32 run that is not TRL's default. The settings given
explicitly are the ones the benchmark matches on both sides (learning rate, batch size, epochs, max
length, logging cadence, seed, LoRA shape and dropout) or turns off because they only cost time
(saving checkpoints, evaluation, reporting).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model folder")
    parser.add_argument("--train", required=True, help="prompt/completion JSONL")
    parser.add_argument("--out", required=True, help="output folder (receives the final adapter only)")
    parser.add_argument("--result", required=True, help="JSON file for the measurements")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--fp32", action="store_true", help="pass bf16=False: train in fp32 instead of TRL's "
                        "default bf16 autocast")
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (peft's default: 0)")
    parser.add_argument("--seed", type=int, default=42, help="TrainingArguments seed (data order, adapter init)")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    with open(args.train, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "completion": [{"role": "assistant", "content": r["completion"]}]}
                                 for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # bf16 is left to TRL's default (on, unless fp16) unless --fp32 asks for bf16=False.
    precision = {"bf16": False} if args.fp32 else {}
    # Without a GPU, TrainingArguments rejects bf16 (TRL's default) unless told the run is on the CPU.
    use_cpu = not torch.cuda.is_available()
    config = SFTConfig(
        output_dir=args.out,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        max_length=args.max_length,
        packing=False,
        **precision,
        use_cpu=use_cpu,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=5,  # the same logging cadence as tunelab, so "final loss" means the same thing
        seed=args.seed,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=args.lora_dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    # The model as a local folder: TRL loads it itself, in float32 unless model_init_kwargs say otherwise.
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    loss_tokens = sum(sum(1 for t in labels if t != -100) for labels in trainer.train_dataset["labels"]) \
        if "labels" in trainer.train_dataset.column_names else None

    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(args.out)

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model = trainer.model
    result = {
        "train_seconds": round(seconds, 3),
        "train_runtime": output.metrics.get("train_runtime"),
        "steps": trainer.state.global_step,
        "final_loss": round(float(losses[-1] if losses else output.training_loss), 4),
        "mean_loss": round(float(output.training_loss), 4),
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "examples": len(rows),
        "dtype": str(next(model.parameters()).dtype),
        "bf16_autocast": bool(config.bf16),  # as TRL resolved it
        "fp16_autocast": bool(config.fp16),
        "bf16_requested": False if args.fp32 else None,  # None: left to TRL's default
        "use_cpu": use_cpu,
        "lora_dropout": args.lora_dropout,
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
