"""A LoRA trained with alpha != rank: the exported file, loaded by plain diffusers (which reads
no alpha from it), applies exactly the scale alpha/rank the training used."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig

from boothstudio.services.trainer.train import lora_state


def test_the_exported_lora_carries_the_trained_scale(untrained_model: Path, tmp_path: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(untrained_model, safety_checker=None)
    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=2, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # trained up factors (they start at zero)
    latents = torch.randn(1, unet.config.in_channels, 16, 16)
    context = torch.randn(1, 8, unet.config.cross_attention_dim)
    with torch.no_grad():
        trained = unet(latents, 10, context).sample

    module = SimpleNamespace(unet=unet, lora={"rank": 2, "alpha": 8},
                             optim=SimpleNamespace(train_text_encoder=False))
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=lora_state(module)["unet"])

    plain = StableDiffusionPipeline.from_pretrained(untrained_model, safety_checker=None)
    with torch.no_grad():
        base = plain.unet(latents, 10, context).sample
    plain.load_lora_weights(tmp_path)
    with torch.no_grad():
        loaded = plain.unet(latents, 10, context).sample
    assert (trained - base).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-4)
