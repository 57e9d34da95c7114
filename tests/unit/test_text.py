"""Prompt embeddings: Wan's cut-then-zero-pad, the per-prompt LRU cache, and the tiny offline tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import UMT5EncoderModel

from pipeline.conditioning import TextEncoder, build_tiny_tokenizer, load_tokenizer
from pipeline.conditioning.text import clean_prompt
from pipeline.errors import WeightsError
from pipeline.presets import NEGATIVE_PROMPT, TINY
from pipeline.weights.t5 import build_text_encoder

VOCAB = TINY.text_encoder["vocab_size"]
DIM = TINY.text_encoder["d_model"]
PROMPTS = ["A woman talks to the camera.", "hello world", NEGATIVE_PROMPT]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def model() -> UMT5EncoderModel:
    return build_text_encoder(TINY.text_encoder, seed=0)


@pytest.fixture
def calls(model):
    batches: list[int] = []

    def pre_hook(module, args, kwargs):
        batches.append(kwargs["input_ids"].shape[0])

    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    yield batches
    handle.remove()


def _real_lengths(tokenizer, prompts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer([clean_prompt(p) for p in prompts]).input_ids]


def test_shape_and_zero_padding_beyond_the_real_length(model, tokenizer):
    out = TextEncoder(model, tokenizer).encode(PROMPTS)
    assert out.shape == (3, 512, DIM)
    assert out.dtype == torch.float32
    assert out.device == next(model.parameters()).device
    for row, length in enumerate(_real_lengths(tokenizer, PROMPTS)):
        assert 1 < length < 512
        assert torch.count_nonzero(out[row, length:]) == 0
        assert (out[row, :length].abs().sum(dim=-1) > 0).all()


def test_matches_wan_pad_to_512_then_cut(model, tokenizer):
    """Padding only to the longest prompt gives what Wan's pad-to-512 gives, on the real tokens."""
    out = TextEncoder(model, tokenizer).encode(PROMPTS)
    batch = tokenizer(
        [clean_prompt(p) for p in PROMPTS],
        padding="max_length",
        max_length=512,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    for row, length in enumerate(batch.attention_mask.sum(dim=1).tolist()):
        torch.testing.assert_close(out[row, :length], full[row, :length], atol=1e-5, rtol=1e-5)


def test_cache_hit_does_not_rerun_the_encoder(model, tokenizer, calls):
    encoder = TextEncoder(model, tokenizer)
    first = encoder.encode(["a prompt", NEGATIVE_PROMPT])
    assert calls == [2]
    again = encoder.encode(["a prompt", NEGATIVE_PROMPT])
    assert calls == [2]
    torch.testing.assert_close(first, again)
    mixed = encoder.encode(["another prompt", NEGATIVE_PROMPT])
    assert calls == [2, 1]  # only the new prompt was encoded
    torch.testing.assert_close(mixed[1], first[1])


def test_duplicate_prompts_in_one_call_are_encoded_once(model, tokenizer, calls):
    out = TextEncoder(model, tokenizer).encode(["same", "same"])
    assert calls == [1]
    torch.testing.assert_close(out[0], out[1])


def test_cache_is_bounded_least_recently_used_first(model, tokenizer, calls):
    encoder = TextEncoder(model, tokenizer, cache_size=2)
    for prompt in ("a", "b", "a", "c"):
        encoder.encode([prompt])
    assert encoder.cached_prompts() == ["a", "c"]  # "b" was least recently used
    assert calls == [1, 1, 1]
    encoder.encode(["b"])
    assert calls == [1, 1, 1, 1]


def test_cache_size_zero_disables_caching(model, tokenizer, calls):
    encoder = TextEncoder(model, tokenizer, cache_size=0)
    encoder.encode(["x"])
    encoder.encode(["x"])
    assert calls == [1, 1]
    assert encoder.cached_prompts() == []


def test_long_prompt_is_truncated_to_512_tokens_ending_in_eos(model, tokenizer):
    long_prompt = " ".join(["talking portrait video"] * 400)
    ids = tokenizer([long_prompt], truncation=True, max_length=512).input_ids[0]
    assert len(ids) == 512
    assert ids[-1] == tokenizer.eos_token_id
    out = TextEncoder(model, tokenizer).encode([long_prompt, "short"])
    assert out.shape == (2, 512, DIM)
    assert (out[0].abs().sum(dim=-1) > 0).all()  # every one of the 512 positions is a real token
    assert torch.count_nonzero(out[1, 8:]) == 0


def test_prompt_cleaning_matches_wan():
    assert clean_prompt("  a  woman\n\ttalks &amp;amp; smiles ") == "a woman talks & smiles"
    assert clean_prompt("") == ""


@pytest.mark.parametrize("bad", ["a string", [], [1, 2], ["ok", None]])
def test_rejects_anything_but_a_list_of_strings(model, tokenizer, bad):
    with pytest.raises(ValueError, match="list of strings"):
        TextEncoder(model, tokenizer).encode(bad)


def test_tiny_tokenizer_conventions(tokenizer):
    assert len(tokenizer) <= VOCAB
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer(["a woman talks"]).input_ids[0]
    assert ids[-1] == 1 and 1 not in ids[:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a woman talks"
    assert tokenizer.unk_token_id in tokenizer(["ζ"]).input_ids[0]  # a character the corpus never saw


def test_tiny_tokenizer_is_deterministic_across_builds(tokenizer):
    rebuilt = build_tiny_tokenizer(VOCAB)
    assert rebuilt.get_vocab() == tokenizer.get_vocab()
    assert rebuilt(PROMPTS).input_ids == tokenizer(PROMPTS).input_ids


def test_tiny_tokenizer_respects_a_small_vocabulary():
    small = build_tiny_tokenizer(64)
    assert len(small) <= 64
    assert max(max(ids) for ids in small(PROMPTS).input_ids) < 64
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_tokenizer(3)


def test_load_tokenizer_from_a_folder(tokenizer, tmp_path):
    folder = tmp_path / "google" / "umt5-xxl"
    tokenizer.save_pretrained(folder)
    loaded = load_tokenizer(folder)
    assert loaded(PROMPTS).input_ids == tokenizer(PROMPTS).input_ids


def test_load_tokenizer_names_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(WeightsError, match="umt5-xxl: tokenizer folder does not exist"):
        load_tokenizer(tmp_path / "umt5-xxl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="empty: cannot load the tokenizer"):
        load_tokenizer(empty)
