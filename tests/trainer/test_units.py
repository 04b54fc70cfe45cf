"""Pure helpers of the trainer, without services."""

from __future__ import annotations

import pytest

from boothstudio.services.trainer.train import class_prompts
from boothstudio.shared.errors import InvalidArgument
from boothstudio.v1 import trainer_pb2


def _config(from_captions: bool) -> trainer_pb2.DreamBoothConfig:
    cfg = trainer_pb2.DreamBoothConfig(identifier="zwx", class_prompt="a circle")
    cfg.prior_preservation.class_prompts_from_captions = from_captions
    return cfg


def test_class_prompts_drop_the_identifier_and_keep_caption_order() -> None:
    captions = ["a {identifier} circle on a gray background", "a ZWX circle on a green background",
                "", "a zwx circle on a gray background"]
    assert class_prompts(_config(True), captions) == [
        "a circle on a gray background", "a circle on a green background", "a circle"]


def test_class_prompts_default_to_the_class_prompt() -> None:
    assert class_prompts(_config(False), ["a zwx circle on a gray background"]) == ["a circle"]
    assert class_prompts(_config(True), []) == ["a circle"]


def test_caption_dropout_is_deterministic_per_micro_batch() -> None:
    """Dropped captions become the empty prompt; which ones is a function of (seed, index),
    so a resumed run drops the same ones."""
    import torch

    from boothstudio.services.trainer.module import DataSpec, StepBatches

    def batches(dropout: float) -> list[torch.Tensor]:
        inst = [torch.zeros(3, 8, 8) for _ in range(2)]
        ids = torch.tensor([[1, 5, 2], [1, 6, 2]])
        data = StepBatches(DataSpec(7, 2, 8, True, False, dropout), inst, ids,
                           [torch.zeros(3, 8, 8)], torch.tensor([[1, 9, 2]]), total=50,
                           empty_ids=torch.tensor([1, 2, 0]))
        return [data[i]["input_ids"] for i in range(50)]

    rows = torch.cat(batches(0.3))
    empty = (rows == torch.tensor([1, 2, 0])).all(dim=1)
    assert 0.1 < float(empty.float().mean()) < 0.5  # about 30% of 200 captions
    assert all(torch.equal(a, b) for a, b in zip(batches(0.3), batches(0.3), strict=True))
    assert not (torch.cat(batches(0.0)) == torch.tensor([1, 2, 0])).all(dim=1).any()


def test_random_crop_zooms_in_reproducibly() -> None:
    """random_crop_scale shows each picture as a random square of 0.5-1.0 of its side scaled
    back up: the object grows and moves, differently per micro-batch, the same on a rerun."""
    import torch

    from boothstudio.services.trainer.module import DataSpec, StepBatches

    image = -torch.ones(3, 32, 32)
    image[:, 12:20, 12:20] = 1.0  # an 8x8 white square on black

    def views(scale: float) -> list[torch.Tensor]:
        data = StepBatches(DataSpec(3, 1, 32, True, False, 0.0, scale), [image],
                           torch.tensor([[1, 5, 2]]), total=20)
        return [data[i]["pixels"][0] for i in range(20)]

    assert all(torch.equal(v, image) for v in views(0.0))
    zoomed = views(0.5)
    areas = [float((v[0] > 0).float().sum()) for v in zoomed]
    assert max(areas) > 1.5 * 64 and min(areas) >= 64 * 0.9  # never smaller, often larger
    assert len({tuple(v[0].argmax(dim=0).tolist()) for v in zoomed}) > 5  # and it moves
    assert all(v.min() >= -1.001 and v.max() <= 1.001 for v in zoomed)
    assert all(torch.equal(a, b) for a, b in zip(zoomed, views(0.5), strict=True))


def test_alpha_follows_its_picture_through_crop_zoom_and_flip() -> None:
    """An RGBA instance picture's alpha is cropped, zoomed and flipped with the picture: after
    any view the mask still covers exactly the (white) subject. Class pictures, without alpha,
    count whole."""
    import torch
    from PIL import Image

    from boothstudio.services.trainer.module import DataSpec, StepBatches, image_tensor

    img = Image.new("RGBA", (40, 32), (0, 0, 0, 0))
    img.paste((255, 255, 255, 255), (22, 6, 34, 14))  # an opaque white 12x8 box off-centre
    t = image_tensor(img, 32)
    assert t.shape == (4, 32, 40) and float(t[3].sum()) == 96.0
    data = StepBatches(DataSpec(5, 1, 32, False, True, 0.0, 0.6), [t],
                       torch.tensor([[1, 5, 2]]), [torch.zeros(3, 32, 32)],
                       torch.tensor([[1, 9, 2]]), total=30)
    for i in range(30):
        batch = data[i]
        assert batch["pixels"].shape == (2, 3, 32, 32) and batch["masks"].shape == (1, 1, 32, 32)
        white = batch["pixels"][0, 0] > 0
        mask = batch["masks"][0, 0] > 0.5
        assert white.any() and torch.equal(white, mask)


def test_masked_mse_weighs_the_subject() -> None:
    """All-ones masks give the plain MSE; with background weight 0 errors outside the subject's
    latent cells cost nothing, with 0.5 they cost half."""
    import torch
    import torch.nn.functional as F

    from boothstudio.services.trainer.module import masked_mse

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    ones = torch.ones(2, 1, 64, 64)
    assert torch.allclose(masked_mse(pred, target, ones, 0.0), F.mse_loss(pred, target))
    masks = torch.zeros(2, 1, 64, 64)
    masks[:, :, 8:16, 8:16] = 1.0  # the subject fills latent cell (1, 1)
    masks[:, :, 40, 41] = 1.0  # a single subject pixel makes its whole cell (5, 5) count
    worse = target.clone()
    worse[:, :, 6, 0] += 3.0  # an error in the background only
    assert torch.allclose(masked_mse(pred, target, masks, 0.0),
                          masked_mse(pred, worse, masks, 0.0))
    cells = (pred - target).pow(2).mean(1)[:, [1, 5], [1, 5]]
    assert torch.allclose(masked_mse(pred, target, masks, 0.0), cells.mean())
    assert masked_mse(pred, worse, masks, 0.5) > masked_mse(pred, target, masks, 0.5)


def test_listed_class_prompts_replace_or_join() -> None:
    cfg = _config(False)
    cfg.prior_preservation.class_prompts.extend(["a circle on a blue background", "a circle"])
    assert class_prompts(cfg, ["a zwx circle on a gray background"]) == [
        "a circle on a blue background", "a circle"]
    cfg.prior_preservation.class_prompts_from_captions = True
    assert class_prompts(cfg, ["a zwx circle on a gray background"]) == [
        "a circle on a gray background", "a circle on a blue background", "a circle"]


def test_class_prompts_are_templates_checked_by_field() -> None:
    from boothstudio.services.trainer.options import Limits, resolve

    cfg = trainer_pb2.DreamBoothConfig(base_model_id="m", class_noun="circle", identifier="zwx",
                             max_train_steps=1)
    cfg.instance_images.add(data=b"x", filename="0.png")
    cfg.prior_preservation.enabled = True
    cfg.prior_preservation.class_prompts.extend(["a {class_noun} on the grass", "a zwx circle",
                                                 "a {nope}"])
    with pytest.raises(InvalidArgument) as info:
        resolve(cfg, base_model={"native_resolution": 64}, limits=Limits())
    fields = {v.field for v in info.value.violations}
    assert "config.prior_preservation.class_prompts[0]" not in fields
    assert {"config.prior_preservation.class_prompts[1]",
            "config.prior_preservation.class_prompts[2]"} <= fields


def test_lora_targets_must_name_modules_of_the_model() -> None:
    import torch

    from boothstudio.services.trainer.module import check_target_modules

    attn = torch.nn.Module()
    attn.to_q = torch.nn.Linear(2, 2)
    attn.to_out = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    model = torch.nn.Module()
    model.attn1 = attn
    check_target_modules(model, ["to_q", "to_out.0", "attn1.to_q"])
    with pytest.raises(ValueError, match=r"config\.lora\.target_modules: \['to_v', 'q'\]"):
        check_target_modules(model, ["to_q", "to_v", "q"])
