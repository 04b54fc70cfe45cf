"""Job configuration as YAML: what the trainer writes beside each job, and what a job can be
created from (no torch).

    base_model_id: boothstudio-tiny
    class_noun: circle
    identifier: zwx
    max_train_steps: 400
    prior_preservation: {enabled: true, class_image_count: 100}
    instance_images: [instance/0.png, instance/1.png]    # paths relative to the YAML file
    display_name: my circle                               # optional, not part of the config

A job of several concepts lists each concept's pictures under it instead (a picture is a path,
or a mapping with its path and optionally its file name in the job and its caption):

    concepts:
    - identifier: zwx
      class_noun: dog
      instance_images: [{path: instance/c0-0.png, filename: 0.png, caption: a zwx dog}]
    - {identifier: qlo, class_noun: cat, instance_images: [instance/c1-0.png]}

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
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from boothstudio.shared.job_file import PictureEntryError, PictureReader
from boothstudio.v1 import trainer_pb2

ENUM_PREFIX = {"precision": "PRECISION_", "method": "TRAINING_METHOD_", "strategy": "STRATEGY_"}
NON_CONFIG = ("display_name", "job_id", "instance_images")
#: a job folder's captions, by picture file name, beside its pictures


class JobFileError(ValueError):
    """The YAML does not describe a valid job (message names the key)."""


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _as_dict(msg: Message) -> dict[str, Any]:
    """A message as a mapping of field names, 64-bit whole numbers as numbers (protobuf JSON
    writes them as strings, which YAML readers such as the SDK's take for text)."""
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    _numbers(d, msg.DESCRIPTOR)
    return d


def _numbers(d: dict[str, Any], descriptor: Any) -> None:
    for name, value in d.items():
        fd = descriptor.fields_by_name.get(name)
        if fd is None:
            continue
        if fd.type in _INT64:
            d[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.fields_by_name:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    _numbers(item, fd.message_type)


def config_to_dict(config: trainer_pb2.DreamBoothConfig,
                   image_paths: list[str] | None = None) -> dict[str, Any]:
    d = _as_dict(config)
    d.pop("instance_images", None)
    if image_paths is not None:
        d["instance_images"] = image_paths
    return d


def _as_template(text: str) -> str:
    """A filled-in prompt written back as the template that fills in to it again."""
    return text.replace("{", "{{").replace("}", "}}")


def _templates(d: dict[str, Any]) -> None:
    """The filled-in prompts of a config (or concept) mapping written back as templates."""
    for key in ("instance_prompt", "class_prompt"):
        if key in d:
            d[key] = _as_template(d[key])
    if "validation_prompts" in d:
        d["validation_prompts"] = [_as_template(t) for t in d["validation_prompts"]]
    prior = d.get("prior_preservation", {})
    if "class_prompts" in prior:
        prior["class_prompts"] = [_as_template(t) for t in prior["class_prompts"]]


def _names(prompt: str, identifier: str) -> bool:
    """Whether `prompt` names `identifier` as a word (as samples are matched to concepts)."""
    return identifier.lower() in prompt.lower().replace(",", " ").split()


def _dedup_concat(lists: list[list[str]]) -> list[str]:
    out: list[str] = []
    for prompts in lists:
        out += [p for p in prompts if p not in out]
    return out


def split_validation_prompts(config: trainer_pb2.DreamBoothConfig
                             ) -> tuple[list[list[str]], list[str]]:
    """A resolved concept job's validation prompts handed back to its concepts: (each
    concept's, the job's own), such that resolving them again gives the same list. Resolving
    puts every concept's prompts first, in concept order (a concept that lists none adds its
    instance prompt), then the job's. Each prompt goes to the first concept it names; when
    that does not give the list back in its order, the first concept takes them all (and the
    others repeat its first, which adds nothing)."""
    prompts = list(config.validation_prompts)
    concepts = list(config.concepts)
    own: list[list[str]] = [[] for _ in concepts]
    plain: list[str] = []
    for p in prompts:
        i = next((i for i, c in enumerate(concepts) if _names(p, c.identifier)), None)
        (own[i] if i is not None else plain).append(p)
    drawn = [mine or [c.instance_prompt] for mine, c in zip(own, concepts, strict=True)]
    if _dedup_concat([*drawn, plain]) == prompts or not prompts:
        return own, plain
    return [prompts] + [[prompts[0]] for _ in concepts[1:]], []


def _picture(path: str, filename: str = "", caption: str = "") -> str | dict[str, str]:
    """A picture entry: its path, with its file name in the job and its caption if needed."""
    entry: dict[str, str] = {"path": path}
    if filename and filename != Path(path).name:
        entry["filename"] = filename
    if caption:
        entry["caption"] = caption
    return entry if len(entry) > 1 else path


def _concepts_to_dicts(config: trainer_pb2.DreamBoothConfig,
                       image_paths: list[str]) -> list[dict[str, Any]]:
    """The concepts of a resolved job, each with its pictures as paths (a picture of concept
    i is stored as `c<i>-<name>`: its entry names its own file name `<name>` again, so the
    job made from the file stores it under the same name) and its validation prompts."""
    by_name = {Path(p).name: p for p in image_paths}
    own_prompts, _ = split_validation_prompts(config)
    out = []
    for i, concept in enumerate(config.concepts):
        c = _as_dict(concept)
        images = c.pop("instance_images", [])
        if images:  # the pictures are in the file: the dataset they came from is not needed
            c.pop("dataset_id", None)
        prefix = f"c{i}-"
        c["instance_images"] = [
            _picture(by_name.get(img["filename"], f"instance/{img['filename']}"),
                     img["filename"].removeprefix(prefix), img.get("caption", ""))
            for img in images]
        c.pop("validation_prompts", None)
        if own_prompts[i]:
            c["validation_prompts"] = own_prompts[i]
        _templates(c)
        out.append(c)
    return out


def config_to_yaml(config: trainer_pb2.DreamBoothConfig, image_paths: list[str],
                   display_name: str = "") -> str:
    """The YAML a job can be created from again. A resolved config holds its prompts filled
    in; they are written as templates (literal braces doubled) so that creating a job from the
    file gives the same prompts. The pictures are in the file (paths), so the dataset they
    were uploaded as is left out; a job of several concepts lists each concept's pictures and
    validation prompts under the concept."""
    d = config_to_dict(config, None if config.concepts else image_paths)
    if image_paths:
        d.pop("dataset_id", None)
    if config.concepts:
        d["concepts"] = _concepts_to_dicts(config, image_paths)
        _, plain = split_validation_prompts(config)
        d.pop("validation_prompts", None)
        if plain:
            d["validation_prompts"] = plain
    _templates(d)
    if display_name:
        d = {"display_name": display_name, **d}
    return yaml.safe_dump(d, sort_keys=False)


def _enums(d: dict[str, Any]) -> None:
    for key, prefix in ENUM_PREFIX.items():
        v = d.get(key)
        if isinstance(v, str) and not v.upper().startswith(prefix):
            d[key] = prefix + v.upper()


def _read_pictures(entries: Any, reader: PictureReader, where: str
                   ) -> list[trainer_pb2.InstanceImage]:
    """Pictures of a job file (shared.job_file: paths or {path, filename, caption})."""
    if not isinstance(entries, list):
        raise JobFileError(f"{where}: a list of image paths")
    try:
        pictures = [reader.read(entry, f"{where}[{i}]") for i, entry in enumerate(entries)]
    except PictureEntryError as exc:
        raise JobFileError(str(exc)) from None
    return [trainer_pb2.InstanceImage(data=p.data, filename=p.filename, caption=p.caption)
            for p in pictures]


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
    req = trainer_pb2.CreateTrainingJobRequest(display_name=str(data.get("display_name", "")),
                                               job_id=str(data.get("job_id", "")))
    cfg = {k: v for k, v in data.items() if k not in NON_CONFIG}
    concepts = cfg.get("concepts") or []
    if not isinstance(concepts, list) or not all(isinstance(c, dict) for c in concepts):
        raise JobFileError("concepts: a list of mappings of concept settings")
    # a concept's pictures are paths here, read below
    cfg["concepts"] = [{k: v for k, v in c.items() if k != "instance_images"} for c in concepts]
    _enums(cfg)
    try:
        json_format.ParseDict(cfg, req.config)
    except json_format.ParseError as exc:
        raise JobFileError(str(exc)) from exc
    reader = PictureReader(path.parent)
    req.config.instance_images.extend(
        _read_pictures(data.get("instance_images") or [], reader, "instance_images"))
    for i, concept in enumerate(concepts):
        req.config.concepts[i].instance_images.extend(_read_pictures(
            concept.get("instance_images") or [], reader, f"concepts[{i}].instance_images"))
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
