"""LoRA files made in tests from a model's own module shapes (random factors, large enough to
move an untrained tiny model's image), in the diffusers/PEFT layout; the kohya/A1111 layout is
made from them by the converter under test or written out by hand (`kohya_by_hand`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _component_shapes(folder: Path, part: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each LoRA target Linear of a diffusers folder's component."""
    if part == "unet":
        from diffusers import UNet2DConditionModel

        model = UNet2DConditionModel.from_pretrained(folder / "unet")
        targets = UNET_TARGETS
    else:
        import transformers

        cls = json.loads((folder / "model_index.json").read_text())[part][1]
        model = getattr(transformers, cls).from_pretrained(folder / part)
        targets = TEXT_TARGETS
    return {name: (m.out_features, m.in_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.endswith(targets)}


def lora_tensors(folder: Path, *, seed: int, rank: int = 4, scale: float = 0.4,
                 parts: tuple[str, ...] = ("unet", "text_encoder")) -> dict[str, torch.Tensor]:
    """A diffusers/PEFT-layout LoRA state dict for the model in `folder` (module paths as the
    model names them: transformers 5's CLIPTextModel has no `text_model.`)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for part in parts:
        for name, (fan_out, fan_in) in _component_shapes(folder, part).items():
            out[f"{part}.{name}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g) * scale
            out[f"{part}.{name}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g) * scale
    return out


def write_lora(path: Path, tensors: dict[str, torch.Tensor],
               metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})
    return path


def kohya_by_hand(tensors: dict[str, torch.Tensor], *, sdxl: bool = False,
                  alpha: float | None = None) -> dict[str, torch.Tensor]:
    """The kohya layout written the plain way (not through the converter): dots to
    underscores, text encoders under lora_te_ / lora_te1_ / lora_te2_ + text_model_."""
    te = {"text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}
    out = {}
    for key, value in tensors.items():
        part, _, rest = key.partition(".")
        module, _, kind = rest.rpartition(".lora_")
        flat = module.removeprefix("text_model.").replace(".", "_")
        stem = "lora_unet_" + flat if part == "unet" else te[part] + "text_model_" + flat
        if kind == "A.weight":
            out[f"{stem}.lora_down.weight"] = value
            out[f"{stem}.alpha"] = torch.tensor(float(alpha or value.shape[0]))
        else:
            out[f"{stem}.lora_up.weight"] = value
    return out


def tag_frequency(tags: dict[str, int]) -> dict[str, str]:
    """kohya's training metadata: caption tag counts per dataset folder."""
    return {"ss_tag_frequency": json.dumps({"10_zwx dog": tags}), "ss_network_dim": "4"}
