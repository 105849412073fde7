"""Serving under load: `tunelab serve` with and without batching, `transformers serve`, and 8 adapters at once.

Each configuration is a real server on a free loopback port, loaded by separate client processes that use
the official `openai` client: by default 32 clients x 10 streamed chat requests, max_tokens 64, temperature 0.

    a    `tunelab serve --adapter movie=RUN` (continuous batching, its default); requests ask for "movie"
    b    the same with --no-batching (one row at a time)
    c    `transformers serve MODEL_DIR` on the same base model, in the same dtype (no adapters: base model)
    c2   the same with --continuous-batching
    d    `tunelab serve` with 8 adapters; request r of client k asks for adapter (k + r) % 8, so every
         decode batch mixes all 8. They are 8 copies of one run, each loaded as its own peft adapter
         with its own weights: the compute is that of 8 distinct adapters.

The adapter is a LoRA run on smollm2-135m: --run DIR, else a short run (about a minute) trained here.
Prompts ask for long stories (a different one per request) and the numbers use the completion tokens each
response's usage reports, since greedy decoding may end an answer before max_tokens. Every server first
answers one warm-up request, outside the timing. All clients start together at a barrier; after --deadline
seconds they start no new request (those in flight finish), the same rule for every configuration.
Throughput is completion tokens over the wall time from the barrier to the last response.

    python benchmarks/serve_load.py                                        # the full load
    python benchmarks/serve_load.py --clients 4 --requests 2 --max-tokens 16 --deadline 60   # a smoke run

Prints a markdown table; --out FILE also writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# Only the standard library at import time: every client process (spawn) imports this module again.

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "data" / "examples" / "movie_sentiment.jsonl"
MODEL = "smollm2-135m"
ADAPTERS = 8
CONFIGS = ("a", "b", "c", "c2", "d")
GOALS = {"batching_ratio_min": 6.0, "adapters_ratio_min": 0.7}
READY_TIMEOUT_S = 300
STOP_GRACE_S = 20
TOPICS = ["a lighthouse keeper", "a lost robot", "two rival bakers", "a dragon who cannot fly", "a river town",
          "an old violin", "a mountain rescue", "a time-travelling cat", "a quiet librarian", "a desert caravan",
          "a chess prodigy", "a haunted train", "a gardener on Mars", "a stolen map", "a winter festival",
          "a retired pirate"]
STYLES = ["with many details", "told by a child", "set a hundred years ago", "with a surprising ending",
          "in the style of a fairy tale", "full of dialogue", "about friendship", "at night"]


def story_prompt(client: int, request: int) -> str:
    """A different request for a long answer per (client, request), so no two prompts are the same."""
    topic = TOPICS[(client + 3 * request) % len(TOPICS)]
    style = STYLES[(client // len(TOPICS) + request) % len(STYLES)]
    return (f"Write a long story about {topic}, {style}. Give every character a name and describe each place "
            f"in detail. (Story {client}-{request}.)")


# ---------------------------------------------------------------- the clients (one process each)

def client_main(base_url: str, models: list[str], client: int, requests: int, max_tokens: int, deadline_s: float,
                request_timeout: float, barrier, results) -> None:
    """Wait at the barrier, then send up to ``requests`` streamed chat requests one after another."""
    import openai

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the benchmark's to handle: it ends the clients
    api = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=request_timeout)
    records: list[dict] = []
    try:
        barrier.wait()
    except Exception as error:  # the barrier broke: another client or the benchmark gave up
        results.put({"client": client, "records": [], "failed": f"barrier: {type(error).__name__}"})
        return
    deadline = time.monotonic() + deadline_s
    for r in range(requests):
        if time.monotonic() >= deadline:
            break
        records.append(one_request(api, models[(client + r) % len(models)], story_prompt(client, r), max_tokens))
    results.put({"client": client, "records": records, "failed": None})


def one_request(api, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed chat request: time to the first content token, latency, completion tokens or the error."""
    started = time.monotonic()
    record = {"model": model, "start": started, "end": None, "ttft": None, "latency": None,
              "completion_tokens": None, "usage_reported": False, "error": None}
    content_chunks = 0
    try:
        stream = api.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                content_chunks += 1
                if record["ttft"] is None:
                    record["ttft"] = time.monotonic() - started
            if chunk.usage is not None:
                record["completion_tokens"] = chunk.usage.completion_tokens
                record["usage_reported"] = True
    except Exception as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        record["error"] = f"{type(error).__name__}: {first}" if first else type(error).__name__
    record["end"] = time.monotonic()
    record["latency"] = record["end"] - started
    if record["error"] is None and record["completion_tokens"] is None:
        record["completion_tokens"] = content_chunks  # no usage chunk: count the content chunks instead
    return record


def run_load(base_url: str, models: list[str], args) -> dict:
    """Start the client processes, release them together, and gather every request's record."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(args.clients + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=client_main, args=(base_url, models, k, args.requests, args.max_tokens,
                                                   args.deadline, args.request_timeout, barrier, results),
                         daemon=True) for k in range(args.clients)]
    try:
        for p in procs:
            p.start()
        barrier.wait(timeout=READY_TIMEOUT_S)  # every client has imported openai and is ready
        started = time.monotonic()
        gathered = []
        wait_until = started + args.deadline + args.request_timeout + 60
        while len(gathered) < args.clients:
            left = wait_until - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"only {len(gathered)} of {args.clients} clients reported back in time")
            try:
                gathered.append(results.get(timeout=min(left, 5)))
            except queue.Empty:  # check that the clients still live
                if not any(p.is_alive() for p in procs) and results.empty():
                    raise RuntimeError(f"the client processes ended; {len(gathered)} of {args.clients} reported")
        for p in procs:
            p.join(timeout=10)
    finally:
        barrier.abort()
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
    records = [dict(r, client=g["client"]) for g in sorted(gathered, key=lambda g: g["client"]) for r in g["records"]]
    failed = [g["failed"] for g in gathered if g["failed"]]
    return {"started": started, "records": records, "client_failures": failed}


# ---------------------------------------------------------------- the servers

@dataclass
class Server:
    """A server subprocess on a loopback port, stopped with SIGTERM, then SIGKILL after a grace period."""

    name: str
    cmd: list[str]
    port: int
    ready_path: str
    log: Path
    env: dict
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        with self.log.open("w", encoding="utf-8") as out:
            # A session of its own: Ctrl-C reaches only the benchmark, whose finally stops the server.
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                         start_new_session=True)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds until the ready path answers 200; raises with the log's tail if the server exits or hangs."""
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise RuntimeError(f"not ready after {timeout:.0f} s: {self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 1) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        kept = [line.strip() for line in text.splitlines() if line.strip() and "it/s]" not in line]
        return " | ".join(kept[-lines:]) or "(no output)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_for(config: str, runs: dict, model_dir: Path, dtype: str, work: Path, env: dict) -> tuple[Server, list[str]]:
    """The server of one configuration and the model names its requests ask for."""
    port = free_port()
    log = work / f"server-{config}.log"
    registry = f"sqlite:///{work / 'registry.db'}"  # a throwaway registry: the response log writes there
    tunelab = [sys.executable, "-m", "tunelab.cli", "serve", "--base", MODEL, "--no-auth", "--host", "127.0.0.1",
               "--port", str(port), "--registry", registry]
    cli = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"  # the venv's own
    transformers = [cli, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype]
    if config == "a":
        return Server(config, tunelab + ["--adapter", f"movie={runs['movie']}"], port, "/ready", log, env), ["movie"]
    if config == "b":
        return Server(config, tunelab + ["--adapter", f"movie={runs['movie']}", "--no-batching"], port, "/ready",
                      log, env), ["movie"]
    if config == "d":
        names = [f"adapter-{i}" for i in range(ADAPTERS)]
        flags = [f for name in names for f in ("--adapter", f"{name}={runs[name]}")]
        return Server(config, tunelab + flags, port, "/ready", log, env), names
    if config == "c":
        return Server(config, transformers, port, "/health", log, env), [str(model_dir)]
    if config == "c2":
        return Server(config, transformers + ["--continuous-batching"], port, "/health", log, env), [str(model_dir)]
    raise ValueError(config)


def warm_up(base_url: str, model: str, timeout: float) -> None:
    """One short request outside the timing (the first forward, a lazily allocated cache)."""
    import openai

    api = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=timeout)
    api.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=4,
                                temperature=0)


# ---------------------------------------------------------------- the adapter runs

def train_adapter(work: Path, env: dict) -> tuple[Path, list[str]]:
    """A short LoRA run on smollm2-135m: about a minute on 2 idle cores (a few steps, a tiny eval)."""
    cmd = [sys.executable, "-m", "tunelab.cli", "train", "/dev/null", f"model={MODEL}",
           f"data.train={DATA.relative_to(ROOT)}", "data.max_train_examples=200", "data.val_fraction=0.02",
           "data.test_fraction=0.02",
           "train.max_steps=10", "train.batch_size=4", "train.max_length=128", "eval.baseline=false",
           "eval.max_examples=8", "run_name=movie", f"output_dir={work / 'trained'}", "--overwrite",
           "--registry", f"sqlite:///{work / 'registry.db'}"]
    log = work / "train.log"
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])
        sys.exit(f"training the adapter failed ({proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return work / "trained" / "movie", cmd


def adapter_copies(run: Path, work: Path) -> dict[str, Path]:
    """The run itself as "movie", and 8 copies of it (without checkpoints) as runs/adapter-0..7."""
    runs = {"movie": run}
    for i in range(ADAPTERS):
        target = work / "runs" / f"adapter-{i}"
        shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)
        runs[f"adapter-{i}"] = target
    return runs


# ---------------------------------------------------------------- numbers

def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least 1
    return ordered[int(rank) - 1]


def summarize(load: dict, planned: int) -> dict:
    records = load["records"]
    ok = [r for r in records if r["error"] is None]
    errors = [r for r in records if r["error"] is not None]
    ends = [r["end"] for r in records]
    wall = (max(ends) - load["started"]) if ends else None
    tokens = sum(r["completion_tokens"] or 0 for r in ok)
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    latencies = [r["latency"] for r in ok]
    messages: dict[str, int] = {}
    for r in errors:
        messages[r["error"]] = messages.get(r["error"], 0) + 1
    return {"planned": planned, "done": len(ok), "sent": len(records),
            "errors": len(errors) + len(load["client_failures"]),
            "error_kinds": messages, "client_failures": load["client_failures"], "wall_s": wall,
            "completion_tokens": tokens, "mean_completion_tokens": tokens / len(ok) if ok else None,
            "usage_missing": sum(1 for r in ok if not r["usage_reported"]),
            "tokens_per_s": tokens / wall if wall else None,
            "latency_p50_s": percentile(latencies, 50), "latency_p99_s": percentile(latencies, 99),
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99)}


def ratio(results: dict, top: str, bottom: str) -> float | None:
    a, b = results.get(top, {}).get("summary"), results.get(bottom, {}).get("summary")
    if not a or not b or not a["tokens_per_s"] or not b["tokens_per_s"]:
        return None
    return a["tokens_per_s"] / b["tokens_per_s"]


def goals(results: dict) -> list[dict]:
    ran = [c for c, r in results.items() if r.get("summary")]
    errors = sum(results[c]["summary"]["errors"] for c in ran)
    rows = [{"name": f"0 errors ({', '.join(ran) or 'nothing ran'})", "value": str(errors),
             "pass": bool(ran) and errors == 0}]

    def check(name: str, value: float | None, ok) -> dict:
        return {"name": name, "value": f"{value:.2f}x" if value is not None else "not run",
                "pass": None if value is None else ok(value)}

    rows.append(check(f"(a) >= {GOALS['batching_ratio_min']:g}x (b) in throughput", ratio(results, "a", "b"),
                      lambda v: v >= GOALS["batching_ratio_min"]))
    for c in ("c", "c2"):
        if c in results:
            rows.append(check(f"(a) ahead of ({c}) in throughput", ratio(results, "a", c), lambda v: v > 1))
    rows.append(check(f"(d) within {100 - 100 * GOALS['adapters_ratio_min']:.0f} % of (a) in throughput",
                      ratio(results, "d", "a"), lambda v: v >= GOALS["adapters_ratio_min"]))
    return rows


# ---------------------------------------------------------------- report

LABELS = {
    "a": "(a) tunelab serve, 1 adapter, continuous batching",
    "b": "(b) tunelab serve, 1 adapter, --no-batching",
    "c": "(c) transformers serve, base model",
    "c2": "(c2) transformers serve --continuous-batching, base model",
    "d": f"(d) tunelab serve, {ADAPTERS} adapters, continuous batching",
}


def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(res: dict) -> str:
    cfg = res["config"]
    lines = [
        "# Serving under load: tunelab serve vs transformers serve",
        "",
        f"{res['date']} · {res['machine']} · torch {res['versions']['torch']} ({res['torch_threads']} threads, "
        f"what every server uses), transformers {res['versions']['transformers']}, openai "
        f"{res['versions']['openai']}",
        "",
        f"SmolLM2-135M-Instruct in {res['dtype']} (the dtype tunelab serves the adapter's base in on this machine; "
        f"transformers serve is given the same). {cfg['clients']} client processes (official openai client) x "
        f"up to {cfg['requests']} streamed chat requests each, max_tokens {cfg['max_tokens']}, temperature 0, "
        f"prompts asking for long stories (each different). Deadline {cfg['deadline']:g} s per configuration: "
        "after it no client starts a new request; those in flight finish. Throughput: completion tokens (from "
        "each response's usage) over the wall time from the start barrier to the last response. Latency and "
        "TTFT (to the first content token) are per request, as the client sees them, queueing included. "
        "One warm-up request per server, not timed. The clients run on the same CPU as the server.",
        "",
        "| config | requests done | errors | completion tok/s | mean tokens/request | p50 latency s | p99 latency s "
        "| p50 TTFT s | p99 TTFT s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, r in res["results"].items():
        s = r.get("summary")
        if s is None:
            lines.append(f"| {LABELS[c]} | did not run | - | - | - | - | - | - | - |")
            continue
        lines.append(f"| {LABELS[c]} | {s['done']} / {s['planned']} | {s['errors']} | {_s(s['tokens_per_s'], 1)} "
                     f"| {_s(s['mean_completion_tokens'], 1)} | {_s(s['latency_p50_s'])} | {_s(s['latency_p99_s'])} "
                     f"| {_s(s['ttft_p50_s'])} | {_s(s['ttft_p99_s'])} |")
    lines.append("")
    for c, r in res["results"].items():
        if r.get("skipped"):
            lines.append(f"- ({c}) did not run: {r['skipped']}")
        s = r.get("summary") or {}
        for message, count in s.get("error_kinds", {}).items():
            lines.append(f"- ({c}) {count} x {message}")
        if s.get("usage_missing"):
            lines.append(f"- ({c}) {s['usage_missing']} responses had no usage chunk; their content chunks were "
                         "counted")
    if {"c", "c2"} & set(res["results"]):
        lines.append("- (c) and (c2) answer with the base model: transformers serve has no LoRA adapters.")
    if "d" in res["results"]:
        lines.append(f"- (d): {ADAPTERS} copies of one adapter run, each loaded as its own peft adapter with its own "
                     f"weights (the compute of {ADAPTERS} distinct adapters); client k's request r asks for "
                     f"adapter-((k + r) % {ADAPTERS}).")
    lines += [
        "",
        "| ratio of throughput | value |",
        "|---|---|",
    ]
    for name, value in res["ratios"].items():
        lines.append(f"| {name} | {_s(value)}x |" if value is not None else f"| {name} | not run |")
    lines += ["", "| goal | value | result |", "|---|---|---|"]
    for g in res["goals"]:
        verdict = "n/a" if g["pass"] is None else ("PASS" if g["pass"] else "FAIL")
        lines.append(f"| {g['name']} | {g['value']} | {verdict} |")
    lines += ["", f"Whole benchmark: {res['elapsed_s'] / 60:.1f} minutes.", "", "## Command lines", "", "```",
              "# $WORK: a temporary folder; $MODEL_DIR: the converted embedded model "
              "(tunelab.model_files.resolve_model)",
              res["command"]]
    if res.get("train_command"):
        lines += ["# the adapter run:", res["train_command"]]
    for c, r in res["results"].items():
        if r.get("command"):
            lines += [f"# ({c}):", r["command"]]
    lines.append("```")
    return "\n".join(lines) + "\n"


def shown(cmd: list[str], work: Path, model_dir: Path, port: int | None = None) -> str:
    """A command as a reader would type it: no interpreter path, temporary folder, cache path or port."""
    if cmd[1:3] == ["-m", "tunelab.cli"]:
        cmd = ["tunelab"] + cmd[3:]
    elif Path(cmd[0]).name == "transformers":
        cmd = ["transformers"] + cmd[1:]
    text = shlex.join(cmd).replace(str(work), "$WORK").replace(str(model_dir), "$MODEL_DIR")
    return text.replace(f"--port {port}", "--port $PORT") if port else text


def run_config(config: str, runs: dict, model_dir: Path, dtype: str, work: Path, env: dict, args) -> dict:
    """Start one configuration's server, warm it up, load it, stop it: its summary, or why it did not run."""
    server, models = server_for(config, runs, model_dir, dtype, work, env)
    entry = {"command": shown(server.cmd, work, model_dir, server.port),
             "models": [m.replace(str(model_dir), "$MODEL_DIR") for m in models]}
    print(f"{LABELS[config]}: starting ...", flush=True)
    try:
        try:
            server.start()
            entry["ready_s"] = round(server.wait_ready(), 1)
            began = time.monotonic()
            warm_up(server.base_url, models[0], args.request_timeout)
            entry["warm_up_s"] = round(time.monotonic() - began, 1)
        except Exception as error:
            entry["skipped"] = one_line(error)
            print(f"({config}) did not run: {entry['skipped']}", flush=True)
            return entry
        print(f"({config}) ready after {entry['ready_s']} s, warm-up request {entry['warm_up_s']} s; "
              f"{args.clients} clients x {args.requests} requests, deadline {args.deadline:g} s ...", flush=True)
        try:
            load = run_load(server.base_url, models, args)
        except Exception as error:
            entry["skipped"] = f"the load failed: {one_line(error)}"
            print(f"({config}) {entry['skipped']}", flush=True)
            return entry
    finally:
        server.stop()
    entry["summary"] = s = summarize(load, args.clients * args.requests)
    entry["requests"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                          if k not in ("start", "end")} for r in load["records"]]
    print(f"({config}) {s['done']}/{s['planned']} requests, {s['errors']} errors, "
          f"{_s(s['tokens_per_s'], 1)} completion tok/s", flush=True)
    return entry


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return (f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__)[:400]


def interrupted(signum, frame):
    """SIGTERM ends the benchmark as Ctrl-C does: through the finally blocks that stop the servers."""
    raise KeyboardInterrupt


def _configs(text: str) -> list[str]:
    picked = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in picked if c not in CONFIGS]
    if unknown or not picked:
        raise argparse.ArgumentTypeError(f"unknown configuration(s) {', '.join(unknown) or '(none)'}; "
                                         f"pick from {','.join(CONFIGS)}")
    return [c for c in CONFIGS if c in picked]  # always in table order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tunelab serve under concurrent load, against itself without "
                                     "batching, transformers serve, and 8 adapters at once.")
    parser.add_argument("--clients", type=int, default=32, help="client processes (default 32)")
    parser.add_argument("--requests", type=int, default=10, help="chat requests per client, one after another "
                        "(default 10)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default 64)")
    parser.add_argument("--configs", type=_configs, default=list(CONFIGS),
                        help=f"configurations to run, comma-separated (default {','.join(CONFIGS)})")
    parser.add_argument("--deadline", type=float, default=240, help="seconds per configuration after which "
                        "clients start no new request (default 240)")
    parser.add_argument("--request-timeout", type=float, default=600, help="seconds one request may take "
                        "(default 600)")
    parser.add_argument("--run", default=None, help="a LoRA run folder on smollm2-135m (default: train a short one)")
    parser.add_argument("--out", default=None, help="also write every number to this JSON file")
    parser.add_argument("--work", default=None, help="keep logs, adapter copies and the registry in this folder")
    args = parser.parse_args(argv)
    if min(args.clients, args.requests, args.max_tokens) < 1 or args.deadline <= 0:
        parser.error("--clients, --requests, --max-tokens and --deadline must be positive")

    signal.signal(signal.SIGTERM, interrupted)
    began = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    import openai
    import torch
    import transformers

    from tunelab.model_files import resolve_model
    from tunelab.modeling.load import frozen_dtype
    from tunelab.runs.folder import RunFolder

    sys.path.insert(0, str(HERE))  # the sibling benchmark (here, not at import: client processes import this file)
    from train_throughput import machine

    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="tunelab-serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(MODEL)  # converts the embedded model once, before any server starts
    print(f"{machine()}; torch {torch.__version__} with {torch.get_num_threads()} threads\nwork folder: {work}",
          flush=True)
    train_cmd = None
    results: dict[str, dict] = {}
    try:
        if args.run:
            run = Path(args.run).resolve()
        else:
            print("training a short adapter run ...", flush=True)
            run, train_cmd = train_adapter(work, env)
        trained = RunFolder(run).config()
        if trained.model != MODEL or trained.method not in ("lora", "rslora", "dora"):
            sys.exit(f"--run {args.run}: a {trained.method} run on {trained.model}; pass a LoRA run on {MODEL}")
        dtype = str(frozen_dtype(trained, None)).removeprefix("torch.")
        runs = adapter_copies(run, work) if "d" in args.configs else {"movie": run}
        for config in args.configs:
            results[config] = run_config(config, runs, model_dir, dtype, work, env, args)
    finally:
        if not args.work:  # every server is stopped by now
            shutil.rmtree(work, ignore_errors=True)

    ratios = {"(a) / (b)": ratio(results, "a", "b")}
    for c in ("c", "c2"):
        if c in results:
            ratios[f"(a) / ({c})"] = ratio(results, "a", c)
    ratios["(d) / (a)"] = ratio(results, "d", "a")
    res = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "torch_threads": torch.get_num_threads(), "dtype": dtype,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "openai": openai.__version__},
        "config": {"clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
                   "deadline": args.deadline, "configs": args.configs, "run_given": bool(args.run)},
        "results": results, "ratios": ratios, "goals": goals(results),
        "command": shlex.join(["python", os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else argv)),
        "train_command": shown(train_cmd, work, model_dir) if train_cmd else None,
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    print()
    print(markdown(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted: every server and client this benchmark started is stopped")
