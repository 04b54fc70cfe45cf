"""Build the embedded default model: a tiny pipeline with the exact Stable Diffusion architecture.

AutoencoderKL (3 blocks: 64 px -> 16x16x4 latents), UNet2DConditionModel with cross-attention
only at the two lowest resolutions, CLIPTextModel and a CLIP-format BPE tokenizer trained here on
the scene vocabulary.  Real SD weights take exactly the same code path in the services.
"""

from __future__ import annotations

import json
from pathlib import Path

from research.embedded_model.scenes import BACKGROUNDS, OBJECT_COLORS, SHAPES, SIZES

MAX_TOKENS = 32  # model_max_length: captions are short; position embeddings are sized to it
TEXT_HIDDEN = 128

# Words the tokenizer must hold as single tokens besides the scene captions: common words users
# type, class nouns, and rare strings that never occur in training, which DreamBooth can claim
# as identifiers ("a zwx circle").
_EXTRA_TEXT = """
a an the of on in with and photo picture image painting drawing style small large big
tiny dog cat person man woman car house tree flower sky background object shape colour
color bright dark light very high quality blurry ugly bad best
"""
EXTRA_WORDS = tuple(_EXTRA_TEXT.split())
RARE_TOKENS = ("zwx", "qlo", "vyn", "krd", "xqz", "bsk", "jvp", "wuq", "sks", "olis")


def tokenizer_corpus() -> list[str]:
    lines = []
    for shape in SHAPES:
        for colour in OBJECT_COLORS:
            for bg in BACKGROUNDS:
                for size in SIZES:
                    lines.append(f"a {size} {colour} {shape} on a {bg} background")
    lines += [" ".join(EXTRA_WORDS)] * 3 + [" ".join(RARE_TOKENS)] * 3
    return lines


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, others above 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = [], 0
    for b in range(256):
        if b in printable:
            codes.append(b)
        else:
            codes.append(256 + extra)
            extra += 1
    order = printable + [b for b in range(256) if b not in printable]
    return [chr(codes[b]) for b in order]


def build_tokenizer(out_dir: Path):
    """Train a small BPE and save it as a CLIPTokenizer (vocab.json + merges.txt layout)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, end_of_word_suffix="</w>",
                                  show_progress=False)
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    # CLIP's layout: the 256 byte-level symbols, the same with </w>, then one token per merge.
    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += ["".join(m.split(" ")) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                        model_max_length=MAX_TOKENS)
    tok.save_pretrained(out_dir)
    # The classic files too, so tools that want vocab.json + merges.txt can read it.
    Path(out_dir, "vocab.json").write_text(json.dumps(vocab))
    Path(out_dir, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return tok


def vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=16,
        scaling_factor=1.0,  # set after training from the latent std
    )


def unet_config() -> dict:
    return dict(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(64, 96, 128), layers_per_block=1, norm_num_groups=16,
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8,
    )


def text_config(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_HIDDEN * 4,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        projection_dim=TEXT_HIDDEN,
    )


def scheduler_config() -> dict:
    # SD's training schedule: 1000 steps, scaled-linear betas, epsilon prediction.
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear", prediction_type="epsilon",
                clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_components(tokenizer_dir: Path, seed: int = 0) -> dict:
    """Fresh (untrained) components, deterministic from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer))))
    vae = AutoencoderKL(**vae_config())
    unet = UNet2DConditionModel(**unet_config())
    scheduler = DDIMScheduler(**scheduler_config())
    return dict(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=scheduler)


def build_pipeline(components: dict):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_untrained_pipeline(out_dir: Path, seed: int = 0):
    """An untrained tiny pipeline saved to ``out_dir``: same architecture, random weights.

    Tests of plumbing that do not judge image content use it to stay independent of the
    shipped weights.
    """
    out_dir = Path(out_dir)
    tok_dir = out_dir / "tokenizer"
    build_tokenizer(tok_dir)
    pipe = build_pipeline(build_components(tok_dir, seed))
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return pipe
