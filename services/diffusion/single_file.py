"""Export a diffusers SD 1.x-layout pipeline to the original single-file checkpoint layout.

The original (CompVis/LDM) layout is what AUTOMATIC1111 and ComfyUI load: one safetensors file
with ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
``cond_stage_model.transformer.text_model.*`` (CLIP text encoder).  diffusers ships only the
opposite direction (``from_single_file``), which the tests use to prove this mapping exact.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from boothstudio.shared.storage import default_file_mode

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("conv_shortcut", "skip_connection")]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
             ("to_out.0", "proj_out")]


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_key(key: str, layers_per_block: int, up_attn_blocks: set[int]) -> str:
    """Map one diffusers UNet key to its original LDM name."""
    n = layers_per_block + 1
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for new, old in simple.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = n * i + j + 1
        return (f"input_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets"
                else f"input_blocks.{block}.1.{rest}")
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{n * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = n * i + j
        return (f"output_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets"
                else f"output_blocks.{block}.1.{rest}")
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        slot = 2 if i in up_attn_blocks else 1
        return f"output_blocks.{n * i + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"unmapped UNet key {key}")


def vae_key(key: str, num_blocks: int) -> str:
    """Map one diffusers AutoencoderKL key to its original name."""
    key = key.replace("conv_norm_out", "norm_out")
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        rest = m[3].replace("conv_shortcut", "nin_shortcut")
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{rest}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        rest = m[2]
        for new, old in _VAE_ATTN:
            if rest.startswith(new + "."):
                rest = old + rest[len(new):]
                break
        return f"{m[1]}.mid.attn_1.{rest}"
    return key  # conv_in, norm_out, conv_out, quant_conv, post_quant_conv keep their names


def original_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The pipeline's weights under original SD 1.x single-file names."""
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    if getattr(unet.config, "addition_embed_type", None) or pipe.__class__.__name__.startswith(
            "StableDiffusionXL"):
        raise ValueError("single-file export supports the SD 1.x layout (CLIP text encoder) only")
    lpb = unet.config.layers_per_block
    up_attn = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    out: dict[str, torch.Tensor] = {}
    for k, v in unet.state_dict().items():
        out["model.diffusion_model." + unet_key(k, lpb, up_attn)] = v
    nblocks = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        name = vae_key(k, nblocks)
        if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # original VAE attention uses 1x1 convs
        out["first_stage_model." + name] = v
    for k, v in text_encoder.state_dict().items():
        # transformers 5 drops the `text_model.` prefix that original checkpoints carry.
        name = k if k.startswith("text_model.") else "text_model." + k
        out["cond_stage_model.transformer." + name] = v
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def export_single_file(pipe: Any, path: Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe`` as one original-layout .safetensors file, atomically."""
    state = original_state_dict(pipe)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "exported_by": "boothstudio"})
    make_readable(tmp)
    tmp.replace(path)
    return path


def make_readable(path: Path | str) -> None:
    """Give a file, or every file under a folder, the mode of any other new file.

    safetensors writes its files 0600 (so do the diffusers and LoRA savers that use it); a
    model other tools and users load must be as readable as the rest of their files.
    """
    mode = default_file_mode()
    path = Path(path)
    for p in [path] if path.is_file() else (q for q in path.rglob("*") if q.is_file()):
        os.chmod(p, mode)
