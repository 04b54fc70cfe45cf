"""Unit tests of the SDK's conversions (no server): requests built from plain Python values,
answers and stream events turned into dataclasses, training configs from kwargs and YAML.

Rerun: `.venv/bin/pytest tests/sdk/test_convert.py -q`
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from PIL import Image

from boothstudio.clients.sdk import _convert as cv
from boothstudio.clients.sdk import _ops as ops
from boothstudio.clients.sdk.errors import Cancelled, GenerationFailed, InvalidArgument, Unavailable
from boothstudio.clients.sdk.types import (
    Finished,
    GenerationStatus,
    ImageReady,
    MaskFill,
    ModelKind,
    Progress,
    Queued,
    Started,
    StateChanged,
    TrainingProgress,
    TrainingState,
)
from boothstudio.v1 import catalog_pb2, common_pb2, generator_pb2, trainer_pb2


def png_bytes(color: str = "red", size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- generate


def test_generate_request_unset_vs_zero_and_job_id() -> None:
    req = cv.generate_request("a cat", {})
    assert req.prompt == "a cat"
    assert not req.HasField("seed") and not req.HasField("steps") and not req.HasField("count")
    assert req.job_id.startswith("gen-")  # the SDK picks the job id so it can cancel early
    req = cv.generate_request("a cat", {"seed": 0, "steps": 12, "cfg_scale": 5, "count": 2})
    assert req.HasField("seed") and req.seed == 0
    assert (req.steps, req.cfg_scale, req.count) == (12, 5.0, 2)
    assert not cv.generate_request("x", {"seed": -1}).HasField("seed")  # -1 = random
    assert not cv.generate_request("x", {"seed": None}).HasField("seed")


def test_generate_request_images_and_options(tmp_path: Path) -> None:
    path = tmp_path / "init.png"
    path.write_bytes(png_bytes("blue"))
    pil = Image.new("L", (8, 8), 255)
    req = cv.generate_request(
        "p",
        {
            "init_image": path,
            "mask": pil,
            "strength": 0.5,
            "mask_fill": MaskFill.LATENT_NOISE,
            "invert_mask": True,
            "sampler_options": {"eta": 0.5, "order": 2, "karras": True, "mode": "x"},
            "backend_options": {"clip_skip": 2},
        },
    )
    assert req.init_image == path.read_bytes()
    assert Image.open(io.BytesIO(req.mask_image)).size == (8, 8)
    assert req.mask_fill == generator_pb2.MASK_FILL_LATENT_NOISE
    assert req.sampler_options["eta"].float_value == 0.5
    assert req.sampler_options["order"].int_value == 2
    assert req.sampler_options["karras"].bool_value is True
    assert req.sampler_options["mode"].string_value == "x"
    assert req.backend_options["clip_skip"].int_value == 2
    assert cv.generate_request("p", {"init_image": b"abc"}).init_image == b"abc"
    assert cv.generate_request("p", {"mask_fill": "latent-nothing"}).mask_fill == 4


def test_generate_request_bad_input_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as e:
        cv.generate_request("p", {"init_image": tmp_path / "missing.png"})
    assert e.value.fields == ["init_image"]
    with pytest.raises(InvalidArgument) as e:
        cv.generate_request("p", {"steps": "many"})
    assert e.value.fields == ["steps"]
    with pytest.raises(InvalidArgument) as e:
        cv.generate_request("p", {"mask_fill": "sideways"})
    assert e.value.fields == ["mask_fill"] and "latent_noise" in e.value.message
    with pytest.raises(TypeError, match="stepz"):
        cv.generate_request("p", {"stepz": 3})


def _resp(**kw: object) -> generator_pb2.GenerateResponse:
    return generator_pb2.GenerateResponse(job_id="j1", **kw)  # type: ignore[arg-type]


def test_generate_events_and_collector() -> None:
    png = png_bytes()
    msgs = [
        _resp(),  # keepalive
        _resp(queued=generator_pb2.GenerationQueued(position=1, queue_depth=2)),
        _resp(started=generator_pb2.GenerationStarted(seeds=[7, 8], steps=4, sampler="euler")),
        _resp(
            progress=generator_pb2.GenerationProgress(
                step=2, total_steps=4, eta_seconds=1.5, preview_png=png
            )
        ),
        _resp(
            image=generator_pb2.GeneratedImage(
                png=png,
                seed=8,
                index=1,
                image_id="b",
                finish_reason=generator_pb2.FINISH_REASON_STOP,
            )
        ),
        _resp(
            image=generator_pb2.GeneratedImage(
                png=png,
                seed=7,
                index=0,
                image_id="a",
                finish_reason=generator_pb2.FINISH_REASON_STOP,
            )
        ),
        _resp(warning=common_pb2.Warning(reason="PROMPT_TRUNCATED", message="m", field="prompt")),
        _resp(
            finished=generator_pb2.GenerationFinished(
                status=generator_pb2.GENERATION_STATUS_SUCCEEDED,
                image_count=2,
                image_ids=["a", "b"],
                total_seconds=3.0,
            )
        ),
    ]
    events = [cv.generate_event(m) for m in msgs]
    assert events[0] is None
    assert isinstance(events[1], Queued) and events[1].position == 1
    assert isinstance(events[2], Started) and events[2].seeds == [7, 8]
    prog = events[3]
    assert isinstance(prog, Progress) and (prog.step, prog.total, prog.eta) == (2, 4, 1.5)
    assert prog.fraction == 0.5 and prog.preview_image is not None
    assert isinstance(events[4], ImageReady) and events[4].image.ok
    assert isinstance(events[7], Finished) and events[7].status is GenerationStatus.SUCCEEDED
    collector = cv.GenerationCollector()
    for ev in events:
        if ev is not None:
            collector.add(ev)
    result = collector.result()
    assert isinstance(result, list) and [i.index for i in result] == [0, 1]
    assert result.seeds == [7, 8] and result.image_ids == ["a", "b"] and result.job_id == "j1"
    assert result[0].image.size == (8, 8)
    assert result.warnings[0].reason == "PROMPT_TRUNCATED"


def test_collector_failure_cancel_and_truncated_stream() -> None:
    def finished(status: int, reason: str = "") -> Finished:
        ev = cv.generate_event(
            _resp(
                finished=generator_pb2.GenerationFinished(
                    status=status, error_reason=reason, error_message="boom"
                )
            )
        )
        assert isinstance(ev, Finished)
        return ev

    c = cv.GenerationCollector()
    c.add(finished(generator_pb2.GENERATION_STATUS_FAILED, "OUT_OF_MEMORY"))
    with pytest.raises(GenerationFailed) as e:
        c.result()
    assert e.value.reason == "OUT_OF_MEMORY" and e.value.job_id == "j1"
    c = cv.GenerationCollector()
    c.add(finished(generator_pb2.GENERATION_STATUS_CANCELLED, "CANCELLED_BY_USER"))
    with pytest.raises(Cancelled):
        c.result()
    with pytest.raises(Unavailable):
        cv.GenerationCollector().result()


# ---------------------------------------------------------------------------- catalog


def test_model_sampler_backend_conversion() -> None:
    ts = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    m = catalog_pb2.Model(
        id="ft-1",
        kind=catalog_pb2.MODEL_KIND_FINE_TUNED,
        origin=catalog_pb2.ModelOrigin(base_model_id="tiny-sd"),
        create_time=ts,
        format=catalog_pb2.MODEL_FORMAT_DIFFUSERS,
    )
    model = cv.model_from_pb(m)
    assert model.kind is ModelKind.FINE_TUNED and model.base_model_id == "tiny-sd"
    assert model.created_at is not None and model.created_at.year == 2023
    assert model.raw is m
    assert cv.model_from_pb(catalog_pb2.Model(id="x")).created_at is None

    resp = catalog_pb2.ListSamplersResponse(
        samplers=[
            catalog_pb2.Sampler(
                id="dpmpp_2m",
                label="DPM++ 2M",
                aliases=["DPM++ 2M Karras"],
                parameters=[
                    catalog_pb2.Parameter(
                        name="eta",
                        type=catalog_pb2.PARAMETER_TYPE_FLOAT,
                        default_value=common_pb2.OptionValue(float_value=0.0),
                        min_value=0.0,
                    )
                ],
            )
        ],
        default_sampler="dpmpp_2m",
    )
    samplers = cv.samplers_from_pb(resp)
    s = samplers.get("dpm++ 2m karras")
    assert s is not None and s.id == "dpmpp_2m"
    p = s.parameters[0]
    assert (p.name, p.type.value, p.default, p.min, p.max) == ("eta", "float", 0.0, 0.0, None)

    backends = cv.backends_from_pb(
        catalog_pb2.ListBackendsResponse(
            backends=[
                catalog_pb2.Backend(
                    id="diffusers",
                    reachable=True,
                    capabilities=catalog_pb2.BackendCapabilities(inpaint=True),
                ),
                catalog_pb2.Backend(id="a1111"),
            ],
            default_backend_id="diffusers",
        )
    )
    assert [b.is_default for b in backends] == [True, False]
    assert backends[0].capabilities.inpaint


def test_import_model_request_detects_source(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    req = cv.import_model_request(folder, kind="lora", model_id="x")
    assert req.WhichOneof("source") == "diffusers_path" and req.diffusers_path == str(folder)
    assert req.kind == catalog_pb2.MODEL_KIND_LORA
    assert cv.import_model_request("w.safetensors").WhichOneof("source") == "single_file_path"
    assert cv.import_model_request("org/name").hf_cache_id == "org/name"
    with pytest.raises(InvalidArgument) as e:
        cv.import_model_request("x", kind="huge")
    assert e.value.fields == ["kind"]


def test_ops_carry_idempotency_and_fanout() -> None:
    assert ops.list_models().idempotent and ops.get_model("m").idempotent
    assert not ops.import_model("org/name").idempotent
    assert not ops.delete_model("m").idempotent
    assert ops.cancel_generation("j").fanout == "all"
    assert ops.get_image("i").fanout == "first_found"
    assert ops.list_models(kind="base").request.kind == catalog_pb2.MODEL_KIND_BASE
    states = ops.list_training_jobs(states=["running", TrainingState.FAILED]).request.states
    assert list(states) == [
        trainer_pb2.TRAINING_JOB_STATE_RUNNING,
        trainer_pb2.TRAINING_JOB_STATE_FAILED,
    ]
    with pytest.raises(InvalidArgument):
        ops.delete_images()


# ---------------------------------------------------------------------------- gallery


def test_gallery_image_params_reuse() -> None:
    g = generator_pb2.GalleryImage(
        image_id="i1",
        seed=42,
        model_id="tiny-sd",
        sampler="euler",
        steps=20,
        cfg_scale=7.0,
        width=64,
        height=64,
        request=generator_pb2.GenerateRequest(
            prompt="a red circle",
            negative_prompt="blur",
            sampler_options={"eta": common_pb2.OptionValue(float_value=0.3)},
        ),
    )
    img = cv.gallery_image_from_pb(g)
    assert img.prompt == "a red circle" and img.png is None
    assert img.params == {
        "negative_prompt": "blur",
        "model_id": "tiny-sd",
        "sampler": "euler",
        "steps": 20,
        "cfg_scale": 7.0,
        "width": 64,
        "height": 64,
        "seed": 42,
        "sampler_options": {"eta": pytest.approx(0.3)},
    }
    req = cv.generate_request(img.prompt, img.params)  # round-trips into a request
    assert req.seed == 42 and req.sampler == "euler"
    with pytest.raises(ValueError):
        img.save("/nonexistent/x.png")


def test_combine_deletes() -> None:
    a = cv.delete_images_result(
        generator_pb2.DeleteImagesResponse(deleted_count=1, not_found_ids=["x", "y"])
    )
    b = cv.delete_images_result(
        generator_pb2.DeleteImagesResponse(deleted_count=1, not_found_ids=["y"])
    )
    assert cv.combine_deletes([a, b]).not_found_ids == ["y"]
    assert cv.combine_deletes([a, b]).deleted_count == 2


# ---------------------------------------------------------------------------- training


def test_dreambooth_config_from_friendly_values() -> None:
    msg = cv.dreambooth_config(
        {
            "base_model_id": "tiny-sd",
            "class_noun": "dog",
            "max_train_steps": 0,
            "method": "lora",
            "precision": "bf16-mixed",
            "strategy": "DDP",
            "prior_preservation": True,
            "lora": {"rank": 8},
            "validation_seeds": [1, 2],
            "learning_rate": 1,
        }
    )
    assert msg.HasField("max_train_steps") and msg.max_train_steps == 0  # explicit value kept
    assert msg.method == trainer_pb2.TRAINING_METHOD_LORA
    assert msg.precision == trainer_pb2.PRECISION_BF16_MIXED
    assert msg.strategy == trainer_pb2.STRATEGY_DDP
    assert msg.prior_preservation.enabled and msg.lora.rank == 8
    assert list(msg.validation_seeds) == [1, 2] and msg.learning_rate == 1.0
    assert not cv.dreambooth_config({}).HasField("max_train_steps")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_train_step": 5}, "config.max_train_step"),
        ({"method": "dreamy"}, "config.method"),
        ({"lora": {"rnk": 2}}, "config.lora.rnk"),
        ({"max_train_steps": "lots"}, "config.max_train_steps"),
        ({"validation_prompts": "one"}, "config.validation_prompts"),
    ],
)
def test_dreambooth_config_errors_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        cv.dreambooth_config(options)
    assert e.value.fields == [field]
    if field == "config.max_train_step":
        assert "did you mean 'max_train_steps'" in e.value.message


def test_training_yaml(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    yml = tmp_path / "job.yaml"
    yml.write_text(
        "display_name: my dog\nimages: photos\nconfig:\n  class_noun: dog\n"
        "  max_train_steps: 10\nmethod: lora\n"
    )
    spec = cv.load_training_yaml(yml)
    assert spec.images == tmp_path / "photos" and spec.display_name == "my dog"
    assert spec.options == {"class_noun": "dog", "max_train_steps": 10, "method": "lora"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n")
    with pytest.raises(InvalidArgument) as e:
        cv.load_training_yaml(bad)
    assert e.value.fields == ["config_file"]
    with pytest.raises(InvalidArgument):
        cv.load_training_yaml(tmp_path / "missing.yaml")


def test_image_files_and_chunked_upload(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as e:
        cv.image_files(tmp_path)
    assert e.value.fields == ["images"]
    big = bytes(range(256)) * 40  # 10240 bytes
    (tmp_path / "a.png").write_bytes(big)
    (tmp_path / "a.txt").write_text("a zwx dog on grass\n")
    (tmp_path / "b.jpg").write_bytes(b"xyz")
    (tmp_path / "notes.md").write_text("ignored")
    files = cv.image_files(tmp_path)
    assert [f.name for f in files] == ["a.png", "b.jpg"]
    reqs = list(cv.upload_requests(files, name="dogs", chunk_size=4096))
    assert reqs[0].metadata.name == "dogs"
    chunks = [r.chunk for r in reqs[1:]]
    a = [c for c in chunks if c.filename == "a.png"]
    assert len(a) == 3 and b"".join(c.data for c in a) == big
    assert a[0].caption == "a zwx dog on grass" and a[1].caption == ""
    assert [c.data for c in chunks if c.filename == "b.jpg"] == [b"xyz"]
    with pytest.raises(InvalidArgument):
        cv.image_files([tmp_path / "missing.png"])


def test_training_job_and_events() -> None:
    job = cv.training_job_from_pb(
        trainer_pb2.TrainingJob(
            job_id="t1",
            state=trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED,
            output_model_id="ft-1",
            config=trainer_pb2.DreamBoothConfig(class_noun="dog", max_train_steps=5),
            last_metrics=trainer_pb2.TrainingMetrics(step=5, total_steps=5, loss=0.1),
        )
    )
    assert job.done and job.output_model_id == "ft-1"
    assert job.config["class_noun"] == "dog" and job.config["max_train_steps"] == 5
    assert job.last_metrics is not None and job.last_metrics.prior_loss is None
    ev = cv.training_event(
        trainer_pb2.WatchTrainingJobResponse(
            job_id="t1",
            sequence=3,
            state_changed=trainer_pb2.TrainingStateChanged(
                previous_state=trainer_pb2.TRAINING_JOB_STATE_RUNNING,
                state=trainer_pb2.TRAINING_JOB_STATE_FAILED,
                reason="OUT_OF_MEMORY",
            ),
        )
    )
    assert isinstance(ev, StateChanged) and ev.state.terminal and ev.reason == "OUT_OF_MEMORY"
    ev2 = cv.training_event(
        trainer_pb2.WatchTrainingJobResponse(
            job_id="t1",
            sequence=4,
            metrics=trainer_pb2.TrainingMetrics(step=2, loss=0.5, prior_loss=0.25),
        )
    )
    assert isinstance(ev2, TrainingProgress) and ev2.metrics.prior_loss == 0.25
    assert cv.training_event(trainer_pb2.WatchTrainingJobResponse(job_id="t1")) is None


def test_parse_option() -> None:
    assert cv.parse_option("true") is True
    assert cv.parse_option("3") == 3 and isinstance(cv.parse_option("3"), int)
    assert cv.parse_option("0.5") == 0.5
    assert cv.parse_option("karras") == "karras"
