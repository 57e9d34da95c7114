"""Prompt → umT5 embeddings, cut to the real length and zero-padded to 512 tokens (MODEL.md §4).

Wan pads every prompt to 512 tokens and runs the encoder with the padding masked out, then keeps only the
real tokens and zero-fills the rest; the DiT sees those zeros (it does not mask the text). Masked padding
never changes a real token's output, so here a batch is padded only to its longest prompt: the same result
for a fraction of the encoder's work.
"""

from __future__ import annotations

import html
import re
import threading
from collections import OrderedDict

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MAX_TOKENS = 512
# Each entry holds one prompt's real-length embedding (≤ 512 × 4096 bf16 = 4 MiB on the real model), so the
# default bounds the cache at ~128 MiB of accelerator memory while keeping the negative prompt and the
# prompts of recent jobs hot.
DEFAULT_CACHE_SIZE = 32

_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Wan's "whitespace" clean: HTML entities decoded (twice, as Wan does), whitespace runs collapsed.

    Wan also runs ``ftfy.fix_text`` first, which only repairs mojibake (text decoded with the wrong codec);
    well-formed prompts are unchanged by it, so that dependency is left out.
    """
    return _WHITESPACE.sub(" ", html.unescape(html.unescape(text))).strip()


class TextEncoder:
    """umT5 encoder + tokenizer with a bounded LRU cache of per-prompt embeddings.

    Embeddings depend only on the prompt, so a repeated prompt (above all the fixed negative prompt) costs a
    dictionary lookup instead of a pass through a 5.7B-parameter encoder. ``cache_size`` bounds the number of
    prompts kept (least recently used evicted first); 0 disables caching. The cache is thread-safe.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be ≥ 0, got {cache_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def cached_prompts(self) -> list[str]:
        """Cached prompts, least recently used first."""
        with self._lock:
            return list(self._cache)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """``[len(prompts), max_tokens, d_model]`` on the encoder's device and in its dtype."""
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        found = self._lookup(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in found))
        if missing:
            fresh = dict(zip(missing, self._run(missing), strict=True))
            self._store(fresh)
            found.update(fresh)
        device, dtype = self.device, self.dtype
        out = torch.zeros(len(prompts), self.max_tokens, self.dim, device=device, dtype=dtype)
        for row, prompt in enumerate(prompts):
            embedding = found[prompt]
            out[row, : embedding.shape[0]] = embedding.to(device, dtype)
        return out

    def _lookup(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        found = {}
        with self._lock:
            for prompt in prompts:
                if prompt in self._cache:
                    self._cache.move_to_end(prompt)
                    found[prompt] = self._cache[prompt]
        return found

    def _store(self, fresh: dict[str, torch.Tensor]) -> None:
        if self.cache_size == 0:
            return
        with self._lock:
            for prompt, embedding in fresh.items():
                self._cache[prompt] = embedding
                self._cache.move_to_end(prompt)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    @torch.no_grad()
    def _run(self, prompts: list[str]) -> list[torch.Tensor]:
        """Real-length embeddings, one per prompt (``[length, d_model]``, EOS included)."""
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="longest",
            truncation=True,
            max_length=self.max_tokens,
            add_special_tokens=True,
            return_attention_mask=True,
        )
        # Lengths from the tokenizer's own lists: reading them back from the device would wait for it.
        lengths = [sum(row) for row in batch["attention_mask"]]
        device = self.device
        ids = torch.tensor(batch["input_ids"], device=device)
        mask = torch.tensor(batch["attention_mask"], device=device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # clone(): a slice would keep the whole padded batch alive in the cache.
        return [states[:length].clone() for states, length in zip(hidden, lengths, strict=True)]
