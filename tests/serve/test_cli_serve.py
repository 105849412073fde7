"""``tunelab serve`` and ``tunelab parity`` as a user runs them: real processes, real ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from tunelab.cli import main
from tunelab.registry.db import open_registry
from tunelab.registry.keys import create_key
from tunelab.serve.local import free_port


def start(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", "--port", str(port), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def test_serve_command_answers_the_openai_client_and_dies_cleanly_on_kill(tiny_model_dir, adapter_runs):
    from openai import OpenAI

    with open_registry().session() as session:
        key = create_key(session, "cli-test", "inference")[1]
    process, url = start("--base", str(tiny_model_dir), "--adapter", f"a={adapter_runs['a']}")
    try:
        wait_ready(process, url)
        client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hello"}],
                                                max_tokens=5, temperature=0)
        assert answer.model == "a" and answer.usage.completion_tokens >= 1
        assert httpx.get(f"{url}/v1/models").status_code == 401
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def test_no_auth_off_loopback_warns_loudly(tiny_model_dir):
    process, _ = start("--base", str(tiny_model_dir), "--no-auth", "--host", "0.0.0.0")
    try:
        deadline, seen = time.monotonic() + 60, ""
        while "WARNING" not in seen and time.monotonic() < deadline:
            seen += process.stdout.readline()
        assert "ANYONE who can reach this address" in seen
    finally:
        process.kill()
        process.wait(timeout=30)


def test_serve_refuses_an_adapter_of_another_base_in_one_line(tiny_model_dir, adapter_runs, capsys):
    assert main(["serve", "--base", "smollm2-135m", "--adapter", f"a={adapter_runs['a']}"]) == 2
    err = capsys.readouterr().err
    assert "not on this server's base smollm2-135m" in err and "Traceback" not in err


def test_parity_command_passes_on_a_tiny_run(adapter_runs, capsys):
    assert main(["parity", str(adapter_runs["b"]), "--limit", "3"]) == 0
    assert "identical greedy outputs through eval, adapter_fp32, merged, server" in capsys.readouterr().out
