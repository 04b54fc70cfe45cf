"""TrainerService servicer (skeleton: RPCs not implemented yet answer UNIMPLEMENTED)."""

from __future__ import annotations

from boothstudio.v1 import trainer_pb2, trainer_pb2_grpc
from shared.pagination import page_size
from shared.server import ServiceContext, ServiceSpec

DESCRIPTOR = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def ListTrainingJobs(self, request, context):  # type: ignore[no-untyped-def]
        page_size(request.page_size)
        return trainer_pb2.ListTrainingJobsResponse()


def build(ctx: ServiceContext) -> ServiceSpec:
    """Build the trainer servicer and hooks for the shared runner."""
    servicer = TrainerServicer(ctx)
    return ServiceSpec.for_servicer(
        DESCRIPTOR, servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server
    )
