"""Job configuration as YAML: what the trainer writes beside each job, and what a job can be
created from (no torch).

    base_model_id: boothstudio-tiny
    class_noun: circle
    identifier: zwx
    max_train_steps: 400
    prior_preservation: {enabled: true, class_image_count: 100}
    instance_images: [instance/0.png, instance/1.png]    # paths relative to the YAML file
    display_name: my circle                               # optional, not part of the config

Keys are the DreamBoothConfig field names (protobuf JSON names also work); enums take their
names ("PRECISION_BF16_MIXED") or short forms ("bf16_mixed", "ddp", "lora").

    python -m boothstudio.services.trainer.jobfile submit job.yaml --address 127.0.0.1:50053
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from boothstudio.v1 import trainer_pb2

ENUM_PREFIX = {"precision": "PRECISION_", "method": "TRAINING_METHOD_", "strategy": "STRATEGY_"}
NON_CONFIG = ("display_name", "job_id", "instance_images")


class JobFileError(ValueError):
    """The YAML does not describe a valid job (message names the key)."""


def config_to_dict(config: trainer_pb2.DreamBoothConfig,
                   image_paths: list[str] | None = None) -> dict[str, Any]:
    d = json_format.MessageToDict(config, preserving_proto_field_name=True)
    d.pop("instance_images", None)
    if image_paths is not None:
        d["instance_images"] = image_paths
    return d


def _as_template(text: str) -> str:
    """A filled-in prompt written back as the template that fills in to it again."""
    return text.replace("{", "{{").replace("}", "}}")


def config_to_yaml(config: trainer_pb2.DreamBoothConfig, image_paths: list[str],
                   display_name: str = "") -> str:
    """The YAML a job can be created from again. A resolved config holds its prompts filled
    in; they are written as templates (literal braces doubled) so that creating a job from the
    file gives the same prompts."""
    d = config_to_dict(config, image_paths)
    for key in ("instance_prompt", "class_prompt"):
        if key in d:
            d[key] = _as_template(d[key])
    if "validation_prompts" in d:
        d["validation_prompts"] = [_as_template(t) for t in d["validation_prompts"]]
    prior = d.get("prior_preservation", {})
    if "class_prompts" in prior:
        prior["class_prompts"] = [_as_template(t) for t in prior["class_prompts"]]
    if display_name:
        d = {"display_name": display_name, **d}
    return yaml.safe_dump(d, sort_keys=False)


def _enums(d: dict[str, Any]) -> None:
    for key, prefix in ENUM_PREFIX.items():
        v = d.get(key)
        if isinstance(v, str) and not v.upper().startswith(prefix):
            d[key] = prefix + v.upper()


def request_from_yaml(path: Path) -> trainer_pb2.CreateTrainingJobRequest:
    """A CreateTrainingJobRequest from a job YAML; image paths are relative to the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise JobFileError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise JobFileError(f"{path} must hold a mapping")
    data = dict(data)
    images = data.get("instance_images") or []
    if not isinstance(images, list):
        raise JobFileError("instance_images: a list of image paths")
    req = trainer_pb2.CreateTrainingJobRequest(display_name=str(data.get("display_name", "")),
                                               job_id=str(data.get("job_id", "")))
    cfg = {k: v for k, v in data.items() if k not in NON_CONFIG}
    _enums(cfg)
    try:
        json_format.ParseDict(cfg, req.config)
    except json_format.ParseError as exc:
        raise JobFileError(str(exc)) from exc
    for i, entry in enumerate(images):
        img_path = Path(entry["path"] if isinstance(entry, dict) else entry)
        caption = entry.get("caption", "") if isinstance(entry, dict) else ""
        if not img_path.is_absolute():
            img_path = path.parent / img_path
        try:
            data_bytes = img_path.read_bytes()
        except OSError as exc:
            raise JobFileError(f"instance_images[{i}]: {exc}") from exc
        req.config.instance_images.add(data=data_bytes, filename=img_path.name, caption=caption)
    return req


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m boothstudio.services.trainer.jobfile")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit", help="create a training job from a YAML file")
    s.add_argument("file", type=Path)
    s.add_argument("--address", default="127.0.0.1:50053")
    s.add_argument("--api-key", default="")
    s.add_argument("--validate-only", action="store_true")
    args = p.parse_args(argv)
    from boothstudio.shared.channels import sync_channel
    from boothstudio.v1 import trainer_pb2_grpc

    req = request_from_yaml(args.file)
    req.validate_only = args.validate_only
    with sync_channel(args.address, api_key=args.api_key or None) as ch:
        job = trainer_pb2_grpc.TrainerServiceStub(ch).CreateTrainingJob(req, timeout=60).job
    print(job.job_id or "valid", trainer_pb2.TrainingJobState.Name(job.state))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
