"""A training job's files in a real S3 bucket (moto, through s3fs): a job runs or resumes on any
Trainer host because everything it needs is in the store, its local folder only a scratch copy.

- the base model is kept in the bucket too: each host pulls it into its model cache, and its
  vocabulary is read from there when the job is made;
- a job made on host A (inputs stored before its row), trained with checkpoint_every_steps and
  stopped: the bucket holds its inputs, committed checkpoints (object + .sha256 marker), exports
  and its class-image set;
- host B (an empty data dir) resumes it: inputs, class images and the newest committed
  checkpoint are pulled, a checkpoint upload cut short (an object without its marker) is never
  used, and the final weights equal an uninterrupted run's (exact resume); the final model is a
  committed folder in the bucket and is what the job names for registration; retention removed
  the old checkpoints from the bucket;
- an uploaded dataset is in the bucket before its rows, and a job on another host reads its
  pictures from there, hash-checked (DATA_LOSS on a changed object).

Rerun: `.venv/bin/pytest tests/stores/test_trainer_files.py -v`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from boothstudio.services.trainer.base_model import vocabulary
from boothstudio.services.trainer.job_files import committed_checkpoints, job_key
from boothstudio.shared.artifact_store import ArtifactCorrupt, ArtifactStore, open_artifact_store
from boothstudio.v1 import trainer_pb2

STEPS = 4


class RecordingReporter:
    """The train.Reporter interface, keeping the state messages and warnings."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.warnings: list[tuple[str, str]] = []

    def state(self, state: int, reason: str = "", message: str = "") -> bool:
        self.messages.append(message)
        return True

    def warning(self, reason: str, message: str, field: str = "") -> None:
        self.warnings.append((reason, message))

    def stop_requested(self) -> str:
        return ""

    def __getattr__(self, name: str) -> Any:  # metrics, samples, checkpoints: not asked here
        return lambda *args, **kwargs: None


def _config(pngs: list[bytes]) -> trainer_pb2.DreamBoothConfig:
    cfg = trainer_pb2.DreamBoothConfig(
        base_model_id="untrained", class_noun="circle", max_train_steps=STEPS, seed=5,
        learning_rate=1e-3, lr_scheduler="linear", train_text_encoder=True, random_flip=True,
        gradient_accumulation_steps=2, validation_prompts=["a {identifier} circle"],
        ema_decay=0.9, checkpoint_every_steps=1, checkpoints_to_keep=2)
    cfg.prior_preservation.enabled = True
    cfg.prior_preservation.class_image_count = 2
    cfg.prior_preservation.generation.steps = 2
    for i, data in enumerate(pngs[:3]):
        cfg.instance_images.add(data=data, filename=f"{i}.png", caption="")
    return cfg


def _new_job(job_id: str, jobs_dir: Path, model: str, pngs: list[bytes],
             store: ArtifactStore | None) -> Any:
    """The job's row and folder as CreateTrainingJob makes them (inputs into the store)."""
    from boothstudio.services.trainer.job_creation import new_job
    from boothstudio.services.trainer.options import Limits, resolve
    from boothstudio.services.trainer.uploads import write_job_dir

    base = {"id": "untrained", "source_path": model, "format": "diffusers",
            "native_resolution": 64}
    resolved = resolve(_config(pngs), base_model=base, limits=Limits())
    job = new_job(job_id, "", base, resolved, jobs_dir)
    write_job_dir(job, resolved.images, "", store)
    return job


def _spec(job: Any, host: Path, store: ArtifactStore | None, **kw: Any) -> Any:
    from boothstudio.services.diffusion.model_cache import ModelCache
    from boothstudio.services.trainer.train import JobSpec

    cache = ModelCache(store, host / "trainer" / "model_cache", 1 << 30) if store else None
    return JobSpec(job.id, host / "trainer" / "jobs" / job.id, job.config, job.base_model,
                   host / "trainer" / "class_images", host / "trainer" / "model_hashes.json",
                   sample_steps=2, store=store, model_cache=cache, **kw)


def _weights(ckpt: Path) -> dict[str, Any]:
    import torch

    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_job_moves_to_another_host_through_the_store(tmp_path, s3_bucket, untrained_model,
                                                     subject_pngs):
    import torch

    from boothstudio.services.trainer.train import Reporter, run_job

    torch.set_num_threads(1)
    host_a, host_b, alone = tmp_path / "a", tmp_path / "b", tmp_path / "alone"
    store_a = open_artifact_store(s3_bucket.url, host_a, s3_bucket.options)
    store_b = open_artifact_store(s3_bucket.url, host_b, s3_bucket.options)

    # an uninterrupted run, on a host of its own without a store
    whole = _new_job("whole", alone / "trainer" / "jobs", str(untrained_model), subject_pngs,
                     None)
    full = run_job(_spec(whole, alone, None), Reporter())
    assert full.outcome == "succeeded" and full.step == STEPS

    # the same base model, kept in the bucket (as the Catalog keeps one when scaled out)
    store_a.put_tree(untrained_model, "catalog/models/untrained")
    stored_model = store_a.url_of("catalog/models/untrained")
    base = {"format": "diffusers", "source_path": stored_model}
    assert vocabulary(base, store_a) is not None and vocabulary(base, None) is None
    job = _new_job("moved", host_a / "trainer" / "jobs", stored_model, subject_pngs, store_a)
    inputs = s3_bucket.keys(job_key(job.id))
    assert {"trainer/jobs/moved/instance/MANIFEST.json", "trainer/jobs/moved/config.yaml",
            "trainer/jobs/moved/instance/0.png"} <= set(inputs)

    first = run_job(_spec(job, host_a, store_a, stop_at_step=2), RecordingReporter())
    assert first.outcome == "stopped" and first.step == 2
    assert first.class_images_generated == 2
    keys = set(s3_bucket.keys("trainer"))
    for step in (1, 2):  # both uploaded and committed by the time run_job returned
        assert f"trainer/jobs/moved/checkpoints/step-00000{step}.ckpt" in keys
        assert f"trainer/jobs/moved/checkpoints/step-00000{step}.ckpt.sha256" in keys
        assert f"trainer/jobs/moved/exports/step-00000{step}.safetensors.sha256" in keys
    assert any(k.startswith("trainer/class_images/") and k.endswith("/MANIFEST.json")
               for k in keys)
    assert list(committed_checkpoints(store_a, job.id)) == ["step-000001.ckpt",
                                                            "step-000002.ckpt"]

    # host A died during the next checkpoint's upload: the object is there, its marker is not
    store_a.put_bytes(job_key(job.id, "checkpoints", "step-000003.ckpt"), b"half a checkpoint")
    assert list(committed_checkpoints(store_a, job.id))[-1] == "step-000002.ckpt"

    # host B has nothing of the job: inputs, class images and step 2 come from the bucket
    assert not host_b.exists()
    reporter = RecordingReporter()
    second = run_job(_spec(job, host_b, store_b), reporter)
    assert second.outcome == "succeeded" and second.step == STEPS
    assert "resuming from step-000002.ckpt" in reporter.messages
    assert second.class_images_cached == 2 and second.class_images_generated == 0
    assert not reporter.warnings
    assert [e.name for e in _spec(job, host_b, store_b).model_cache.entries()]  # pulled there

    a = _weights(alone / "trainer" / "jobs" / "whole" / "checkpoints" / "step-000004.ckpt")
    b = _weights(host_b / "trainer" / "jobs" / "moved" / "checkpoints" / "step-000004.ckpt")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"the run resumed on another host differs by {worst}"

    # the final model: a committed folder in the bucket, named for registration by its URL
    prefix = job_key(job.id, "output", "diffusers")
    assert second.outputs["diffusers"] == store_b.url_of(prefix)
    assert second.outputs["diffusers"].startswith("s3://")
    manifest = store_b.read_manifest(prefix)
    assert manifest is not None and "model_index.json" in manifest.files
    # retention (keep 2) in the bucket too; the torn step 3 was replaced by a committed one
    assert list(committed_checkpoints(store_b, job.id)) == ["step-000003.ckpt",
                                                            "step-000004.ckpt"]
    stored = [k for k in s3_bucket.keys(job_key(job.id, "checkpoints"))]
    assert not [k for k in stored if "step-000001" in k or "step-000002" in k]


def test_dataset_pictures_are_read_from_the_store_on_another_host(tmp_path, s3_bucket,
                                                                 subject_pngs):
    from boothstudio.services.trainer import uploads
    from boothstudio.services.trainer.options import Limits
    from boothstudio.services.trainer.store import JobStore

    rows = JobStore(tmp_path / "trainer.sqlite3")
    try:
        store = open_artifact_store(s3_bucket.url, tmp_path / "a", s3_bucket.options)
        files = [uploads.UploadedFile(f"{i}.png", f"caption {i}", bytearray(data))
                 for i, data in enumerate(subject_pngs[:2])]
        made = uploads.save(rows, tmp_path / "a" / "datasets", Limits(), "", "set", files,
                            store)
        keys = s3_bucket.keys(f"trainer/datasets/{made.dataset_id}")
        assert keys == [f"trainer/datasets/{made.dataset_id}/0.png",
                        f"trainer/datasets/{made.dataset_id}/1.png"]

        # another host: no local folder, the pictures come from the bucket
        got = uploads.dataset_images(rows, tmp_path / "b" / "datasets", made.dataset_id, store)
        assert [(data, name, caption) for data, name, caption in got] == [
            (subject_pngs[0], "0.png", "caption 0"), (subject_pngs[1], "1.png", "caption 1")]

        # an object changed behind the rows' backs is refused, not used
        store.put_bytes(f"trainer/datasets/{made.dataset_id}/1.png", subject_pngs[2])
        with pytest.raises(ArtifactCorrupt):
            uploads.dataset_images(rows, tmp_path / "b" / "datasets", made.dataset_id, store)
    finally:
        rows.close()


def test_a_job_from_another_replica_without_a_shared_store_fails_by_name(tmp_path):
    """Two replicas on one database but each on its own data dir (the default store): the one
    that claims the other's job cannot read its pictures, and says why."""
    from boothstudio.services.trainer.job_files import pull_inputs
    from boothstudio.shared.artifact_store import ArtifactMissing

    store = open_artifact_store("", tmp_path)  # the default store: this data dir
    job_dir = tmp_path / "trainer" / "jobs" / "elsewhere"
    with pytest.raises(ArtifactMissing) as info:
        pull_inputs(store, "elsewhere", job_dir)
    assert info.value.reason == "JOB_INPUTS_MISSING"
    assert "storage_url" in info.value.message
    (job_dir / "instance").mkdir(parents=True)  # created here: nothing to pull, no error
    assert pull_inputs(store, "elsewhere", job_dir) is False
