"""Shared fixtures: a tiny random Llama and a tiny BPE tokenizer built in memory (no downloads)."""

from __future__ import annotations

import json

import pytest

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "the movie was great and the acting was wonderful",
    "a dull, tedious film with a terrible script",
    "positive negative classify the following text as one of answer with the label only",
    "What is the capital of France? Paris is the capital of France.",
    "Hello! How are you today? I am fine, thank you.",
] * 20


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token="<|im_start|>")
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved 2-layer, 64-wide Llama with the tiny tokenizer: a model folder like any other."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tiny_tokenizer.eos_token_id,
                         pad_token_id=tiny_tokenizer.pad_token_id, bos_token_id=tiny_tokenizer.bos_token_id)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def save_tiny_t5(folder, tokenizer, width: int = 32):
    """A 2-layer T5 (encoder and decoder) of ``width`` with the tiny tokenizer, saved to ``folder``."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=width // 2, d_ff=2 * width, num_layers=2,
                      num_heads=2, dropout_rate=0.0, decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, tiny_tokenizer):
    """A saved 2-layer, 32-wide T5 with the tiny tokenizer."""
    return save_tiny_t5(tmp_path_factory.mktemp("tiny-t5"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_t5_64_dir(tmp_path_factory, tiny_tokenizer):
    """A 64-wide tiny T5: bitsandbytes packs 4-bit weights for CPU in blocks of 64 inputs, so every layer needs 64."""
    return save_tiny_t5(tmp_path_factory.mktemp("tiny-t5-64"), tiny_tokenizer, width=64)


@pytest.fixture(scope="session", autouse=True)
def isolated_session_home(tmp_path_factory):
    """Module and session fixtures start before a test's own home is set (commands they run write the audit
    log and the registry there): they get a home of their own, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(tmp_path_factory.mktemp("session-home")))
        yield


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Never touch the user's ~/.tunelab from a test."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "tunelab-home"))


@pytest.fixture
def sentiment_file(tmp_path):
    """A small text/label file with a learnable signal."""
    good = ["great", "wonderful", "brilliant", "moving", "fun"]
    bad = ["dull", "terrible", "tedious", "awful", "boring"]
    rows = []
    for i in range(60):
        word = (good if i % 2 == 0 else bad)[i % 5]
        rows.append({"text": f"the movie was {word}", "label": "positive" if i % 2 == 0 else "negative"})
    path = tmp_path / "sentiment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


WORDS = ["the movie was great wonderful brilliant moving fun", "the movie was dull terrible tedious awful boring",
         "the movie was fine"] * 20


def build_wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # A fixed word-level vocabulary: a trained WordPiece vocabulary breaks ties differently from run to
    # run, which changed the tiny model (and its few-step loss curve) between test runs.
    words = sorted({w for line in WORDS for w in line.split()})
    core = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(specials + words)}, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece()
    cls, sep = core.token_to_id("[CLS]"), core.token_to_id("[SEP]")
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A saved 2-layer, 32-wide BERT encoder without a head, like the embedded minilm-l6 folder."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = build_wordpiece_tokenizer()
    torch.manual_seed(0)
    # A wider init than BERT's 0.02: at 32 wide, 0.02 leaves the [CLS] output nearly blind to the words
    # and a few steps learn nothing.
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
