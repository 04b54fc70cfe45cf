"""LoRA layouts: diffusers/PEFT <-> kohya/A1111 conversion is exact both ways, a kohya file we
write is read by diffusers' own kohya loader into the same image as the diffusers file, the
base architecture is read off the shapes (SD 1.x-style tiny model and a tiny SDXL), and files
that are no plain LoRA are refused with what they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from boothstudio.services.diffusion import lora_layouts as L
from tests.diffusion.lora_files import kohya_by_hand, lora_tensors, tag_frequency, write_lora
from tests.diffusion.tiny_sdxl import build_tiny_sdxl


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory, untrained_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl(out, untrained_model_dir / "tokenizer")
    return out


def image(folder: Path, lora: Path | None, *, sdxl: bool = False) -> np.ndarray:
    """diffusers' own pipeline and loader, nothing of ours."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="test")
    side = 32 if sdxl else 64
    out = pipe("a red circle", num_inference_steps=3, width=side, height=side,
               generator=torch.Generator().manual_seed(1), output_type="np").images[0]
    return np.asarray(out)


def same_factors(a: L.LoraWeights, b: L.LoraWeights) -> bool:
    return a.modules.keys() == b.modules.keys() and all(
        torch.equal(a.modules[k].down, b.modules[k].down)
        and torch.equal(a.modules[k].up, b.modules[k].up) for k in a.modules)


def test_round_trip_is_exact_both_ways(untrained_model_dir: Path) -> None:
    tensors = lora_tensors(untrained_model_dir, seed=1)
    weights = L.parse(tensors)
    assert weights.layout == L.DIFFUSERS and weights.parts == ("unet", "text_encoder")
    kohya = L.to_kohya(weights)
    assert kohya.keys() == kohya_by_hand(tensors).keys()
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_") for k in kohya)
    back = L.to_diffusers(L.parse(kohya))
    assert same_factors(L.parse(back), weights)
    again = L.to_kohya(L.parse(back))
    assert again.keys() == kohya.keys() and all(torch.equal(again[k], kohya[k]) for k in kohya)
    # the older diffusers names (lora.down / lora_linear_layer) read the same
    old = {k.replace("lora_A", "lora.down" if k.startswith("unet") else "lora_linear_layer.down")
           .replace("lora_B", "lora.up" if k.startswith("unet") else "lora_linear_layer.up"): v
           for k, v in tensors.items()}
    assert same_factors(L.parse(old), weights)


def test_an_alpha_other_than_the_rank_is_folded_into_up(untrained_model_dir: Path) -> None:
    tensors = lora_tensors(untrained_model_dir, seed=2, parts=("unet",))
    back = L.to_diffusers(L.parse(kohya_by_hand(tensors, alpha=2.0)))  # rank 4: scale 0.5
    assert all(torch.allclose(back[k], v * 0.5) for k, v in tensors.items() if "lora_B" in k)


def test_every_module_name_flattened_by_kohya_splits_back(untrained_model_dir: Path,
                                                          tiny_sdxl: Path) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    for folder in (untrained_model_dir, tiny_sdxl):
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        names = [n for n, m in unet.named_modules()
                 if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
        assert names and all(L.kohya_to_module("unet", n.replace(".", "_")) == n for n in names)
        te = CLIPTextModel.from_pretrained(folder / "text_encoder")
        names = [n for n, m in te.named_modules() if isinstance(m, torch.nn.Linear)]
        assert all(L.kohya_to_module("text_encoder", "text_model_" + n.replace(".", "_")) == n
                   for n in names)


def test_our_kohya_file_in_diffusers_own_loader_draws_the_diffusers_files_image(
    untrained_model_dir: Path, tmp_path: Path
) -> None:
    diffusers_file = write_lora(tmp_path / "d.safetensors", lora_tensors(untrained_model_dir,
                                                                         seed=3))
    kohya_file = L.write_kohya(diffusers_file, tmp_path / "kohya" / "style.safetensors")
    assert L.read_lora(kohya_file).layout == L.KOHYA
    plain = image(untrained_model_dir, None)
    with_diffusers = image(untrained_model_dir, diffusers_file)
    with_kohya = image(untrained_model_dir, kohya_file)
    assert np.abs(with_diffusers - plain).mean() > 0.02  # the LoRA does something
    assert np.array_equal(with_kohya, with_diffusers)
    # a text-encoder-only LoRA too (the kohya text encoder names reach the right modules)
    te_only = write_lora(tmp_path / "te.safetensors",
                         lora_tensors(untrained_model_dir, seed=4, parts=("text_encoder",)))
    te_kohya = L.write_kohya(te_only, tmp_path / "te-kohya.safetensors")
    with_te = image(untrained_model_dir, te_only)
    assert np.abs(with_te - plain).mean() > 0.02
    assert np.array_equal(image(untrained_model_dir, te_kohya), with_te)


def test_sdxl_lora_takes_te1_te2_and_loads_in_diffusers(tiny_sdxl: Path, tmp_path: Path) -> None:
    tensors = lora_tensors(tiny_sdxl, seed=5, parts=("unet", "text_encoder", "text_encoder_2"))
    diffusers_file = write_lora(tmp_path / "xl.safetensors", tensors)
    kohya_file = L.write_kohya(diffusers_file, tmp_path / "xl-kohya.safetensors")
    kohya = load_file(str(kohya_file))
    assert {k.split("_text_model")[0] for k in kohya if k.startswith("lora_te")} == {
        "lora_te1", "lora_te2"}
    assert kohya.keys() == kohya_by_hand(tensors, sdxl=True).keys()
    sig = L.signature(L.read_lora(kohya_file))
    assert sig.architecture() == "sdxl" and sig.text_widths == {"text_encoder": 32,
                                                                "text_encoder_2": 16}
    assert same_factors(L.read_lora(kohya_file), L.parse(tensors))
    with_diffusers = image(tiny_sdxl, diffusers_file, sdxl=True)
    assert np.abs(with_diffusers - image(tiny_sdxl, None, sdxl=True)).mean() > 0.02
    assert np.array_equal(image(tiny_sdxl, kohya_file, sdxl=True), with_diffusers)


def test_architecture_from_shapes_and_mismatch_with_a_base(untrained_model_dir: Path,
                                                           tiny_sdxl: Path) -> None:
    import json

    def base(folder: Path) -> L.Signature:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        widths = {p: json.loads((folder / p / "config.json").read_text())["hidden_size"]
                  for p in ("text_encoder", "text_encoder_2") if (folder / p).is_dir()}
        return L.base_signature(unet, widths)

    tiny = L.signature(L.parse(lora_tensors(untrained_model_dir, seed=6)))
    assert tiny.architecture() == ""  # 128-wide: none of sd1/sd2/sdxl
    assert L.mismatch(tiny, base(untrained_model_dir)) == ""
    assert "take 128 features" in L.mismatch(tiny, base(tiny_sdxl))
    xl = L.signature(L.parse(lora_tensors(tiny_sdxl, seed=7, parts=("unet",))))
    assert L.mismatch(xl, base(tiny_sdxl)) == ""
    assert L.mismatch(xl, base(untrained_model_dir))
    # real-size shapes: SD 1.x text encoder + cross-attention, SGM-named SDXL
    sd1 = L.parse({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
                   torch.zeros(4, 768),
                   "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight":
                   torch.zeros(768, 4),
                   "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
                   ".lora_down.weight": torch.zeros(4, 768),
                   "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
                   ".lora_up.weight": torch.zeros(320, 4)})
    assert L.signature(sd1).architecture() == "sd1"
    sgm = L.parse({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight":
                   torch.zeros(4, 2048),
                   "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight":
                   torch.zeros(640, 4)})
    assert sgm.sgm_unet and L.signature(sgm).architecture() == "sdxl"


def test_files_that_are_no_plain_lora_are_refused(tmp_path: Path) -> None:
    cases = {
        "loha": {"lora_unet_x_to_q.hada_w1_a": torch.zeros(2, 2)},
        "checkpoint": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)},
        "half": {"unet.down_blocks.0.to_q.lora_A.weight": torch.zeros(4, 8)},
        "ranks": {"unet.a.to_q.lora_A.weight": torch.zeros(4, 8),
                  "unet.a.to_q.lora_B.weight": torch.zeros(8, 2)},
    }
    messages = {}
    for name, tensors in cases.items():
        with pytest.raises(L.LoraFormatError) as err:
            L.parse(tensors)
        messages[name] = str(err.value)
    assert "LyCORIS" in messages["loha"] and "not a LoRA key" in messages["checkpoint"]
    assert "no up weight" in messages["half"] and "rank" in messages["ranks"]
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(L.LoraFormatError):
        L.read_lora(tmp_path / "junk.safetensors")
    save_file({}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(L.LoraFormatError, match="no tensors"):
        L.read_lora(tmp_path / "empty.safetensors")


def test_trigger_words_from_kohya_metadata() -> None:
    meta = tag_frequency({"zwx dog": 12, "sitting": 3, "grass": 5, "outdoors": 1})
    assert L.trigger_words(meta) == "zwx dog, grass, sitting"
    assert L.trigger_words({"modelspec.trigger_phrase": "a zwx dog", **meta}) == "a zwx dog"
    assert L.trigger_words({"ss_tag_frequency": "not json"}) == ""
    assert L.trigger_words({}) == ""
