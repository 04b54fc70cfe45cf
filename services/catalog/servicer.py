"""CatalogService: the model registry (metadata store), samplers per backend, backends with
reachability.

- The embedded default model is (re)registered at every start and cannot be deleted.
- ImportModel reads a diffusers folder's configs, resolves an offline Hugging Face cache id, or
  checks a single-file checkpoint against its config folder (imports.py), so a model that is
  registered is one the Generator can load.
- The Trainer registers fine-tuned models through ImportModel (origin + trigger phrase).
- Samplers and backend capabilities come from the static tables in services.diffusion
  (samplers.py, backends.py); the Catalog never imports the Generator.

Modules: registry.py (rows in the metadata store: SQLite by default, PostgreSQL when
`database_url` is set; schema in migrations/), imports.py (ImportModel), model_files.py (model
files in the artifact store: each import attempt's copy under catalog/models/<id>/<token>/,
locations read in the store),
deletion.py (DeleteModel's checks), previews.py (a model's preview PNG in the artifact store,
GetModelPreview), mapping.py (rows and tables as messages), backend_health.py
(configured backends, reachability).
Settings: services/catalog/settings.py (CatalogSettings).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from boothstudio.services.catalog import deletion, imports, previews
from boothstudio.services.catalog.backend_health import DEFAULT_BACKEND, Backends
from boothstudio.services.catalog.mapping import samplers_response, to_proto
from boothstudio.services.catalog.registry import Registry, Row
from boothstudio.services.catalog.settings import CatalogSettings
from boothstudio.services.diffusion import loading
from boothstudio.services.diffusion.backends import remote_backends
from boothstudio.services.settings import load_settings
from boothstudio.shared.artifact_store import ArtifactMissing, store_for
from boothstudio.shared.errors import AlreadyExists, InvalidArgument, NotFound
from boothstudio.shared.ids import ID_RULE, is_valid_id
from boothstudio.shared.pagination import decode_offset, encode_token, page_size
from boothstudio.shared.server import RpcContext, ServiceContext, ServiceSpec
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc

DESCRIPTOR = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.log = ctx.logger
        # the store first: a wrong storage_url stops the start before anything is written
        self.store = store_for(cfg)
        self.registry = Registry(cfg.service_dir / "catalog.sqlite3", cfg.database_url)
        settings = load_settings(CatalogSettings, cfg)
        self.embedded_dir = Path(settings.embedded_model or loading.EMBEDDED_MODEL_DIR)
        self.backends = Backends(cfg, remote_backends(settings), settings.generator_device)
        self._import_lock = asyncio.Lock()
        self.registry.upsert_builtin(imports.embedded_values(self.embedded_dir, self.log))

    async def stop(self) -> None:
        self.registry.close()

    def _model(self, model_id: str, field: str = "model_id") -> Row:
        if not model_id:
            raise InvalidArgument.for_field(field, "required")
        if not is_valid_id(model_id):
            raise InvalidArgument.for_field(
                field, f"not a model id ({ID_RULE})"
            )
        row = self.registry.get(model_id)
        if row is None:
            raise NotFound(resource_type="model", resource_name=model_id, field=field)
        return row

    # ------------------------------------------------------------------ models

    async def ListModels(
        self, request: catalog_pb2.ListModelsRequest, context: RpcContext
    ) -> catalog_pb2.ListModelsResponse:
        size = page_size(request.page_size)
        if request.kind not in catalog_pb2.ModelKind.values():
            raise InvalidArgument.for_field("kind", f"unknown model kind {request.kind}")
        scope = (f"kind={request.kind};backend={request.backend_id};base={request.base_model_id}"
                 f";arch={request.architecture}")
        offset = decode_offset(request.page_token, scope)
        rows, total = self.registry.list(
            kind=request.kind,
            backend_id=request.backend_id,
            base_model_id=request.base_model_id,
            architecture=request.architecture,
            offset=offset,
            limit=size,
        )
        more = offset + len(rows) < total
        return catalog_pb2.ListModelsResponse(
            models=[to_proto(r) for r in rows],
            next_page_token=encode_token(offset + len(rows), scope) if more else "",
            total_size=total,
        )

    async def GetModel(
        self, request: catalog_pb2.GetModelRequest, context: RpcContext
    ) -> catalog_pb2.GetModelResponse:
        return catalog_pb2.GetModelResponse(model=to_proto(self._model(request.model_id)))

    async def ImportModel(
        self, request: catalog_pb2.ImportModelRequest, context: RpcContext
    ) -> catalog_pb2.ImportModelResponse:
        source_field, source = imports.check_request(request)
        # the given picture is read (and refused on `preview`) before anything is written
        preview_png = await previews.from_request(request.preview) if request.preview else None
        backend_id = request.backend_id or DEFAULT_BACKEND
        self.backends.get(backend_id)
        base = None
        if request.origin.base_model_id:
            base = self._model(request.origin.base_model_id, "origin.base_model_id")
        kind = imports.model_kind(request, base)
        async with self._import_lock:
            model_id = request.model_id or imports.derive_id(
                self.registry, source, request.display_name
            )
            if self.registry.exists(model_id):
                raise AlreadyExists(
                    f"model {model_id!r} already exists",
                    reason="MODEL_EXISTS",
                    violations=[("model_id", "taken")],
                )
            # an embedding of the embedded model's width needs no base model named
            default_base = (self.registry.get(loading.EMBEDDED_MODEL_ID)
                            if kind == catalog_pb2.MODEL_KIND_EMBEDDING else None)
            values, warnings = await imports.inspect_source(
                request, source_field, source, backend_id, kind, base, model_id, self.store,
                default_base,
            )
            imports.add_request_values(
                values,
                warnings,
                request,
                model_id=model_id,
                source=source,
                kind=kind,
                backend_id=backend_id,
            )
            found = values.pop("preview_candidates", [])
            if preview_png is None and found:
                preview_png, unusable = await asyncio.to_thread(previews.first_usable, found)
                warnings.extend(unusable)
            warnings.extend(
                await imports.register(self.registry, values, self.store, preview_png))
        self.log.info("model imported", extra={"model_id": model_id, "source": source})
        return catalog_pb2.ImportModelResponse(
            model=to_proto(self.registry.get(model_id)),  # type: ignore[arg-type]
            warnings=warnings,
        )

    async def DeleteModel(
        self, request: catalog_pb2.DeleteModelRequest, context: RpcContext
    ) -> catalog_pb2.DeleteModelResponse:
        row = self._model(request.model_id)
        await deletion.check_deletable(self.registry, row, self.ctx.config, self.log)
        freed = 0
        if request.delete_files:
            freed = await deletion.remove_owned_files(row, self.store)
        self.registry.delete(row["id"])
        if row["preview_sha256"]:
            # after the row: a preview left by a failure here is never served (no row names it)
            # and a later model of the same id overwrites it
            await asyncio.to_thread(previews.remove, self.store, row["id"])
        self.log.info("model deleted", extra={"model_id": row["id"], "freed_bytes": freed})
        return catalog_pb2.DeleteModelResponse(freed_bytes=freed)

    async def GetModelPreview(
        self, request: catalog_pb2.GetModelPreviewRequest, context: RpcContext
    ) -> catalog_pb2.GetModelPreviewResponse:
        row = self._model(request.model_id)
        if not row["preview_sha256"]:
            raise NotFound(f"model {row['id']!r} has no preview", reason="PREVIEW_NOT_FOUND",
                           resource_type="preview", resource_name=row["id"], field="model_id")
        try:
            png = await asyncio.to_thread(
                self.store.get_bytes, previews.key(row["id"]), row["preview_sha256"])
        except ArtifactMissing as err:  # removed from the store behind the Catalog's back
            raise NotFound(f"the preview of model {row['id']!r} is gone from the store",
                           reason="PREVIEW_NOT_FOUND", field="model_id") from err
        width, height = previews.size_of(png)
        return catalog_pb2.GetModelPreviewResponse(png=png, width=width, height=height)

    # ------------------------------------------------------------------ samplers, backends

    async def ListSamplers(
        self, request: catalog_pb2.ListSamplersRequest, context: RpcContext
    ) -> catalog_pb2.ListSamplersResponse:
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
        return samplers_response(self.backends.get(backend_id), backend_id)

    async def ListBackends(
        self, request: catalog_pb2.ListBackendsRequest, context: RpcContext
    ) -> catalog_pb2.ListBackendsResponse:
        return catalog_pb2.ListBackendsResponse(
            backends=await self.backends.with_reachability(request.refresh),
            default_backend_id=DEFAULT_BACKEND,
        )


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
