"""SDXL in the DreamBooth trainer: two text encoders and the UNet's added conditioning.

The UNet's text conditioning is both encoders' penultimate hidden states side by side, plus the
second encoder's pooled (projected) embedding; its size conditioning ("time ids") is, per image,
the picture's original (height, width), the top-left corner of the crop taken from it once
resized, and the trained (height, width): the algorithm of diffusers'
train_dreambooth_lora_sdxl.py. Token ids travel as one [.., 2, L] tensor (a row per tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def is_sdxl(components: Any) -> bool:
    """A pipeline or components dict with a second text encoder."""
    if isinstance(components, dict):
        return components.get("text_encoder_2") is not None
    return getattr(components, "text_encoder_2", None) is not None


def extra_parts(pipe: Any) -> dict[str, Any]:
    """The second text encoder and its tokenizer of an SDXL pipeline (none for SD 1.x/2.x)."""
    if not is_sdxl(pipe):
        return {}
    return {"text_encoder_2": pipe.text_encoder_2, "tokenizer_2": pipe.tokenizer_2}


@dataclass
class _Ids:
    input_ids: torch.Tensor


class PairTokenizer:
    """Tokenizes for both encoders at once: input_ids [n, 2, L] (both CLIP tokenizers, padded
    to the same length)."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second
        self.model_max_length = first.model_max_length

    def __call__(self, prompts: list[str], **kw: Any) -> _Ids:
        one = self.first(prompts, **kw).input_ids
        two = self.second(prompts, **kw).input_ids
        return _Ids(torch.stack([one, two], dim=1))


def training_tokenizer(pipe: Any) -> Any:
    """What the training data's prompts are tokenized with: the pipeline's tokenizer, or for
    SDXL both of them."""
    return PairTokenizer(pipe.tokenizer, pipe.tokenizer_2) if is_sdxl(pipe) else pipe.tokenizer


def encode_prompt(text_encoder: Any, text_encoder_2: Any,
                  ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings [B, L, d1 + d2], pooled embeddings [B, p]) of token ids [B, 2, L]."""
    hidden = []
    pooled = None
    for encoder, row in ((text_encoder, ids[:, 0]), (text_encoder_2, ids[:, 1])):
        out = encoder(row, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder's (text_encoder_2's projected pooled output)
    assert pooled is not None
    return torch.cat(hidden, dim=-1), pooled


def time_ids(original: tuple[int, int], crop_top_left: tuple[int, int],
             target: tuple[int, int]) -> torch.Tensor:
    """One image's size conditioning: original (h, w) + crop (top, left) + target (h, w)."""
    return torch.tensor([*original, *crop_top_left, *target], dtype=torch.float32)


def make_pipeline(components: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"],
        text_encoder_2=components["text_encoder_2"], tokenizer=components["tokenizer"],
        tokenizer_2=components["tokenizer_2"], unet=components["unet"],
        scheduler=components["scheduler"])


def save_lora(lora_dir: Path, layers: dict[str, dict[str, torch.Tensor]]) -> None:
    """The diffusers-layout LoRA file (unet., text_encoder., text_encoder_2. keys)."""
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline.save_lora_weights(
        str(lora_dir), unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers.get("text_encoder"),
        text_encoder_2_lora_layers=layers.get("text_encoder_2"), safe_serialization=True)
