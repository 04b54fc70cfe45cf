"""Textual-inversion embeddings: the files AUTOMATIC1111 and diffusers write, and their use in
prompts.

Layouts read (one tensor of [vectors, width] per text encoder):
- A1111 `.pt`: `{"string_to_param": {"*": tensor}, "name": ..., "step": ...}`, a pickle read
  with `torch.load(weights_only=True)`: plain tensors and containers only, no code runs; a file
  that needs anything else is refused (EMBEDDING_PICKLE_REFUSED).
- A1111 `.safetensors`: `{"emb_params": tensor}`.
- diffusers `learned_embeds.safetensors` / `.bin`: one entry `{"<token>": tensor}`.
- SDXL: `{"clip_l": [n, 768], "clip_g": [n, 1280]}` (either suffix).

In a prompt, an embedding is called by its name (its Catalog model id) written as a word, in any
case, as in A1111 (whose CLIP tokenizer lowercases). The pipeline holds it under a token of its
own (`embedding_token`: the name can be an ordinary word of the vocabulary, which diffusers
refuses as a new token), and the prompt's words are replaced by that token's vectors
(`expand_names`).
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".pt", ".bin", ".safetensors")
#: A1111 embeddings are kilobytes; a file this large is not one (and is never read whole)
MAX_EMBEDDING_BYTES = 64 * 1024 * 1024
#: Vectors an embedding may stand for: a prompt chunk holds 75 tokens
MAX_VECTORS = 75
#: widths of the text encoders of the architectures whose sizes are fixed
KNOWN_WIDTHS: dict[str, tuple[int, ...]] = {"sd1": (768,), "sd2": (1024,), "sdxl": (768, 1280)}
SDXL_KEYS = ("clip_l", "clip_g")


class EmbeddingError(ValueError):
    """An embedding file cannot be used; `reason` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Embedding:
    """One [vectors, width] tensor per text encoder (SD: one; SDXL: clip_l, clip_g)."""

    tensors: tuple[Any, ...]

    @property
    def vectors(self) -> int:
        return int(self.tensors[0].shape[0])

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(t.shape[1]) for t in self.tensors)


def _load_pickle(path: Path) -> Any:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EmbeddingError(
            "EMBEDDING_PICKLE_REFUSED",
            f"{path.name} needs more than tensors to unpickle (code could run); only plain "
            f"weights are read: convert it to .safetensors ({str(exc).splitlines()[0][:200]})",
        ) from exc
    except Exception as exc:
        raise EmbeddingError("EMBEDDING_CORRUPT", f"cannot read {path.name}: {exc}") from exc


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises several types for a bad file
        raise EmbeddingError("EMBEDDING_CORRUPT", f"cannot read {path.name}: {exc}") from exc


def _layout(content: Any, name: str) -> tuple[Any, ...]:
    """The tensors of a loaded file's dictionary, whichever layout it has."""
    import torch

    if not isinstance(content, dict):
        raise EmbeddingError("EMBEDDING_UNSUPPORTED", f"{name} holds no dictionary of tensors")
    if all(k in content for k in SDXL_KEYS):
        found = tuple(content[k] for k in SDXL_KEYS)
    elif isinstance(content.get("string_to_param"), dict) and content["string_to_param"]:
        found = (next(iter(content["string_to_param"].values())),)
    elif "emb_params" in content:
        found = (content["emb_params"],)
    elif len(content) == 1:
        found = (next(iter(content.values())),)
    else:
        raise EmbeddingError(
            "EMBEDDING_UNSUPPORTED",
            f"{name} is not a textual-inversion embedding: expected string_to_param (A1111 .pt), "
            f"emb_params (A1111 .safetensors), clip_l + clip_g (SDXL) or a single token's "
            f"vectors (diffusers); found {', '.join(sorted(map(str, content))[:8])}",
        )
    tensors = []
    for t in found:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() not in (1, 2):
            raise EmbeddingError("EMBEDDING_UNSUPPORTED",
                                 f"{name}: the vectors are not a 1-D or 2-D float tensor")
        tensors.append((t.unsqueeze(0) if t.dim() == 1 else t).detach().float().contiguous())
    counts = {int(t.shape[0]) for t in tensors}
    if len(counts) != 1 or not 1 <= min(counts) <= MAX_VECTORS:
        raise EmbeddingError("EMBEDDING_UNSUPPORTED",
                             f"{name}: 1..{MAX_VECTORS} vectors per text encoder expected, "
                             f"got {sorted(counts)}")
    return tuple(tensors)


def read_embedding(path: str | Path) -> Embedding:
    """The vectors of an embedding file (EmbeddingError when it is not one)."""
    p = Path(path)
    if p.suffix not in SUFFIXES:
        raise EmbeddingError("EMBEDDING_UNSUPPORTED",
                             f"{p.name}: an embedding is a {', '.join(SUFFIXES)} file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise EmbeddingError("EMBEDDING_NOT_FOUND", f"cannot read {p}: {exc.strerror}") from exc
    if size > MAX_EMBEDDING_BYTES:
        raise EmbeddingError("EMBEDDING_UNSUPPORTED",
                             f"{p.name} is {size} bytes; an embedding is at most "
                             f"{MAX_EMBEDDING_BYTES}")
    content = _load_safetensors(p) if p.suffix == ".safetensors" else _load_pickle(p)
    return Embedding(_layout(content, p.name))


def architecture_of(widths: tuple[int, ...]) -> str:
    """The architecture whose text encoders have these widths ("" when none is known)."""
    return next((a for a, w in KNOWN_WIDTHS.items() if w == widths), "")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_into(pipe: Any, token: str, embedding: Embedding) -> None:
    """Add an embedding to a pipeline's tokenizer(s) and text encoder(s) under `token` (SDXL:
    clip_l into the first pair, clip_g into the second), through diffusers' loader."""
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    widths = tuple(int(te.get_input_embeddings().weight.shape[1]) for _, te in encoders)
    if widths != embedding.widths:
        raise EmbeddingError(
            "EMBEDDING_MISMATCH",
            f"embedding {token} has vectors {' + '.join(map(str, embedding.widths))} wide; this "
            f"model's text encoders take {' + '.join(map(str, widths))}",
        )
    for (tokenizer, text_encoder), tensor in zip(encoders, embedding.tensors, strict=True):
        vectors = tensor.to(device=text_encoder.device, dtype=text_encoder.dtype)
        pipe.load_textual_inversion(vectors, token=token, tokenizer=tokenizer,
                                    text_encoder=text_encoder)


# ------------------------------------------------------------------ prompts


def _word(name: str) -> re.Pattern[str]:
    # a word of the prompt: not inside a longer word (letters, digits, _ and - join words)
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def mentioned(names: Iterable[str], *texts: str) -> list[str]:
    """The names written as words in any of the texts."""
    return [n for n in names if any(_word(n).search(t) for t in texts)]


def embedding_token(name: str, identity: str) -> str:
    """The token a pipeline holds an embedding under: never a word of the vocabulary, and new
    when the name is imported again with other vectors (`identity`: the file's sha256)."""
    digest = hashlib.sha1(identity.encode()).hexdigest()[:8]
    return f"<ti-{name}-{digest}>"


def token_words(token: str, vectors: int) -> str:
    """What a prompt holds for an embedding of `vectors` vectors (diffusers names the extra
    vectors' tokens token_1, token_2, ...)."""
    return " ".join([token, *(f"{token}_{i}" for i in range(1, vectors))])


def expand_names(text: str, replacements: dict[str, str]) -> str:
    """The text with each name (a word, any case) replaced by its tokens; longer names first,
    so one name inside another's words is left alone."""
    for name in sorted(replacements, key=len, reverse=True):
        text = _word(name).sub(lambda _m, r=replacements[name]: r, text)
    return text
