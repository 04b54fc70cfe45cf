"""AUTOMATIC1111's prompt weighting: "(word:1.3)", "(word)" = x1.1, "[word]" = /1.1, "\\(" literal.

    parse_weights("a (red:1.5) circle")  # -> [("a ", 1.0), ("red", 1.5), (" circle", 1.0)]

`token_rows` turns prompts into the text encoder's padded id rows with a weight per token, and
`apply_emphasis` scales the encoder's output by those weights as A1111 does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

_WEIGHT_RE = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:"
)


def parse_weights(text: str) -> list[tuple[str, float]]:
    """A1111 attention syntax -> [(text, weight)]: "(a:1.3)", "(a)" x1.1, "[a]" /1.1."""
    out: list[tuple[str, float]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for i in range(start, len(out)):
            out[i] = (out[i][0], out[i][1] * factor)

    for m in _WEIGHT_RE.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            out.append((tok[1], 1.0))
        elif tok == "(":
            round_open.append(len(out))
        elif tok == "[":
            square_open.append(len(out))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif tok == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            out.append((tok, 1.0))
    # brackets left open weigh everything after them, as in A1111
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    merged: list[tuple[str, float]] = []
    for t, w in out:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + t, w)
        elif t:
            merged.append((t, w))
    return merged or [("", 1.0)]


def weighted_tokens(tokenizer: Any, prompt: str) -> tuple[list[int], list[float]]:
    """The prompt's token ids (no BOS/EOS, not truncated) and each token's weight."""
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in parse_weights(prompt):
        piece = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
        ids += piece
        weights += [weight] * len(piece)
    return ids, weights


def token_rows(
    tokenizer: Any, prompts: Sequence[str]
) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    """Padded id rows [BOS, ..., EOS, pad...], their weights, and which prompts were cut."""
    length = tokenizer.model_max_length
    room = length - 2  # BOS and EOS
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, weight_rows, truncated = [], [], []
    for prompt in prompts:
        ids, weights = weighted_tokens(tokenizer, prompt)
        truncated.append(len(ids) > room)
        ids = [tokenizer.bos_token_id, *ids[:room], tokenizer.eos_token_id]
        weights = [1.0, *weights[:room], 1.0]
        rows.append(ids + [pad] * (length - len(ids)))
        weight_rows.append(weights + [1.0] * (length - len(weights)))
    return rows, weight_rows, truncated


def apply_emphasis(embeddings: torch.Tensor, weight_rows: list[list[float]]) -> torch.Tensor:
    """A1111's emphasis: scale each token's embedding by its weight, then restore the mean."""
    weights = torch.tensor(weight_rows, dtype=embeddings.dtype, device=embeddings.device)
    if torch.all(weights == 1.0):
        return embeddings
    before = embeddings.mean(dim=(1, 2), keepdim=True)
    embeddings = embeddings * weights.unsqueeze(-1)
    after = embeddings.mean(dim=(1, 2), keepdim=True)
    return embeddings * torch.where(after.abs() > 1e-8, before / after, torch.ones_like(after))


__all__ = ["apply_emphasis", "parse_weights", "token_rows", "weighted_tokens"]
