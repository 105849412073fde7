"""``tunelab parity``: the run's held-out prompts through the paths a tuned model takes to users.

1. **eval**: the adapter as ``tunelab eval`` runs it (``load_run`` + ``inference.generate``, greedy);
2. **merged**: the adapter merged into its base, as ``tunelab export`` writes it, against the adapter
   loaded the way a merge loads it (fp32): the export's precision, so rounding is not mistaken for a
   merge bug;
3. **server**: a live server (``--server URL``, or one started here on loopback) through the
   official ``openai`` client, sent the messages a client would send.

It checks that the server renders the same prompt (its prompt token count equals the eval prompt's:
same chat template, same system prompt), stops where eval stops (EOS and stop tokens), and gives the
same greedy text; the first difference fails with both texts and where they part. Served adapters
answering differently from training is the peers' most reported serving bug (vllm #10798, lorax #700).

In bf16 (or fp16) a batch's shape changes the rounding: a row's answer can flip where its two best next tokens
are all but tied, although nothing is wrong. So with a low-precision model, an eval/server difference whose
first diverging tokens are within ``NEAR_TIE_NATS`` of each other under the eval model is reported as a near
tie, not a failure, as long as near ties stay rare (``MAX_NEAR_TIE_SHARE`` of the prompts). In fp32 every
difference fails, and a prompt rendered differently always does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from tunelab.errors import TunelabError
from tunelab.inference.generate import generate
from tunelab.runs.export import merge_adapter
from tunelab.runs.folder import RunFolder
from tunelab.runs.load import load_run
from tunelab.serve.app import ServerState, ServeSettings
from tunelab.serve.golden import Case, cases_of
from tunelab.serve.local import server_in_thread
from tunelab.serve.pool import SERVABLE_METHODS
from tunelab.security import files as sealed

DEFAULT_PROMPTS = 32
NEAR_TIE_NATS = 0.1  # bf16 keeps 8 significant bits: logits of ~10-30 move by hundredths between batch shapes
MAX_NEAR_TIE_SHARE = 0.05  # more near ties than this is no longer rounding
SERVED_NAME = "parity"


@dataclass
class ParityReport:
    run: str
    prompts: int
    outputs: dict[str, list[str]] = field(default_factory=dict)  # path -> greedy text per prompt
    prompt_tokens: dict[str, list[int]] = field(default_factory=dict)  # eval and server
    accuracy: dict[str, float] = field(default_factory=dict)  # label runs: answers equal to the reference
    differences: list[dict] = field(default_factory=list)
    near_ties: list[dict] = field(default_factory=list)  # low precision: flips between all-but-tied tokens

    @property
    def passed(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict:
        return {"run": self.run, "prompts": self.prompts, "passed": self.passed, "accuracy": self.accuracy,
                "differences": self.differences, "near_ties": self.near_ties, "outputs": self.outputs}


def check_parity(run_dir: str | Path, server: str | None = None, api_key: str | None = None,
                 model: str | None = None, limit: int = DEFAULT_PROMPTS, merged: bool = True,
                 progress: bool = True) -> ParityReport:
    """The run's first ``limit`` held-out prompts through each path; ``progress`` False shows no bars at all."""
    with weight_loading_bars(progress):
        return _check_parity(run_dir, server, api_key, model, limit, merged, progress)


@contextmanager
def weight_loading_bars(shown: bool) -> Iterator[None]:
    if shown or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _check_parity(run_dir: str | Path, server: str | None, api_key: str | None, model: str | None, limit: int,
                  merged: bool, progress: bool) -> ParityReport:
    run = RunFolder(run_dir)
    config = run.config()
    if config.method not in SERVABLE_METHODS or run.weights_dir.name != "adapter":
        raise TunelabError(f"parity compares a LoRA adapter run ({', '.join(SERVABLE_METHODS)}); {run.path} is "
                           f"{config.method}")
    cases = cases_of(run, limit)
    report = ParityReport(str(run.path), len(cases))
    new_tokens = config.eval.max_new_tokens
    loaded = load_run(run.path)
    report.outputs["eval"] = generate(loaded.model, loaded.tokenizer, [c.prompt for c in cases], new_tokens,
                                      config.eval.batch_size, desc="parity: eval path", progress=progress)
    report.prompt_tokens["eval"] = [len(loaded.tokenizer(c.prompt, add_special_tokens=False)["input_ids"])
                                    for c in cases]
    low_precision = next(loaded.model.parameters()).dtype in (torch.bfloat16, torch.float16)
    if not low_precision:
        del loaded  # fp32 forgives nothing, so the eval model is not needed again
    if merged:
        report.outputs.update(_merged_paths(run, cases, new_tokens, config.eval.batch_size, progress))
    with _server(run, server) as url:
        texts, counts = _through_server(url, api_key, model or SERVED_NAME, cases, new_tokens)
    report.outputs["server"], report.prompt_tokens["server"] = texts, counts
    _compare(report, cases)
    if low_precision:
        forgive_near_ties(report, cases, lambda case, a, b: token_margin(loaded.model, loaded.tokenizer,
                                                                         case.prompt, a, b))
        del loaded
    if all(c.reference is not None for c in cases) and run.labels(config):
        report.accuracy = {path: sum(o == c.reference for o, c in zip(outs, cases)) / len(cases)
                           for path, outs in report.outputs.items()}
    sealed.write_json(run.path / "parity.json", report.as_dict())  # quotes prompts and answers
    return report


def _merged_paths(run: RunFolder, cases: list[Case], new_tokens: int, batch_size: int,
                  progress: bool) -> dict[str, list[str]]:
    """The adapter on an fp32 base and its merged export, both greedy (merge_adapter consumes the model)."""
    loaded = load_run(run.path, for_merging=True)
    prompts = [c.prompt for c in cases]
    adapter = generate(loaded.model, loaded.tokenizer, prompts, new_tokens, batch_size, desc="parity: adapter fp32",
                       progress=progress)
    merged_model = merge_adapter(loaded.model, "fp32")
    merged = generate(merged_model, loaded.tokenizer, prompts, new_tokens, batch_size, desc="parity: merged",
                      progress=progress)
    del merged_model, loaded
    return {"adapter_fp32": adapter, "merged": merged}


def _server(run: RunFolder, url: str | None):
    if url:
        return nullcontext(url.rstrip("/").removesuffix("/v1"))
    return _local_server(run)


@contextmanager
def _local_server(run: RunFolder) -> Iterator[str]:
    """A loopback server with auth off, serving only this run, for as long as the check runs."""
    state = ServerState(ServeSettings(base=run.config().model, adapters=[(SERVED_NAME, str(run.path))], auth=False))
    with server_in_thread(state) as url:
        yield url


def _through_server(url: str, key: str | None, model: str, cases: list[Case], new_tokens: int):
    from openai import OpenAI  # the official client, exactly as an application calls the server

    client = OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=2, timeout=600)

    def ask(case: Case):
        answer = client.chat.completions.create(model=model, messages=case.messages, max_tokens=new_tokens,
                                                temperature=0)
        return answer.choices[0].message.content.strip(), answer.usage.prompt_tokens

    with ThreadPoolExecutor(max_workers=16) as pool:  # concurrent, so the server batches them as it would
        answers = list(pool.map(ask, cases))
    return [a[0] for a in answers], [a[1] for a in answers]


def _compare(report: ParityReport, cases: list[Case]) -> None:
    eval_out = report.outputs["eval"]
    for i, case in enumerate(cases):
        if report.prompt_tokens["server"][i] != report.prompt_tokens["eval"][i]:
            report.differences.append({"prompt": case.shown, "what": "prompt",
                                       "eval": report.prompt_tokens["eval"][i],
                                       "server": report.prompt_tokens["server"][i]})
        pairs = [("eval", "server", eval_out[i], report.outputs["server"][i])]
        if "merged" in report.outputs:
            pairs.append(("adapter_fp32", "merged", report.outputs["adapter_fp32"][i], report.outputs["merged"][i]))
        for left, right, a, b in pairs:
            if a != b:
                report.differences.append({"prompt": case.shown, "what": f"{left} vs {right}", left: a, right: b})


def forgive_near_ties(report: ParityReport, cases: list[Case], margin_of) -> None:
    """Move eval/server differences whose diverging tokens are within NEAR_TIE_NATS (``margin_of(case, eval_text,
    server_text)``) to ``report.near_ties``, unless there are more than MAX_NEAR_TIE_SHARE of the prompts."""
    by_prompt = {case.shown: case for case in cases}
    ties, kept = [], []
    for difference in report.differences:
        if difference["what"] == "eval vs server":
            margin = margin_of(by_prompt[difference["prompt"]], difference["eval"], difference["server"])
            if margin is not None and margin <= NEAR_TIE_NATS:
                ties.append(difference | {"margin_nats": round(margin, 4)})
                continue
        kept.append(difference)
    if len(ties) <= max(1, int(MAX_NEAR_TIE_SHARE * report.prompts)):
        report.differences, report.near_ties = kept, ties


def token_margin(model, tokenizer, prompt: str, a: str, b: str) -> float | None:
    """How far apart (log-probability, nats) the model puts the first tokens where answers ``a`` and ``b`` part,
    after the prompt and their common start; None when their tokens do not part."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    a_ids, b_ids = encode(a), encode(b)
    at = next((k for k, (x, y) in enumerate(zip(a_ids, b_ids)) if x != y), min(len(a_ids), len(b_ids)))
    first_a = a_ids[at] if at < len(a_ids) else tokenizer.eos_token_id  # an answer that ended chose its end token
    first_b = b_ids[at] if at < len(b_ids) else tokenizer.eos_token_id
    if first_a == first_b:
        return None
    ids = torch.tensor([encode(prompt) + a_ids[:at]], device=model.device)
    with torch.no_grad():
        scores = model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
    return abs(float(scores[first_a] - scores[first_b]))


def explain(report: ParityReport) -> str:
    """The first difference, readably: what differs, both texts, and where they part."""
    if report.passed:
        paths = ", ".join(report.outputs)
        if report.near_ties:
            return (f"parity: {report.prompts} prompts, the same greedy outputs through {paths} but "
                    f"{len(report.near_ties)} near tie(s): answers that flipped between tokens within "
                    f"{NEAR_TIE_NATS} nats of each other (low-precision rounding; see parity.json)")
        return f"parity: {report.prompts} prompts, identical greedy outputs through {paths}"
    first = report.differences[0]
    if first["what"] == "prompt":
        return (f"parity FAILED: the server renders a different prompt for {first['prompt']!r}: {first['server']} "
                f"tokens against eval's {first['eval']} (chat template or system prompt differs); "
                f"{len(report.differences)} differences in all, see {report.run}/parity.json")
    left, right = first["what"].split(" vs ")
    a, b = first[left], first[right]
    at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (f"parity FAILED on {first['prompt']!r} ({left} vs {right}; {len(report.differences)} differences in all,"
            f" see {report.run}/parity.json):\n  {left:>12}: {json.dumps(a)}\n  {right:>12}: {json.dumps(b)}\n"
            f"  {'':>12}  they part at character {at}: {json.dumps(a[at:at + 20])} vs {json.dumps(b[at:at + 20])}")

