"""Training options: min-SNR-gamma loss weighting, offset noise, aspect-ratio buckets and
validation scoring per checkpoint (with the best checkpoint exported).

Each option is checked where it acts (the module's functions on small tensors, the step-indexed
batches), then in whole jobs: run in process through `run_job` (exact resume with everything on,
the best checkpoint exported) and through a real Trainer (scores in the Watch stream).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from boothstudio.v1 import trainer_pb2
from tests.trainer.helpers import png_bytes

DECREASING = "tests.trainer.scorers:decreasing"
DETECTORS = "research.dreambench.scorer:subject_scorer"


def non_square(pngs: list[bytes]) -> list[bytes]:
    """The subject pictures as a portrait, a landscape and a square picture."""
    sizes = [(64, 112), (112, 64), (64, 64)]
    out = []
    for data, size in zip(pngs, sizes, strict=False):
        with Image.open(io.BytesIO(data)) as im:
            out.append(png_bytes(im.convert("RGB").resize(size, Image.BICUBIC)))
    return out


# ---------------------------------------------------------------- min-SNR-gamma


def test_min_snr_weights_follow_the_formula_for_each_target():
    from boothstudio.services.trainer.module import min_snr_weights

    alphas = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.01])
    t = torch.arange(5)
    snr = alphas.double() / (1 - alphas.double())  # 999, 9, 1, 0.111, 0.0101
    eps = min_snr_weights(alphas, t, 5.0, "epsilon")
    assert torch.allclose(eps, (snr.clamp(max=5) / snr).float())
    assert eps[0] == pytest.approx(5 / 999, rel=1e-4) and eps[2:].tolist() == [1.0] * 3
    v = min_snr_weights(alphas, t, 5.0, "v_prediction")
    assert torch.allclose(v, (snr.clamp(max=5) / (snr + 1)).float())
    assert v[2] == pytest.approx(0.5)
    # a zero-SNR timestep weighs 1 (the limit), never NaN
    assert min_snr_weights(torch.tensor([0.0]), torch.tensor([0]), 5.0, "epsilon").item() == 1.0


def test_weighted_losses_weigh_each_sample():
    from boothstudio.services.trainer.module import masked_mse, weighted_mse

    pred = torch.zeros(2, 4, 3, 3)
    target = torch.cat([torch.ones(1, 4, 3, 3), 2 * torch.ones(1, 4, 3, 3)])  # MSE 1 and 4
    assert weighted_mse(pred, target).item() == pytest.approx(2.5)
    assert weighted_mse(pred, target, torch.tensor([1.0, 1.0])).item() == pytest.approx(2.5)
    assert weighted_mse(pred, target, torch.tensor([1.0, 0.25])).item() == pytest.approx(1.0)
    masks = torch.ones(2, 1, 12, 12)
    assert masked_mse(pred, target, masks, 0.1, torch.tensor([1.0, 0.25])).item() == (
        pytest.approx(1.0))


def test_min_snr_gamma_lowers_the_module_loss_and_a_huge_gamma_changes_nothing(
        untrained_model, subject_pngs):
    from boothstudio.services.trainer.module import DreamBoothModule, OptimSpec
    from boothstudio.services.trainer.train import load_base, tokenize

    pipe = load_base({"source_path": str(untrained_model), "format": "diffusers"})
    parts = {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
             "unet": pipe.unet, "scheduler": pipe.scheduler}
    pixels = torch.stack([_pixels(d) for d in subject_pngs[:4]])
    ids = tokenize(pipe.tokenizer, ["a zwx circle"] * 2 + ["a circle"] * 2)
    batch = {"pixels": pixels, "input_ids": ids, "n_instance": 2, "noise_seed": 5}

    def loss(gamma: float) -> tuple[float, float]:
        module = DreamBoothModule(parts, OptimSpec(1e-4, 1e-4, 0.0, "constant", 0, 10,
                                                   min_snr_gamma=gamma))
        with torch.no_grad():
            _, inst, prior = module.compute_loss(batch)
        assert prior is not None
        return float(inst), float(prior)

    plain, huge, weighted = loss(0.0), loss(1e12), loss(0.01)
    assert huge == pytest.approx(plain, rel=1e-5)  # every weight min(SNR, gamma)/SNR = 1
    # with a tiny gamma every weight is gamma / SNR < 1: instance and prior loss both drop
    assert weighted[0] < plain[0] and weighted[1] < plain[1]


def _pixels(png: bytes) -> torch.Tensor:
    from boothstudio.services.trainer.module import image_tensor

    with Image.open(io.BytesIO(png)) as im:
        return image_tensor(im.convert("RGB"), 64)


# ---------------------------------------------------------------- offset noise


def test_offset_noise_adds_one_constant_per_image_and_channel():
    from boothstudio.services.trainer.module import training_noise

    shape = torch.Size([3, 4, 8, 8])
    plain = training_noise(shape, torch.Generator().manual_seed(9))
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(9)))
    offset = training_noise(shape, torch.Generator().manual_seed(9), 0.1)
    again = training_noise(shape, torch.Generator().manual_seed(9), 0.1)
    assert torch.equal(offset, again)  # drawn from the step's seeded generator only
    shift = offset - plain
    spatial_spread = shift.flatten(2).std(dim=2)
    assert float(spatial_spread.max()) < 1e-6  # the same over each image's channel
    per_channel = shift[:, :, 0, 0]
    assert float(per_channel.abs().min()) > 0 and float(per_channel.abs().max()) < 0.5
    assert per_channel.unique().numel() == 12  # its own value per image and channel


# ---------------------------------------------------------------- aspect-ratio buckets


def test_buckets_keep_the_pixel_count_on_the_model_grid():
    from boothstudio.services.trainer.module import aspect_buckets, nearest_bucket

    sd = aspect_buckets(512, 64)
    assert sd == [(384, 640), (448, 576), (512, 512), (576, 448), (640, 384)]
    for w, h in sd:
        assert w % 64 == 0 and h % 64 == 0 and 0.9 * 512**2 < w * h <= 512**2
    assert aspect_buckets(64, 16) == [(48, 80), (64, 64), (80, 48)]
    assert nearest_bucket(1000, 600, sd) == (640, 384)
    assert nearest_bucket(600, 1000, sd) == (384, 640)
    assert nearest_bucket(700, 640, sd) == (512, 512)
    assert nearest_bucket(4000, 100, sd) == (640, 384)  # the flattest there is


def _dataset(pngs: list[bytes], bucketed: bool, batch_size: int = 2, classes: int = 2,
             center_crop: bool = False):
    from boothstudio.services.trainer.module import DataSpec, StepBatches, image_tensor

    def tensors(datas: list[bytes]) -> list[torch.Tensor]:
        out = []
        for d in datas:
            with Image.open(io.BytesIO(d)) as im:
                out.append(image_tensor(im.convert("RGB"), 64))
        return out

    ids = torch.arange(len(pngs))[:, None].repeat(1, 4)
    class_pngs = [png_bytes(Image.new("RGB", (64, 64), (i * 40, 0, 0))) for i in range(classes)]
    return StepBatches(DataSpec(3, batch_size, 64, center_crop, True, 0.0, 0.6,
                                16 if bucketed else 0),
                       tensors(pngs), ids, tensors(class_pngs),
                       100 + torch.arange(classes)[:, None].repeat(1, 4), total=40)


def test_bucketed_batches_come_from_one_bucket_with_their_class_images(subject_pngs):
    pictures = non_square(subject_pngs)  # portrait 64x112, landscape 112x64, square
    data = _dataset(pictures, bucketed=True)
    assert data.buckets == [(80, 48), (48, 80), (64, 64)]  # (height, width) per picture
    shapes = set()
    for i in range(len(data)):
        batch = data[i]
        firsts = batch["input_ids"][:2, 0].tolist()  # the instance pictures' indices
        size = data.buckets[firsts[0]]
        assert all(data.buckets[k] == size for k in firsts)  # one bucket per micro-batch
        # 2 instance + 2 class pictures, all of the bucket's size
        assert batch["pixels"].shape == (4, 3, *size)
        assert batch["input_ids"][2:, 0].min() >= 100
        shapes.add(tuple(batch["pixels"].shape[-2:]))
        assert torch.equal(batch["pixels"], data[i]["pixels"])  # the same for the same index
    assert shapes == {(80, 48), (48, 80), (64, 64)}
    # every picture leads one micro-batch per epoch (an epoch order over all pictures)
    leads = [data[i]["input_ids"][0, 0].item() for i in range(len(data))]
    assert all(sorted(leads[e * 3:e * 3 + 3]) == [0, 1, 2] for e in range(13))
    # a portrait stays a portrait: the whole picture (scaled) rather than a square crop
    portrait = next(data[i] for i in range(len(data)) if data[i]["input_ids"][0, 0] == 0)
    assert portrait["pixels"].shape[-2:] == (80, 48)


def test_unbucketed_batches_stay_square_crops(subject_pngs):
    data = _dataset(non_square(subject_pngs), bucketed=False)
    assert data.buckets == [] and all(data[i]["pixels"].shape == (4, 3, 64, 64)
                                      for i in range(6))


def test_cover_scales_a_picture_to_cover_its_bucket_keeping_its_shape():
    from boothstudio.services.trainer.module import cover

    square = torch.arange(64.0).repeat(3, 64, 1)  # columns 0..63
    wide = cover(square, (48, 80))
    assert wide.shape == (3, 80, 80)  # scaled to cover 48x80, cropped to it later
    tall = cover(square, (80, 48))
    assert tall.shape == (3, 80, 80)
    assert cover(square, (64, 64)) is square


# ---------------------------------------------------------------- bad values, by field


@pytest.mark.parametrize(("values", "field"), [
    ({"min_snr_gamma": -1.0}, "config.min_snr_gamma"),
    ({"min_snr_gamma": 1000.0}, "config.min_snr_gamma"),
    ({"offset_noise": -0.1}, "config.offset_noise"),
    ({"offset_noise": 1.5}, "config.offset_noise"),
    ({"validation_scorer": "not a path"}, "config.validation_scorer"),
    ({"validation_scorer": "os.path:join()"}, "config.validation_scorer"),
    ({"validation_scorer": "no_such_package_xyz.scorers:best"}, "config.validation_scorer"),
    ({"validation_scorer": "a" * 300 + ":b"}, "config.validation_scorer"),
    ({"export_best_checkpoint": True}, "config.export_best_checkpoint"),
])
def test_bad_values_are_refused_by_field(values, field, subject_pngs):
    from boothstudio.services.trainer.options import Limits, resolve
    from boothstudio.shared.errors import InvalidArgument

    cfg = trainer_pb2.DreamBoothConfig(base_model_id="m", class_noun="circle", **values)
    cfg.instance_images.add(data=subject_pngs[0], filename="0.png")
    with pytest.raises(InvalidArgument) as info:
        resolve(cfg, base_model={"native_resolution": 64}, limits=Limits())
    assert info.value.fields == [field]


def test_good_values_resolve_unchanged(subject_pngs):
    from boothstudio.services.trainer.options import Limits, resolve

    cfg = trainer_pb2.DreamBoothConfig(
        base_model_id="m", class_noun="circle", min_snr_gamma=5.0, offset_noise=0.1,
        aspect_buckets=True, validation_scorer=DETECTORS, export_best_checkpoint=True)
    cfg.instance_images.add(data=subject_pngs[0], filename="0.png")
    c = resolve(cfg, base_model={"native_resolution": 64}, limits=Limits()).config
    assert (c.min_snr_gamma, c.offset_noise, c.aspect_buckets) == (5.0, pytest.approx(0.1), True)
    assert c.validation_scorer == DETECTORS and c.export_best_checkpoint


def test_a_scorer_must_be_marked_and_return_one_number_per_prompt():
    from boothstudio.services.trainer.scoring import load_scorer, score

    with pytest.raises(ValueError, match=r"config\.validation_scorer: .*not a callable marked"):
        load_scorer("tests.trainer.scorers:not_marked")
    with pytest.raises(ValueError, match=r"config\.validation_scorer: .*cannot import"):
        load_scorer("tests.trainer.no_such_module:x")
    scorer = load_scorer(DECREASING)
    assert len(score(scorer, [[], []], ["a", "b"])) == 2
    with pytest.raises(ValueError, match="one finite number per prompt"):
        score(lambda images, prompts: [math.nan], [[]], ["a"])
    with pytest.raises(ValueError, match="one finite number per prompt"):
        score(lambda images, prompts: [1.0], [[], []], ["a", "b"])


def test_the_detector_scorer_rewards_the_subject_and_punishes_a_leak():
    from research.dreambench.scorer import subject_scorer
    from research.embedded_model.scenes import subject_images

    pictures = subject_images(4)
    bg = pictures[0][1].background
    with_bg = [img for img, scene in pictures if scene.background == bg]
    scores = subject_scorer([with_bg, with_bg, [img for img, _ in pictures]],
                            [f"a zwx circle on a {bg} background",
                             f"a circle on a {bg} background", "a zwx circle"])
    assert scores == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------- whole jobs, in process


class Recorder:
    """A Reporter that keeps what it is told."""

    def __init__(self) -> None:
        from boothstudio.services.trainer.train import Reporter

        self.base = Reporter()
        self.checkpoints: list[trainer_pb2.Checkpoint] = []
        self.states: list[tuple[int, str, str]] = []

    def __getattr__(self, name: str):  # everything else: ignored
        return getattr(self.base, name)

    def state(self, state: int, reason: str = "", message: str = "") -> bool:
        self.states.append((state, reason, message))
        return True

    def checkpoint(self, c, removed) -> None:
        self.checkpoints.append(c)


OPTIONS = {"min_snr_gamma": 5.0, "offset_noise": 0.1, "aspect_buckets": True,
           "checkpoint_every_steps": 1, "validation_scorer": DECREASING,
           "export_best_checkpoint": True}


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_all_options_resume_exactly_and_export_the_best_checkpoint(tmp_path, untrained_model,
                                                                    subject_pngs):
    """The exact-resume job of test_resume (prior, EMA, text encoder, zoom, ...) with min-SNR,
    offset noise, buckets over non-square pictures and scoring on: stopped at step 2 and
    resumed, it ends with the uninterrupted run's weights; the best scored checkpoint (the
    first: the scorer scores each call lower) is the exported model, remembered across the
    resume."""
    from safetensors.torch import load_file

    from boothstudio.services.trainer.train import run_job
    from tests.trainer.test_resume import _spec

    pictures = non_square(subject_pngs)
    steps = 4
    full_rec = Recorder()
    full = run_job(_spec(tmp_path, "full", untrained_model, pictures, steps, OPTIONS), full_rec)
    assert full.outcome == "succeeded" and full.step == steps
    first = run_job(_spec(tmp_path, "split", untrained_model, pictures, steps, OPTIONS,
                          stop_at_step=2), Recorder())
    assert first.outcome == "stopped" and first.step == 2
    rec = Recorder()
    second = run_job(_spec(tmp_path, "split", untrained_model, pictures, steps, OPTIONS), rec)
    assert second.outcome == "succeeded" and second.step == steps

    a = _weights(tmp_path / "full" / "checkpoints" / "step-000004.ckpt")
    b = _weights(tmp_path / "split" / "checkpoints" / "step-000004.ckpt")
    assert a.keys() == b.keys()
    base = _weights(tmp_path / "split" / "checkpoints" / "step-000003.ckpt")
    assert max(float((a[k] - base[k]).abs().max()) for k in a) > 1e-4
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed run differs by {worst}"

    # every scored checkpoint carries one score per validation prompt and their mean
    scored = [c for c in full_rec.checkpoints if c.kind == trainer_pb2.CHECKPOINT_KIND_EXPORT]
    assert [c.step for c in scored] == [1, 2, 3, 4]
    for c in scored:
        assert [s.prompt for s in c.validation_scores] == ["a zwx circle"]
        assert c.validation_score == pytest.approx(c.validation_scores[0].score)
    assert scored[0].validation_score > max(c.validation_score for c in scored[1:])

    # the resumed run scored steps 3 and 4 only, and still exported step 1 (scored before)
    resumed = {c.step: c for c in rec.checkpoints if c.kind == trainer_pb2.CHECKPOINT_KIND_EXPORT}
    assert sorted(resumed) == [3, 4] and all(c.HasField("validation_score")
                                             for c in resumed.values())
    exporting = [s for s in rec.states if s[0] == trainer_pb2.TRAINING_JOB_STATE_EXPORTING]
    assert exporting[0][1] == "BEST_CHECKPOINT" and "step-000001" in exporting[0][2]
    for job in ("full", "split"):
        best = load_file(tmp_path / job / "exports" / "step-000001.safetensors")
        last = load_file(tmp_path / job / "exports" / "step-000004.safetensors")
        out = tmp_path / job / "output" / "diffusers"
        unet = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
        text = load_file(out / "text_encoder" / "model.safetensors")
        for name, value in best.items():
            part, _, key = name.partition(".")
            exported = (unet if part == "unet" else text)
            key = key if key in exported else f"text_model.{key}"
            assert torch.equal(exported[key], value.float()), name
        assert any(not torch.equal(best[k], last[k]) for k in best)


def test_a_lora_job_exports_its_best_checkpoint(tmp_path, untrained_model, subject_pngs):
    from safetensors.torch import load_file

    from boothstudio.services.trainer.train import run_job
    from tests.trainer.test_resume import _spec

    options = {**OPTIONS, "method": trainer_pb2.TRAINING_METHOD_LORA,
               "identifier_learning_rate": 0.0, "ema_decay": 0.0}
    spec = _spec(tmp_path, "lora", untrained_model, non_square(subject_pngs), 2, options)
    result = run_job(spec, Recorder())
    assert result.outcome == "succeeded"
    best = load_file(tmp_path / "lora" / "exports" / "step-000001.safetensors")
    last = load_file(tmp_path / "lora" / "exports" / "step-000002.safetensors")
    out = load_file(result.outputs["lora"])
    assert out.keys() == best.keys()
    assert all(torch.equal(out[k], best[k]) for k in best)
    assert any(not torch.equal(best[k], last[k]) for k in best)
