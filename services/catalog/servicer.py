"""CatalogService: the model registry (SQLite), samplers per backend, backends with reachability.

- The embedded default model is (re)registered at every start and cannot be deleted.
- ImportModel reads a diffusers folder's configs, resolves an offline Hugging Face cache id, or
  loads a single-file checkpoint with its config folder (services.diffusion.loading), so a model
  that is registered is one the Generator can load.
- The Trainer registers fine-tuned models through ImportModel (origin + trigger phrase).
- Samplers and backend capabilities come from the static tables in services.diffusion
  (samplers.py, backends.py); the Catalog never imports the Generator.

Settings: services/catalog/settings.py (CatalogSettings).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from boothstudio.services.catalog.registry import (
    FORMATS,
    PREDICTION,
    Registry,
    folder_size,
    slug,
    to_proto,
)
from boothstudio.services.catalog.settings import CatalogSettings
from boothstudio.services.diffusion import loading
from boothstudio.services.diffusion.backends import (
    BACKEND_KINDS,
    BackendKindInfo,
    RemoteEndpoint,
    remote_backends,
)
from boothstudio.services.diffusion.samplers import SCHEDULES, ParamSpec, SamplerSpec
from boothstudio.shared.channels import aio_channel
from boothstudio.shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from boothstudio.shared.ids import is_valid_id
from boothstudio.shared.pagination import decode_offset, encode_token, page_size
from boothstudio.shared.paths import path_problem
from boothstudio.shared.server import ServiceContext, ServiceSpec
from boothstudio.shared.settings import load_settings
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, trainer_pb2, trainer_pb2_grpc

DESCRIPTOR = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]
DEFAULT_BACKEND = "diffusers"
BACKEND_PROTO_KIND = {
    "diffusers": catalog_pb2.BACKEND_KIND_DIFFUSERS,
    "a1111": catalog_pb2.BACKEND_KIND_A1111,
    "hosted": catalog_pb2.BACKEND_KIND_HOSTED,
}
ACTIVE_TRAINING = [
    trainer_pb2.TRAINING_JOB_STATE_QUEUED,
    trainer_pb2.TRAINING_JOB_STATE_PREPARING,
    trainer_pb2.TRAINING_JOB_STATE_RUNNING,
    trainer_pb2.TRAINING_JOB_STATE_EXPORTING,
    trainer_pb2.TRAINING_JOB_STATE_CANCELLING,
]
# Lengths of the free-text fields of ImportModel (characters).
TEXT_LIMITS = {
    "display_name": 256,
    "description": 4096,
    "trigger_phrase": 512,
    "architecture": 64,
    "backend_id": 64,
}
_TYPES = {
    "int": catalog_pb2.PARAMETER_TYPE_INT,
    "float": catalog_pb2.PARAMETER_TYPE_FLOAT,
    "bool": catalog_pb2.PARAMETER_TYPE_BOOL,
    "choice": catalog_pb2.PARAMETER_TYPE_CHOICE,
    "string": catalog_pb2.PARAMETER_TYPE_STRING,
}


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a .safetensors header (8-byte length + JSON), without loading weights."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise loading.ModelLoadError(
            "MODEL_CORRUPT", f"{path.name} is not a readable .safetensors file: {exc}"
        ) from exc


def inspect_single_file(path: Path, config: str | None) -> loading.ModelInfo:
    """Check an original-layout checkpoint against its config folder from headers alone (the
    weights load when a job first uses the model)."""
    if not path.is_file():
        raise loading.ModelLoadError("MODEL_NOT_FOUND", f"no such file: {path}")
    if path.suffix == ".ckpt":
        raise loading.ModelLoadError(
            "PICKLE_NOT_ALLOWED",
            ".ckpt files are pickles and are not imported: convert to .safetensors",
        )
    if path.suffix != ".safetensors":
        raise loading.ModelLoadError("MODEL_UNSUPPORTED", "expected a .safetensors file")
    if not config:
        raise loading.ModelLoadError(
            "CONFIG_REQUIRED",
            "a single-file checkpoint needs config_path: a local diffusers folder of the same "
            "architecture (no hub is reachable)",
            field="config",
        )
    cfg = loading.inspect_folder(Path(config))
    shapes = safetensors_shapes(path)
    arch, in_ch = loading.single_file_architecture(set(shapes), shapes)
    cfg_arch = "sd1" if cfg.architecture == "tiny-sd" else cfg.architecture
    if arch != cfg_arch or in_ch != cfg.unet_in_channels:
        raise loading.ModelLoadError(
            "CONFIG_MISMATCH",
            f"checkpoint is {arch} ({in_ch} UNet channels) but the config folder is "
            f"{cfg.architecture} ({cfg.unet_in_channels})",
            field="config",
        )
    return loading.ModelInfo(
        cfg.architecture,
        cfg.native_resolution,
        cfg.prediction_type,
        in_ch,
        cfg.pipeline_class,
        "single_file",
        str(path),
    )


def _path_error(err: OSError, field: str) -> InvalidArgument | NotFound:
    """An OSError met while reading an imported path, as the error of the field that named it."""
    what = err.strerror or type(err).__name__
    if isinstance(err, FileNotFoundError):
        return NotFound(f"{field}: {what}", reason="MODEL_NOT_FOUND", field=field)
    return InvalidArgument(
        f"{field}: cannot read it ({what})", reason="PATH_UNREADABLE", violations=[(field, what)]
    )


def option_value(value: Any) -> common_pb2.OptionValue:
    if isinstance(value, bool):
        return common_pb2.OptionValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.OptionValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.OptionValue(float_value=value)
    return common_pb2.OptionValue(string_value=str(value))


def parameter_proto(p: ParamSpec) -> catalog_pb2.Parameter:
    msg = catalog_pb2.Parameter(
        name=p.name,
        type=_TYPES[p.type],
        default_value=option_value(p.default),
        choices=list(p.choices),
        help=p.help,
        label=p.label,
    )
    if p.min is not None:
        msg.min_value = float(p.min)
    if p.max is not None:
        msg.max_value = float(p.max)
    return msg


def sampler_proto(s: SamplerSpec) -> catalog_pb2.Sampler:
    return catalog_pb2.Sampler(
        id=s.id,
        label=s.label,
        aliases=s.aliases,
        schedules=list(s.schedules),
        default_schedule=s.default_schedule,
        parameters=[parameter_proto(p) for p in s.parameters],
        description=s.description,
        default_steps=s.default_steps,
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.log = ctx.logger
        self.registry = Registry(cfg.service_dir / "catalog.sqlite3")
        self.models_dir = cfg.service_dir / "models"
        settings = load_settings(CatalogSettings, cfg)
        self.embedded_dir = Path(settings.embedded_model or loading.EMBEDDED_MODEL_DIR)
        self.remotes = remote_backends(settings)
        self.device = settings.generator_device
        self._backend_cache: tuple[float, list[catalog_pb2.Backend]] | None = None
        self._import_lock = asyncio.Lock()
        self.register_embedded()

    # ------------------------------------------------------------------ setup

    def register_embedded(self) -> None:
        values: dict[str, Any] = {
            "id": loading.EMBEDDED_MODEL_ID,
            "display_name": "BoothStudio tiny (embedded)",
            "kind": catalog_pb2.MODEL_KIND_BASE,
            "backend_id": DEFAULT_BACKEND,
            "architecture": "tiny-sd",
            "native_resolution": 64,
            "prediction_type": catalog_pb2.PREDICTION_TYPE_EPSILON,
            "source_path": str(self.embedded_dir),
            "format": catalog_pb2.MODEL_FORMAT_DIFFUSERS,
            "builtin": 1,
            "description": "The default model shipped with BoothStudio: a tiny Stable Diffusion "
            "trained on procedurally drawn 64 px scenes (shapes, colours, backgrounds).",
            "created": 0.0,
        }
        try:
            info = loading.inspect_folder(self.embedded_dir)
            values.update(
                architecture=info.architecture,
                native_resolution=info.native_resolution,
                prediction_type=PREDICTION.get(info.prediction_type, 0),
                inpainting=int(info.inpainting),
                size_bytes=folder_size(self.embedded_dir),
            )
        except loading.ModelLoadError as exc:
            self.log.warning("embedded model unavailable: %s", exc)
            values["description"] += f" (unavailable: {exc})"
        self.registry.upsert_builtin(values)

    async def stop(self) -> None:
        self.registry.close()

    # ------------------------------------------------------------------ models

    def _backend(self, backend_id: str, field: str = "backend_id") -> BackendKindInfo:
        known = self.backend_ids()
        if backend_id not in known:
            raise NotFound(
                f"backend {backend_id!r} is not configured (configured: {', '.join(known)})",
                resource_type="backend",
                resource_name=backend_id,
                field=field,
            )
        return BACKEND_KINDS[backend_id]

    def backend_ids(self) -> list[str]:
        return ["diffusers", *self.remotes]

    def _model(self, model_id: str, field: str = "model_id") -> Any:
        if not model_id:
            raise InvalidArgument.for_field(field, "required")
        if not is_valid_id(model_id):
            raise InvalidArgument.for_field(
                field, "not a model id (lowercase letter first, then [a-z0-9_-], at most 128)"
            )
        row = self.registry.get(model_id)
        if row is None:
            raise NotFound(resource_type="model", resource_name=model_id, field=field)
        return row

    async def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        size = page_size(request.page_size)
        if request.kind not in catalog_pb2.ModelKind.values():
            raise InvalidArgument.for_field("kind", f"unknown model kind {request.kind}")
        scope = f"kind={request.kind};backend={request.backend_id};base={request.base_model_id}"
        offset = decode_offset(request.page_token, scope)
        rows, total = self.registry.list(
            kind=request.kind,
            backend_id=request.backend_id,
            base_model_id=request.base_model_id,
            offset=offset,
            limit=size,
        )
        more = offset + len(rows) < total
        return catalog_pb2.ListModelsResponse(
            models=[to_proto(r) for r in rows],
            next_page_token=encode_token(offset + len(rows), scope) if more else "",
            total_size=total,
        )

    async def GetModel(self, request, context):  # type: ignore[no-untyped-def]
        return catalog_pb2.GetModelResponse(model=to_proto(self._model(request.model_id)))

    async def ImportModel(self, request, context):  # type: ignore[no-untyped-def]
        source_field = request.WhichOneof("source")
        violations: list[tuple[str, str]] = []
        if source_field is None:
            raise InvalidArgument.for_field(
                "source", "set one of diffusers_path, hf_cache_id, single_file_path"
            )
        source = str(getattr(request, source_field)).strip()
        if not source:
            violations.append((source_field, "must not be empty"))
        # a remote backend's model is a name there, not a path here, but still bounded
        for name, value in ((source_field, source), ("config_path", request.config_path)):
            problem = path_problem(value)
            if problem:
                violations.append((name, problem))
        for name, limit in TEXT_LIMITS.items():
            if len(getattr(request, name)) > limit:
                violations.append((name, f"longer than {limit} characters"))
        if request.model_id and not is_valid_id(request.model_id):
            violations.append(
                ("model_id", "lowercase letter first, then [a-z0-9_-], at most 128 characters")
            )
        for name in ("base_model_id", "training_job_id"):
            value = getattr(request.origin, name)
            if value and not is_valid_id(value):
                violations.append((f"origin.{name}", "not a valid id"))
        if request.kind not in catalog_pb2.ModelKind.values():
            violations.append(("kind", f"unknown model kind {request.kind}"))
        if request.prediction_type not in catalog_pb2.PredictionType.values():
            violations.append(("prediction_type", f"unknown value {request.prediction_type}"))
        if violations:
            raise InvalidArgument(violations=violations)
        backend_id = request.backend_id or DEFAULT_BACKEND
        self._backend(backend_id)
        base = None
        if request.origin.base_model_id:
            base = self._model(request.origin.base_model_id, "origin.base_model_id")
        kind = request.kind or (
            catalog_pb2.MODEL_KIND_FINE_TUNED if base is not None else catalog_pb2.MODEL_KIND_BASE
        )
        if kind == catalog_pb2.MODEL_KIND_LORA and base is None:
            raise InvalidArgument.for_field(
                "origin.base_model_id", "a LoRA needs the base model it applies to"
            )
        async with self._import_lock:
            model_id = request.model_id or self._derive_id(source, request.display_name)
            if self.registry.exists(model_id):
                raise AlreadyExists(
                    f"model {model_id!r} already exists",
                    reason="MODEL_EXISTS",
                    violations=[("model_id", "taken")],
                )
            values, warnings = await self._inspect(
                request, source_field, source, backend_id, kind, base, model_id
            )
            values.update(
                id=model_id,
                display_name=request.display_name or Path(source).name or model_id,
                kind=kind,
                backend_id=backend_id,
                base_model_id=request.origin.base_model_id,
                training_job_id=request.origin.training_job_id,
                trigger_phrase=request.trigger_phrase,
                description=request.description,
                created=time.time(),
            )
            if request.architecture and request.architecture != values.get("architecture"):
                if values.get("architecture"):
                    warnings.append(
                        common_pb2.Warning(
                            reason="ARCHITECTURE_MISMATCH",
                            message=f"detected {values['architecture']!r}, "
                            f"not {request.architecture!r}; keeping the detected one",
                            field="architecture",
                        )
                    )
                else:
                    values["architecture"] = request.architecture
            if request.prediction_type:
                values["prediction_type"] = request.prediction_type
            self.registry.insert(values)
        self.log.info("model imported", extra={"model_id": model_id, "source": source})
        return catalog_pb2.ImportModelResponse(
            model=to_proto(self.registry.get(model_id)),  # type: ignore[arg-type]
            warnings=warnings,
        )

    def _derive_id(self, source: str, display_name: str) -> str:
        base = slug(display_name or Path(source.rstrip("/")).stem or source)
        candidate, n = base, 2
        while self.registry.exists(candidate):
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    async def _inspect(
        self,
        request: Any,
        source_field: str,
        source: str,
        backend_id: str,
        kind: int,
        base: Any,
        model_id: str,
    ) -> tuple[dict[str, Any], list[common_pb2.Warning]]:
        warnings: list[common_pb2.Warning] = []
        if backend_id != "diffusers":
            # A remote backend's model: its name there; nothing to inspect locally.
            return {"source_path": source, "format": 0, "architecture": request.architecture}, []

        def field_of(err: loading.ModelLoadError) -> str:
            return {"config": "config_path", "allow_pickle": source_field}.get(
                err.field, source_field
            )

        try:
            if kind == catalog_pb2.MODEL_KIND_LORA:
                path = Path(source)
                if source_field != "single_file_path" or path.suffix != ".safetensors":
                    raise InvalidArgument.for_field(
                        source_field, "a LoRA is a single .safetensors file"
                    )
                if not path.is_file():
                    raise NotFound(f"no such file: {path}", field=source_field)
                values = {
                    "architecture": base["architecture"],
                    "native_resolution": base["native_resolution"],
                    "prediction_type": base["prediction_type"],
                    "format": catalog_pb2.MODEL_FORMAT_LORA,
                }
                path_str = str(path.resolve())
            elif source_field == "single_file_path":
                config = request.config_path or None
                from_base = base is not None and base["format"] == FORMATS["diffusers"]
                if config is None and from_base:
                    config = base["source_path"]
                    warnings.append(
                        common_pb2.Warning(
                            reason="CONFIG_FROM_BASE",
                            message=f"configs taken from the base model {base['id']!r}",
                            field="config_path",
                        )
                    )
                info = inspect_single_file(Path(source), config)
                values = self._info_values(info)
                values["config_path"] = str(Path(config).resolve()) if config else ""
                path_str = str(Path(source).resolve())
            else:
                if source_field == "hf_cache_id":
                    folder = await asyncio.to_thread(loading.resolve_hf_cache, source)
                else:
                    folder = Path(source)
                info = loading.inspect_folder(folder)
                missing = [
                    c
                    for c in ("unet", "vae", "text_encoder")
                    if not any((folder / c).glob("*.safetensors"))
                    and not any((folder / c).glob("*.bin"))
                ]
                if missing:
                    raise InvalidArgument(
                        f"{folder} has no weights for {', '.join(missing)}",
                        reason="MODEL_CORRUPT",
                        violations=[(source_field, f"no weights for {', '.join(missing)}")],
                    )
                values = self._info_values(info)
                path_str = source if source_field == "hf_cache_id" else str(folder.resolve())
                if source_field == "hf_cache_id":
                    values["format"] = catalog_pb2.MODEL_FORMAT_HF_CACHE
                    values["size_bytes"] = folder_size(folder)
        except loading.ModelLoadError as err:
            f = field_of(err)
            if err.reason == "MODEL_NOT_FOUND":
                raise NotFound(str(err), reason=err.reason, field=f) from err
            raise InvalidArgument(str(err), reason=err.reason, violations=[(f, str(err))]) from err
        except OSError as err:
            # unreadable, not a folder, a folder where a file was expected: the path is at fault
            raise _path_error(err, source_field) from err
        values["source_path"] = path_str
        if request.copy_files and source_field != "hf_cache_id":
            try:
                dest = await asyncio.to_thread(self._copy_in, Path(path_str), model_id)
            except OSError as err:
                raise _path_error(err, source_field) from err
            values["source_path"] = str(dest)
            values["owned_path"] = str(self.models_dir / model_id)
        values.setdefault("size_bytes", folder_size(Path(values["source_path"])))
        return values, warnings

    @staticmethod
    def _info_values(info: loading.ModelInfo) -> dict[str, Any]:
        return {
            "architecture": info.architecture,
            "native_resolution": info.native_resolution,
            "prediction_type": PREDICTION.get(info.prediction_type, 0),
            "format": FORMATS.get(info.source_format, 0),
            "inpainting": int(info.inpainting),
        }

    def _copy_in(self, src: Path, model_id: str) -> Path:
        """Copy weights under the data dir: to a temporary name, then rename (all or nothing)."""
        final = self.models_dir / model_id
        tmp = self.models_dir / f".{model_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            if src.is_dir():
                shutil.copytree(src, tmp / src.name)
            else:
                shutil.copy2(src, tmp / src.name)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final / src.name

    async def DeleteModel(self, request, context):  # type: ignore[no-untyped-def]
        row = self._model(request.model_id)
        if row["builtin"]:
            raise FailedPrecondition(
                "the embedded default model cannot be deleted",
                reason="MODEL_BUILTIN",
                violations=[("model_id", "the embedded default model cannot be deleted")],
            )
        dependents = self.registry.dependents(row["id"])
        if dependents:
            names = ", ".join(d["id"] for d in dependents)
            raise FailedPrecondition(
                f"LoRAs depend on {row['id']!r}: {names}",
                reason="MODEL_HAS_DEPENDENTS",
                violations=[("model_id", f"base of {names}")],
            )
        jobs = await self._training_jobs_using(row["id"])
        if jobs:
            raise FailedPrecondition(
                f"model {row['id']!r} is the base of running training jobs: {', '.join(jobs)}",
                reason="MODEL_IN_USE",
                violations=[("model_id", "in use by training jobs")],
                metadata={"jobs": ",".join(jobs)},
            )
        freed = 0
        owned = row["owned_path"]
        if request.delete_files and owned:
            path = Path(owned).resolve()
            if path.is_relative_to(self.ctx.config.data_dir.resolve()):
                freed = folder_size(path)
                await asyncio.to_thread(shutil.rmtree, path, True)
        self.registry.delete(row["id"])
        self.log.info("model deleted", extra={"model_id": row["id"], "freed_bytes": freed})
        return catalog_pb2.DeleteModelResponse(freed_bytes=freed)

    async def _training_jobs_using(self, model_id: str) -> list[str]:
        """Ids of active training jobs on this base model (empty when the Trainer is down)."""
        address = self.ctx.config.address_of("trainer")
        try:
            async with aio_channel(address, api_key=self.ctx.config.service_api_key or None) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                resp = await stub.ListTrainingJobs(
                    trainer_pb2.ListTrainingJobsRequest(
                        base_model_id=model_id, states=ACTIVE_TRAINING, page_size=100
                    ),
                    timeout=2.0,
                )
        except grpc.RpcError as exc:
            self.log.info("trainer not asked about model use: %s", exc.code())
            return []
        return [j.job_id for j in resp.jobs]

    # ------------------------------------------------------------------ samplers, backends

    async def ListSamplers(self, request, context):  # type: ignore[no-untyped-def]
        backend_id = request.backend_id
        if request.model_id:
            row = self._model(request.model_id)
            if backend_id and backend_id != row["backend_id"]:
                raise InvalidArgument.for_field(
                    "backend_id",
                    f"model {row['id']!r} is served by {row['backend_id']!r}, not {backend_id!r}",
                )
            backend_id = row["backend_id"]
        backend_id = backend_id or DEFAULT_BACKEND
        info = self._backend(backend_id)
        samplers = info.samplers()
        used = {s for spec in samplers for s in spec.schedules}
        return catalog_pb2.ListSamplersResponse(
            samplers=[sampler_proto(s) for s in samplers],
            schedules=[
                catalog_pb2.Schedule(id=s.id, label=s.label, help=s.help)
                for s in SCHEDULES.values()
                if s.id in used
            ],
            default_sampler=info.default_sampler,
            backend_id=backend_id,
        )

    async def ListBackends(self, request, context):  # type: ignore[no-untyped-def]
        cached = self._backend_cache
        if request.refresh or cached is None or time.monotonic() - cached[0] > 10.0:
            backends = await asyncio.gather(*(self._check(b) for b in self.backend_ids()))
            cached = (time.monotonic(), list(backends))
            self._backend_cache = cached
        return catalog_pb2.ListBackendsResponse(
            backends=cached[1], default_backend_id=DEFAULT_BACKEND
        )

    async def _check(self, backend_id: str) -> catalog_pb2.Backend:
        info = BACKEND_KINDS[backend_id]
        caps = info.capabilities
        msg = catalog_pb2.Backend(
            id=backend_id,
            kind=BACKEND_PROTO_KIND[info.kind],
            display_name=info.label,
            capabilities=catalog_pb2.BackendCapabilities(
                txt2img=caps.txt2img,
                img2img=caps.img2img,
                inpaint=caps.inpaint,
                training=caps.training,
                previews=caps.previews,
                cancel=caps.cancel,
            ),
        )
        if backend_id == "diffusers":
            msg.device = self.device
            address = self.ctx.config.address_of("generator")
            msg.reachable, msg.message = await self._grpc_health(
                address, "boothstudio.v1.GeneratorService"
            )
        else:
            remote = self.remotes[backend_id]
            msg.endpoint = remote.url
            msg.reachable, msg.message = await asyncio.to_thread(self._http_ping, remote)
        return msg

    async def _grpc_health(self, address: str, service: str) -> tuple[bool, str]:
        try:
            async with aio_channel(address) as ch:
                resp = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.5
                )
        except grpc.RpcError as exc:
            return False, f"generator at {address} not reachable: {exc.code().name}"
        serving = resp.status == health_pb2.HealthCheckResponse.SERVING
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return serving, f"generator at {address}: {status}"

    @staticmethod
    def _http_ping(remote: RemoteEndpoint) -> tuple[bool, str]:
        req = urllib.request.Request(remote.url + remote.health_path, headers=remote.headers())
        try:
            with urllib.request.urlopen(req, timeout=2.0) as resp:
                return resp.status == 200, f"HTTP {resp.status}"
        except Exception as exc:  # connection refused, timeout, HTTP error
            return False, f"not reachable: {exc}"


def build(ctx: ServiceContext) -> ServiceSpec:
    """Build the catalog servicer and hooks for the shared runner."""
    servicer = CatalogServicer(ctx)
    return ServiceSpec.for_servicer(
        DESCRIPTOR,
        servicer,
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
        on_stop=servicer.stop,
    )


__all__ = ["CatalogServicer", "build"]
