"""GeneratorService servicer (skeleton: RPCs not implemented yet answer UNIMPLEMENTED)."""

from __future__ import annotations

from boothstudio.v1 import generator_pb2, generator_pb2_grpc
from shared.pagination import page_size
from shared.server import ServiceContext, ServiceSpec

DESCRIPTOR = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"]


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def ListImages(self, request, context):  # type: ignore[no-untyped-def]
        page_size(request.page_size)
        return generator_pb2.ListImagesResponse()


def build(ctx: ServiceContext) -> ServiceSpec:
    """Build the generator servicer and hooks for the shared runner."""
    servicer = GeneratorServicer(ctx)
    return ServiceSpec.for_servicer(
        DESCRIPTOR, servicer, generator_pb2_grpc.add_GeneratorServiceServicer_to_server
    )
