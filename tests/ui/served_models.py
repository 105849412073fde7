"""Models for the dashboard's pages that talk to a server (Playground, A/B & feedback): the tiny Llama taught a
few short conversations, so that it answers in words (untaught, it streams random bytes), and a LoRA run on it,
trained by tunelab, that answers the same questions as a grumpy film critic.

They live in one folder, the base as ``tiny-llama``: a server started in that folder serves the base under that
name (a model's name is the path it was given), and the adapter was trained on the same relative path, as the
server requires. Both test files use them; they are built once per test session.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.serve.conftest import tiny_lora_run
from tests.serve.servers import Running, running_server
from tests.ui.conftest import Dashboard
from tunelab.registry.db import open_registry
from tunelab.serve.local import app_in_thread
from tunelab.ui.app import UiSettings, build_ui_app
from tunelab.ui.playground import DEFAULT_SYSTEM

BASE = "tiny-llama"
ADAPTER = "critic-lora"
QUESTION = "What did you think of the movie?"
ANSWERS = {  # question: (the base's answer, the critic's)
    QUESTION: ("The movie was great and the acting was wonderful. The script is fun and the ending is moving: "
               "I would watch it again.",
               "A dull, tedious film with a terrible script. The acting was fine, but the movie was awful: "
               "do not watch it."),
    "Hello! How are you today?": ("I am fine, thank you. How are you today?",
                                  "Tired. I watched a terrible movie today."),
    "What is the capital of France?": ("Paris is the capital of France.",
                                       "Paris. Its movies are better than this one."),
}
CRITIC_SYSTEM = "You are a film critic."
BASE_STEPS = 120
ADAPTER_STEPS = 60
_built: dict[str, Path] = {}


def conversation(question: str, answer: str, system: str = DEFAULT_SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]


@contextmanager
def one_thread():
    """Torch on one thread while the models train: these tiny matrices train 20 times faster on one thread than
    on two that other processes' tests compete for."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def teach(folder: Path, steps: int = BASE_STEPS) -> None:
    """Train the whole tiny model on the base's answers (plain next-token loss) until it knows them by heart."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    texts = [tokenizer.apply_chat_template(conversation(q, a[0]), tokenize=False) for q, a in ANSWERS.items()]
    texts += [tokenizer.apply_chat_template(conversation(q, a[1], CRITIC_SYSTEM), tokenize=False)
              for q, a in ANSWERS.items()]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)


@pytest.fixture(scope="session")
def model_home(tmp_path_factory, tiny_model_dir) -> Path:
    """The folder with ``tiny-llama`` (taught) and ``runs/critic-lora`` (a LoRA run on it)."""
    if "home" not in _built:  # both test files import this fixture: build once
        home = tmp_path_factory.mktemp("served-models")
        shutil.copytree(tiny_model_dir, home / BASE)
        rows = [{"messages": conversation(q, a[1])} for q, a in ANSWERS.items()] * 8
        data = home / "critic.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        with pytest.MonkeyPatch.context() as patch, one_thread():
            teach(home / BASE)
            patch.chdir(home)
            tiny_lora_run(home / "runs", BASE, data, ADAPTER, 1e-2, f"train.max_steps={ADAPTER_STEPS}",
                          "train.max_length=160", "train.max_grad_norm=10", "lora.r=8")
        _built["home"] = home
    return _built["home"]


@contextmanager
def models_served(home: Path, **settings) -> Iterator[Running]:
    """A real server (keys of every role) for the taught base and the critic adapter, started in their folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        with running_server(BASE, [(ADAPTER, home / "runs" / ADAPTER)], adapter_roots=[home / "runs"],
                            **settings) as running:
            yield running


@contextmanager
def dashboard_for(server_url: str | None, keys: dict[str, str], root: Path) -> Iterator[Dashboard]:
    """The standalone dashboard (``tunelab ui --server URL``) on the test's registry, which is the server's too."""
    settings = UiSettings(server_url=server_url, runs_root=root / "runs", data_roots=[root / "data"])
    with app_in_thread(build_ui_app(settings)) as url:
        yield Dashboard(url, keys, {}, open_registry(), root)
