"""Byte-level tokenizer for captions.

UTF-8 bytes shifted by the number of special ids, so any caption in any language
tokenizes without a vocabulary file. Captions here are short; `max_len` bounds them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 3
VOCAB_SIZE = 256 + NUM_SPECIAL


def tokenize(captions: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> (tokens int32 [B, max_len], mask bool [B, max_len]).

    Each caption becomes BOS, its bytes, EOS, then PAD; captions longer than
    `max_len - 2` bytes are cut (EOS is always kept).
    """
    if max_len < 3:
        raise ValueError(f"tokenize: max_len must be at least 3, got {max_len}")
    tokens = np.full((len(captions), max_len), PAD, np.int32)
    for i, caption in enumerate(captions):
        body = np.frombuffer(caption.encode("utf-8"), np.uint8)[: max_len - 2].astype(np.int32) + NUM_SPECIAL
        tokens[i, 0] = BOS
        tokens[i, 1 : 1 + len(body)] = body
        tokens[i, 1 + len(body)] = EOS
    return tokens, tokens != PAD


def detokenize(tokens: np.ndarray) -> list[str]:
    out = []
    for row in np.asarray(tokens):
        body = [int(t) - NUM_SPECIAL for t in row if t >= NUM_SPECIAL]
        out.append(bytes(body).decode("utf-8", errors="replace"))
    return out
