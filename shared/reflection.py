"""gRPC server reflection under both names clients use: `grpc.reflection.v1` and `v1alpha`.

grpcio-reflection ships only v1alpha, while newer tools (grpcurl >= 1.9, Postman, buf curl)
ask v1 first and some speak only v1. The two protocols are the same messages under another
package, field for field, so one servicer answers both: v1 requests parse as v1alpha messages
and v1alpha answers serialize to identical v1 bytes. The v1 file descriptor is derived from
v1alpha's (package renamed) so that reflection can describe itself under either name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import _async, reflection_pb2

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"


def _register_v1_descriptor(pool: Any) -> None:
    """Add grpc/reflection/v1/reflection.proto to `pool`, made from the v1alpha file."""
    try:
        pool.FindServiceByName(V1)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(".grpc.reflection.v1alpha."):
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.", 1)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.", 1)
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.", 1)
    pool.Add(proto)


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection (v1 and v1alpha) for `service_names` (the reflection services are
    listed too) on an asyncio server."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    servicer = _async.ReflectionServicer([*service_names, V1, V1ALPHA], pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in (V1ALPHA, V1)
        ]
    )


__all__ = ["V1", "V1ALPHA", "enable_server_reflection"]
