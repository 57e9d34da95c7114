"""Prompt tokenizers: the real ``google/umt5-xxl`` folder, or a tiny offline stand-in for the tiny preset.

The tiny tokenizer mirrors umT5's conventions (SentencePiece-style unigram over "▁"-prefixed words, pad 0,
eos 1, unk 2, an EOS appended to every sequence) so the text path runs exactly as with the real one. Its
vocabulary is counted from a fixed corpus in plain Python rather than trained with ``tokenizers``' EM
trainer, whose parallel float reductions change scores and ids from run to run.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pipeline.errors import WeightsError
from pipeline.presets import NEGATIVE_PROMPT

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)
WORD_START = "▁"
MAX_PIECE_CHARS = 6

_CORPUS = (
    NEGATIVE_PROMPT,
    "A woman is talking to the camera in a bright studio, natural light, close-up portrait, sharp focus.",
    "A man speaks calmly while looking straight ahead; soft background, realistic skin, high quality video.",
    "An astronaut in an orange suit smiles and talks about the mission, the flag and the shuttle behind her.",
    "The person nods, blinks and moves the lips in sync with the speech, expressive face, stable head.",
    "Una mujer habla con la cámara. Une femme parle devant la caméra. Ein Mann spricht ruhig und klar.",
    "一个女人正在对着镜头说话，背景干净，光线柔和。",
    'The quick brown fox jumps over the lazy dog: 0123456789 (numbers), "quotes", dashes - and more!',
)


def build_tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A deterministic unigram tokenizer with at most ``vocab_size`` ids, built with no file or network."""
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must leave room for pieces beside {SPECIAL_TOKENS}, got {vocab_size}")
    pieces = _count_pieces(_CORPUS)
    total = sum(pieces.values())
    # Every character first, so any corpus text is tokenizable; then the most frequent longer pieces.
    singles = sorted(piece for piece in pieces if len(piece) == 1)
    longer = sorted((p for p in pieces if len(p) > 1), key=lambda p: (-pieces[p], p))
    chosen = (singles + longer)[: vocab_size - len(SPECIAL_TOKENS)]
    vocab = [(token, 0.0) for token in SPECIAL_TOKENS]
    vocab += [(piece, math.log(pieces[piece] / total)) for piece in chosen]

    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index(UNK), byte_fallback=False))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, SPECIAL_TOKENS.index(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="right"
    )


def _count_pieces(corpus: tuple[str, ...]) -> Counter[str]:
    """Substring counts of the "▁"-prefixed words, as the Metaspace pre-tokenizer will split them."""
    counts: Counter[str] = Counter()
    for text in corpus:
        for word in unicodedata.normalize("NFKC", text).split():
            word = WORD_START + word
            for start in range(len(word)):
                for end in range(start + 1, min(len(word), start + MAX_PIECE_CHARS) + 1):
                    counts[word[start:end]] += 1
    return counts


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The ``google/umt5-xxl`` tokenizer folder that ships beside Wan's checkpoints, never the hub."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: tokenizer folder does not exist")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{folder}: cannot load the tokenizer ({error})") from None
