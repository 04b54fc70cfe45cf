"""A tiny SDXL-layout pipeline with random weights (two text encoders, the pooled projection,
size micro-conditioning) for plumbing tests: built in a second, saved as a diffusers folder."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_sdxl(out: Path, tokenizer_dir: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)

    def text_cfg(width: int) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                              num_hidden_layers=3, num_attention_heads=2,
                              max_position_embeddings=tok.model_max_length,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, projection_dim=16)  # fmt: skip

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 + 16, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
    )  # fmt: skip
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        block_out_channels=(8, 16), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)  # fmt: skip
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_cfg(32)),
        text_encoder_2=CLIPTextModelWithProjection(text_cfg(16)), tokenizer=tok,
        tokenizer_2=tok, unet=unet, scheduler=sched,
    )  # fmt: skip
    pipe.save_pretrained(out)
