"""Requests generated from the server's own OpenAPI schema (schemathesis, its default checks, with an admin
key) against a real server: no 500, every status and body as documented, valid data accepted and invalid
data refused, auth not ignored.

The schema is ``app.openapi()`` (the server does not serve it), with one change made here: ``model``
names the served base, so generated chat and text completions reach the engine instead of stopping at
404. The run's config changes two expectations: on those two routes a 400 counts as accepting valid
data, because a schema cannot say how many tokens a prompt has or which fields go together
(``top_logprobs`` needs ``logprobs``), and the server answers those with a 400 error object; and a 413
counts as refusing invalid data, since a body over the server's limit is refused before it is read.
The server's limits keep each generation short.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tunelab.serve.app import build_app
from tunelab.serve.completions import Limits

from tests.serve.servers import running_server

EXAMPLES = 25  # per operation and phase: about 1,200 requests, 15-50 s on 2 cores
CONFIG = """
[checks.negative_data_rejection]  # the defaults, and 413: a body over the server's limit is refused unread
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[[operations]]
include-path-regex = "^/v1/(chat/)?completions$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


def test_the_schema_holds_for_generated_requests(tiny_model_dir, tmp_path):
    limits = Limits(max_tokens=8, max_n=2, default_max_tokens=8)
    with running_server(tiny_model_dir, limits=limits) as running:
        schema = build_app(running.state).openapi()
        for name in ("ChatRequest", "CompletionRequest"):
            schema["components"]["schemas"][name]["properties"]["model"]["enum"] = [running.state.pool.base_name]
        (tmp_path / "openapi.json").write_text(json.dumps(schema), encoding="utf-8")
        (tmp_path / "schemathesis.toml").write_text(CONFIG, encoding="utf-8")
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", "schemathesis.toml", "run",
                   "openapi.json", "--url", running.url, "--header", f"Authorization: Bearer {running.keys['admin']}",
                   "--max-examples", str(EXAMPLES), "--seed", "1", "--workers", "1", "--request-timeout", "30",
                   "--no-color"]
        run = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        output = run.stdout + run.stderr
        failures = output[output.find("= FAILURES ="):output.find("= WARNINGS =")] or output[-4000:]
        assert run.returncode == 0, "\n".join(line[:400] for line in failures.splitlines())  # bodies can be huge
        operations = sum(len(item) for item in schema["paths"].values())
        assert f"Tested: {operations}" in output and operations == 18
        assert running.http(None).get("/health").status_code == 200
