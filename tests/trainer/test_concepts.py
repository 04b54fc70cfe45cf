"""Several concepts in one job: resolution and refusals by field, batches that mix concepts,
per-concept prior settings, and exact resume of a two-concept job (in process, on the tiny
untrained model). The two-subject job through the real services: test_concepts_service.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from boothstudio.shared.errors import InvalidArgument
from boothstudio.v1 import trainer_pb2


def _limits():
    from boothstudio.services.trainer.options import Limits

    return Limits()


def _two_concepts(pngs: list[bytes], **kw: object) -> trainer_pb2.DreamBoothConfig:
    cfg = trainer_pb2.DreamBoothConfig(base_model_id="m", max_train_steps=4, seed=3,
                                       **kw)  # type: ignore[arg-type]
    circle = cfg.concepts.add(identifier="zwx", class_noun="circle",
                              validation_prompts=["a {identifier} {class_noun} on grass"])
    circle.instance_images.add(data=pngs[0], filename="0.png",
                               caption="a {identifier} circle on a gray background")
    circle.instance_images.add(data=pngs[1], filename="1.png")
    square = cfg.concepts.add(class_noun="square", repeats=2)
    square.instance_images.add(data=pngs[2], filename="0.png")
    return cfg


def _resolve(cfg: trainer_pb2.DreamBoothConfig, **kw: object):
    from boothstudio.services.trainer.concepts import resolve_job

    return resolve_job(cfg, base_model={"native_resolution": 64}, limits=_limits(), **kw)  # type: ignore[arg-type]


def _fields(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.description for v in exc.value.violations}


def test_two_concepts_resolve_each_as_a_subject_of_its_own(subject_pngs):
    cfg = _two_concepts(subject_pngs, validation_prompts=["a circle"])
    cfg.prior_preservation.enabled = True
    cfg.prior_preservation.class_image_count = 6
    cfg.prior_preservation.class_prompts.append("a {class_noun} on a white background")
    own = cfg.concepts[1].prior_preservation
    own.enabled, own.class_image_count, own.loss_weight = True, 4, 0.5
    r = _resolve(cfg)
    c = r.config
    a, b = c.concepts
    assert (a.identifier, a.instance_prompt, a.class_prompt) == ("zwx", "a zwx circle",
                                                                 "a circle")
    assert b.identifier not in ("", "zwx") and b.instance_prompt == f"a {b.identifier} square"
    assert ("IDENTIFIER_CHOSEN", f"identifier {b.identifier!r} chosen (a single rare token)",
            "config.concepts[1].identifier") in r.warnings
    # the job's prior is the default of a concept without its own, filled in for it
    assert a.prior_preservation.class_image_count == 6
    assert list(a.prior_preservation.class_prompts) == ["a circle on a white background"]
    assert (b.prior_preservation.class_image_count, b.prior_preservation.loss_weight) == (4, 0.5)
    assert list(b.prior_preservation.class_prompts) == []
    # pictures stored per concept (both had a 0.png), captions kept, no bytes
    assert [n for _, n, _ in r.images] == ["c0-0.png", "c0-1.png", "c1-0.png"]
    assert [(i.filename, i.caption, i.data) for i in a.instance_images] == [
        ("c0-0.png", "a {identifier} circle on a gray background", b""), ("c0-1.png", "", b"")]
    assert (a.repeats, b.repeats) == (1, 2)
    # every prompt at the job level: the concepts' own (or their instance prompt), then the job's
    assert list(c.validation_prompts) == ["a zwx circle on grass", b.instance_prompt,
                                          "a circle"]
    assert r.trigger_phrase == f"a zwx circle, {b.instance_prompt}"
    assert not c.identifier and not c.class_noun and not c.instance_images


def test_a_one_subject_job_resolves_as_before(subject_pngs):
    from boothstudio.services.trainer.options import resolve

    cfg = trainer_pb2.DreamBoothConfig(base_model_id="m", class_noun="dog", seed=1)
    cfg.instance_images.add(data=subject_pngs[0], filename="0.png")
    old = resolve(cfg, base_model={"native_resolution": 64}, limits=_limits())
    new = _resolve(cfg)
    assert new.config == old.config and new.trigger_phrase == old.trigger_phrase == "a zwx dog"


@pytest.mark.parametrize(("change", "field"), [
    (lambda c: setattr(c.concepts[1], "identifier", "ZWX"), "config.concepts[1].identifier"),
    (lambda c: c.concepts[1].ClearField("instance_images"),
     "config.concepts[1].instance_images"),
    (lambda c: setattr(c.concepts[0].instance_images[1], "data", b"not a picture"),
     "config.concepts[0].instance_images[1].data"),
    (lambda c: setattr(c.concepts[1], "class_noun", ""), "config.concepts[1].class_noun"),
    (lambda c: setattr(c.concepts[0], "instance_prompt", "a {subject}"),
     "config.concepts[0].instance_prompt"),
    (lambda c: setattr(c.concepts[1], "repeats", 5000), "config.concepts[1].repeats"),
    (lambda c: setattr(c.concepts[1].prior_preservation, "class_image_count", -1),
     "config.concepts[1].prior_preservation.class_image_count"),
    (lambda c: setattr(c, "class_noun", "dog"), "config.class_noun"),
    (lambda c: c.validation_prompts.append("a {identifier} thing"),
     "config.validation_prompts[0]"),
    (lambda c: setattr(c, "max_train_steps", 0), "config.max_train_steps"),
])
def test_bad_concepts_are_refused_by_field(subject_pngs, change, field):
    cfg = _two_concepts(subject_pngs)
    change(cfg)
    with pytest.raises(InvalidArgument) as exc:
        _resolve(cfg)
    fields = _fields(exc)
    assert field in fields, fields
    assert len([f for f in fields if f == field]) == 1  # a job-level problem is told once


def test_concept_totals_are_bounded(subject_pngs):
    from boothstudio.services.trainer.concepts import MAX_CONCEPTS, resolve_job
    from boothstudio.services.trainer.options import Limits

    cfg = _two_concepts(subject_pngs)
    with pytest.raises(InvalidArgument) as exc:
        resolve_job(cfg, base_model={}, limits=Limits(max_instance_images=2))
    assert "config.concepts" in _fields(exc)
    many = trainer_pb2.DreamBoothConfig(base_model_id="m")
    for _ in range(MAX_CONCEPTS + 1):
        many.concepts.add(class_noun="dog").instance_images.add(data=subject_pngs[0])
    with pytest.raises(InvalidArgument) as exc:
        _resolve(many)
    assert _fields(exc)["config.concepts"] == f"at most {MAX_CONCEPTS} concepts"


# ------------------------------------------------------------------ batches mixing concepts


def _mixed(pictures: list[int], repeats: list[int], *, batch_size: int = 2,
           class_counts: tuple[int, ...] = (2, 2), weights: tuple[float, ...] = (1.0, 0.5),
           seed: int = 5):
    """Solid-colour pictures whose red value tells (concept, index); class images likewise
    (green value)."""
    from boothstudio.services.trainer.module import ConceptMix, DataSpec, StepBatches

    inst, inst_concept, classes, class_concept = [], [], [], []
    for k, n in enumerate(pictures):
        for i in range(n):
            inst.append(torch.full((3, 8, 8), (10 * k + i) / 100))
            inst_concept.append(k)
    for k, n in enumerate(class_counts):
        for i in range(n):
            classes.append(torch.full((3, 8, 8), -(10 * k + i) / 100))
            class_concept.append(k)
    ids = torch.arange(len(inst))[:, None].repeat(1, 4)
    cids = 100 + torch.arange(len(classes))[:, None].repeat(1, 4)
    mix = ConceptMix(inst_concept, class_concept, repeats, list(weights))
    return StepBatches(DataSpec(seed, batch_size, 8, True, False), inst, ids, classes, cids,
                       total=64, mix=mix)


def _who(batch: dict) -> tuple[list[int], list[int]]:
    """(instance picture codes, class image codes) of a micro-batch."""
    n = batch["n_instance"]
    codes = [round(float(p[0, 0, 0]) * 100) for p in batch["pixels"]]
    return codes[:n], [-c for c in codes[n:]]


def test_batches_mix_concepts_evenly_and_deterministically():
    data = _mixed([3, 1], [1, 3])  # 3 pictures x 1 == 1 picture x 3: equal shares
    batches = [data[i] for i in range(12)]
    for b in batches:
        inst, cls = _who(b)
        assert sorted(c // 10 for c in inst) == [0, 1]  # one of each concept in every batch
        # each slot brings a class image of its own concept, weighed by that concept's weight
        assert [c // 10 for c in cls] == [c // 10 for c in inst]
        assert b["concepts"].tolist() == [c // 10 for c in inst]
        assert b["prior_weights"].tolist() == [1.0 if c < 10 else 0.5 for c in inst]
    # within a concept, an epoch order: concept 0's three pictures each once per 3 batches
    firsts = [c for b in batches for c in _who(b)[0] if c < 10]
    for k in range(0, 12, 3):
        assert sorted(firsts[k:k + 3]) == [0, 1, 2]
    # a pure function of (seed, index): the same again, another seed another order
    again = _mixed([3, 1], [1, 3])
    assert all(torch.equal(again[i]["pixels"], batches[i]["pixels"]) for i in range(12))
    other = _mixed([3, 1], [1, 3], seed=6)
    assert any(not torch.equal(other[i]["pixels"], batches[i]["pixels"]) for i in range(12))


def test_repeats_weigh_a_concept_and_a_concept_without_prior_brings_no_class_image():
    data = _mixed([2, 2], [3, 1], batch_size=1, class_counts=(0, 3))
    shown = [_who(data[i]) for i in range(16)]
    concept = [inst[0] // 10 for inst, _ in shown]
    assert concept.count(0) == 12 and concept.count(1) == 4  # 2 x 3 against 2 x 1
    assert all(cls == [] for (inst, cls) in shown if inst[0] < 10)
    assert all(len(cls) == 1 and cls[0] // 10 == 1 for (inst, cls) in shown if inst[0] >= 10)


def test_one_concept_batches_are_the_one_subject_batches():
    """A one-subject job's batches did not change with concepts (old jobs resume exactly)."""
    from boothstudio.services.trainer.module import ConceptMix, DataSpec, StepBatches

    inst = [torch.full((3, 8, 8), i / 10) for i in range(3)]
    classes = [torch.full((3, 8, 8), -i / 10) for i in range(4)]
    ids, cids = torch.zeros(3, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.long)
    spec = DataSpec(9, 2, 8, False, True, 0.3, 0.6)
    plain = StepBatches(spec, inst, ids, classes, cids, total=20)
    one = StepBatches(spec, inst, ids, classes, cids, total=20,
                      mix=ConceptMix([0, 0, 0], [0] * 4, [1], [1.0]))
    for i in range(20):
        assert torch.equal(plain[i]["pixels"], one[i]["pixels"])
        assert torch.equal(plain[i]["input_ids"], one[i]["input_ids"])


def test_each_class_image_weighs_its_concepts_prior_weight():
    from boothstudio.services.trainer.module import weighted_mse

    pred, target = torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2)
    target[3] *= 2
    # what compute_loss adds for two class images of weights 1 and 0.5
    assert float(weighted_mse(pred[2:], target[2:], torch.tensor([1.0, 0.5]))) == \
        pytest.approx((1 * 1 + 0.5 * 4) / 2)


# ------------------------------------------------------------------ a two-concept job resumes


def _concept_job(tmp: Path, name: str, model: Path, pngs: list[bytes], steps: int, **kw):
    from boothstudio.services.trainer.train import JobSpec

    cfg = _two_concepts(pngs, learning_rate=1e-3, train_text_encoder=True, random_flip=True,
                        batch_size=2, caption_dropout=0.25, identifier_learning_rate=1e-2,
                        ema_decay=0.9)
    cfg.max_train_steps = steps
    cfg.concepts[0].prior_preservation.enabled = True
    cfg.concepts[0].prior_preservation.class_image_count = 2
    cfg.concepts[0].prior_preservation.generation.steps = 2
    own = cfg.concepts[1].prior_preservation
    own.enabled, own.class_image_count, own.loss_weight = True, 1, 0.5
    own.generation.steps = 2
    resolved = _resolve(cfg)
    folder = tmp / name / "instance"
    folder.mkdir(parents=True, exist_ok=True)
    for data, stored, _ in resolved.images:
        (folder / stored).write_bytes(data)
    (folder / "captions.json").write_text(json.dumps({n: c for _, n, c in resolved.images if c}))
    return JobSpec(name, tmp / name, resolved.config,
                   {"id": "untrained", "source_path": str(model), "format": "diffusers"},
                   tmp / "class_cache", tmp / "memo.json", sample_steps=2, **kw)


def test_a_two_concept_job_resumes_exactly(tmp_path, untrained_model, subject_pngs):
    from boothstudio.services.trainer.train import Reporter, run_job

    class Samples(Reporter):
        def __init__(self) -> None:
            self.got: list[trainer_pb2.TrainingSample] = []

        def sample(self, s: trainer_pb2.TrainingSample) -> None:
            self.got.append(s)

    steps = 4
    samples = Samples()
    spec = _concept_job(tmp_path, "full", untrained_model, subject_pngs, steps)
    full = run_job(spec, samples)
    assert full.outcome == "succeeded" and full.step == steps
    # each concept's class images, from its own prompt and count: 2 + 1
    assert full.class_images_generated == 3
    # the samples say which concept their prompt shows
    idents = [c.identifier for c in spec.config.concepts]
    shown = {s.prompt: list(s.concept_identifiers) for s in samples.got}
    assert shown == {"a zwx circle on grass": ["zwx"], f"a {idents[1]} square": [idents[1]]}

    first = run_job(_concept_job(tmp_path, "split", untrained_model, subject_pngs, steps,
                                 stop_at_step=2), Reporter())
    assert first.outcome == "stopped" and first.step == 2 and first.class_images_cached == 3
    second = run_job(_concept_job(tmp_path, "split", untrained_model, subject_pngs, steps),
                     Reporter())
    assert second.outcome == "succeeded" and second.step == steps

    def weights(name: str) -> dict[str, torch.Tensor]:
        ckpt = tmp_path / name / "checkpoints" / f"step-{steps:06d}.ckpt"
        return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]

    a, b = weights("full"), weights("split")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed run differs by {worst}"
    # identifier_learning_rate trains both identifiers' embedding rows and no other row
    from transformers import CLIPTextModel, CLIPTokenizer

    table = next(v for k, v in a.items() if k.endswith("token_embedding.weight"))
    base = CLIPTextModel.from_pretrained(str(untrained_model / "text_encoder"))
    moved = (table - base.get_input_embeddings().weight.detach()).abs().sum(dim=1)
    tok = CLIPTokenizer.from_pretrained(str(untrained_model / "tokenizer"))
    rows = {t for i in idents for t in tok(i, add_special_tokens=False).input_ids}
    assert {int(r) for r in moved.nonzero().flatten()} == rows
