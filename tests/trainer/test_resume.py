"""Exact resume: stop at step k, resume to N == an uninterrupted run to N (same seed)."""

from __future__ import annotations

from pathlib import Path

import torch

from boothstudio.v1 import trainer_pb2


def _spec(tmp: Path, name: str, model: Path, pngs: list[bytes], steps: int,
          config: dict | None = None, **kw):
    from boothstudio.services.trainer.options import Limits, resolve
    from boothstudio.services.trainer.train import JobSpec

    job_dir = tmp / name
    (job_dir / "instance").mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(pngs[:3]):
        (job_dir / "instance" / f"{i}.png").write_bytes(data)
    cfg = trainer_pb2.DreamBoothConfig(
        base_model_id="untrained", class_noun="circle", max_train_steps=steps, seed=3,
        learning_rate=1e-3, lr_scheduler="linear", train_text_encoder=True, random_flip=True,
        gradient_accumulation_steps=2, validation_prompts=["a {identifier} circle"],
        ema_decay=0.9, caption_dropout=0.25, identifier_learning_rate=1e-2,
        random_crop_scale=0.6)
    for key, value in (config or {}).items():
        setattr(cfg, key, value)
    cfg.prior_preservation.enabled = True
    cfg.prior_preservation.class_image_count = 2
    cfg.prior_preservation.generation.steps = 2
    cfg.instance_images.add(data=pngs[0], filename="0.png")
    resolved = resolve(cfg, base_model={"native_resolution": 64}, limits=Limits()).config
    return JobSpec(name, job_dir, resolved, {"id": "untrained", "source_path": str(model),
                                            "format": "diffusers"},
                   tmp / "class_cache", tmp / "memo.json", sample_steps=2, **kw)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_stop_and_resume_gives_the_same_weights(tmp_path, untrained_model, subject_cutouts):
    """With every data option on, masked training (RGBA instance pictures) included."""
    from boothstudio.services.trainer.train import Reporter, run_job

    steps = 4
    masked = {"masked_loss_background_weight": 0.1}
    full = run_job(_spec(tmp_path, "full", untrained_model, subject_cutouts, steps, masked),
                   Reporter())
    assert full.outcome == "succeeded" and full.step == steps

    first = run_job(_spec(tmp_path, "split", untrained_model, subject_cutouts, steps, masked,
                          stop_at_step=2), Reporter())
    assert first.outcome == "stopped" and first.step == 2
    assert first.class_images_cached == 2  # the first run generated them
    assert (tmp_path / "split" / "checkpoints" / "step-000002.ckpt").exists()
    second = run_job(_spec(tmp_path, "split", untrained_model, subject_cutouts, steps, masked),
                     Reporter())
    assert second.outcome == "succeeded" and second.step == steps

    a = _weights(tmp_path / "full" / "checkpoints" / "step-000004.ckpt")
    b = _weights(tmp_path / "split" / "checkpoints" / "step-000004.ckpt")
    assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
    base = _weights(tmp_path / "split" / "checkpoints" / "step-000002.ckpt")
    moved = max(float((a[k] - base[k]).abs().max()) for k in a)
    assert moved > 1e-4  # training did change the weights after step 2
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed run differs by {worst}"

    # the EMA of the weights is part of the state: resumed, and the exports are made from it
    from safetensors.torch import load_file

    ex_a = load_file(tmp_path / "full" / "exports" / "step-000004.safetensors")
    ex_b = load_file(tmp_path / "split" / "exports" / "step-000004.safetensors")
    assert max(float((ex_a[k].float() - ex_b[k].float()).abs().max()) for k in ex_a) <= 1e-3
    raw = {k: v.half() for k, v in a.items()}
    assert any(not torch.equal(ex_a[k], raw[k]) for k in ex_a)  # the average, not the weights
    ema = torch.load(tmp_path / "split" / "checkpoints" / "step-000004.ckpt",
                     map_location="cpu", weights_only=False)["boothstudio_ema"]
    assert ema.keys() == a.keys()


def test_identifier_learning_rate_trains_only_the_identifier_row(tmp_path, untrained_model,
                                                                 subject_pngs):
    """With the text encoder frozen, identifier_learning_rate changes the identifier's row of
    the embedding table and nothing else in the text encoder; the export carries it."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    from boothstudio.services.trainer.train import Reporter, run_job

    spec = _spec(tmp_path, "ident", untrained_model, subject_pngs, 2,
                 config={"train_text_encoder": False, "ema_decay": 0.0})
    assert run_job(spec, Reporter()).outcome == "succeeded"
    base = CLIPTextModel.from_pretrained(untrained_model / "text_encoder").state_dict()
    export = load_file(tmp_path / "ident" / "exports" / "step-000002.safetensors")
    trained = {k[len("text_encoder."):]: v.float() for k, v in export.items()
               if k.startswith("text_encoder.")}
    name = next(k for k in base if k.endswith("token_embedding.weight"))
    ids = CLIPTokenizer.from_pretrained(untrained_model / "tokenizer")(
        spec.config.identifier, add_special_tokens=False).input_ids
    changed = (trained[name] - base[name].float()).abs().amax(dim=1) > 1e-3
    assert changed.nonzero().flatten().tolist() == sorted(ids)
    others = [k for k in trained if k != name]
    assert others and all(torch.allclose(trained[k], base[k].float(), atol=1e-3) for k in others)
