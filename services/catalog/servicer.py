"""CatalogService servicer (skeleton: RPCs not implemented yet answer UNIMPLEMENTED)."""

from __future__ import annotations

from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc
from shared.errors import InvalidArgument
from shared.pagination import page_size
from shared.server import ServiceContext, ServiceSpec

DESCRIPTOR = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        page_size(request.page_size)
        if request.kind not in catalog_pb2.ModelKind.values():
            raise InvalidArgument.for_field("kind", f"unknown model kind {request.kind}")
        return catalog_pb2.ListModelsResponse()


def build(ctx: ServiceContext) -> ServiceSpec:
    """Build the catalog servicer and hooks for the shared runner."""
    servicer = CatalogServicer(ctx)
    return ServiceSpec.for_servicer(
        DESCRIPTOR, servicer, catalog_pb2_grpc.add_CatalogServiceServicer_to_server
    )
