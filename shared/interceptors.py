"""grpc.aio server interceptors: metrics, logging, auth, exception -> status mapping, and the
checks every request passes.

The runner installs them outermost first: Metrics, Logging, Auth, Errors, RequestCheck. Each one
wraps the method handler's behaviour, so it sees unary and streaming calls alike.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio

from boothstudio.shared import metrics
from boothstudio.shared.auth import (
    Authenticator,
    extract_key,
    key_fingerprint,
    set_current_principal,
)
from boothstudio.shared.errors import (
    BoothStudioError,
    InvalidArgument,
    Unimplemented,
    from_exception,
)
from boothstudio.shared.request_checks import (
    UndecodableRequest,
    message_problems,
    safe_deserializer,
)

if TYPE_CHECKING:  # the grpc classes are generic only in the type stubs
    Context: TypeAlias = aio.ServicerContext[Any, Any]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Context = Handler = Any
UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]

_log = logging.getLogger("boothstudio.rpc")


def _as_unary(fn: Callable[..., Any]) -> UnaryBehavior:
    async def call(request: Any, context: Context) -> Any:
        result = fn(request, context)
        if inspect.isawaitable(result):
            result = await result
        return result

    return call


def _as_stream(fn: Callable[..., Any]) -> StreamBehavior:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        result = fn(request, context)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        elif inspect.isawaitable(result):  # handler writes with context.write()
            await result
        elif result is not None:
            for item in result:
                yield item

    return call


def wrap_handler(
    handler: Handler,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """Rebuild `handler` with its behaviour wrapped by `unary` (unary responses) or `stream`
    (and, when given, another request deserializer)."""

    def need(fn: Callable[..., Any] | None) -> Callable[..., Any]:
        assert fn is not None, "handler without behaviour"
        return fn

    kw = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            stream(_as_stream(need(handler.stream_stream))), **kw
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            unary(_as_unary(need(handler.stream_unary))), **kw
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            stream(_as_stream(need(handler.unary_stream))), **kw
        )
    return grpc.unary_unary_rpc_method_handler(unary(_as_unary(need(handler.unary_unary))), **kw)


async def abort_with(context: Context, exc: BoothStudioError) -> None:
    """Abort the RPC with `exc`'s code, message and google.rpc details (raises AbortError)."""
    status = exc.to_grpc_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


def end_with(context: Context, status: grpc.Status) -> None:
    """Set the status the call ends with (the handler then returns instead of raising)."""
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


def final_code(context: Context, exc: BaseException | None) -> grpc.StatusCode:
    """The status code an RPC ended with, from the context and the exception that ended it."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, BoothStudioError):
        return exc.code
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpc versions report the raw integer
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return c
    if exc is None:
        return grpc.StatusCode.OK
    return grpc.StatusCode.UNKNOWN


class _Interceptor(aio.ServerInterceptor):
    """Base: wrap every handler with `before`/`after` hooks around the call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.wrap(handler, handler_call_details)

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        raise NotImplementedError


class ErrorInterceptor(_Interceptor):
    """Turns exceptions into statuses: BoothStudioError -> its code + google.rpc details;
    NotImplementedError -> UNIMPLEMENTED; anything else -> INTERNAL with a generic message and the
    traceback in the log (never sent to the client)."""

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        method = details.method

        def status_of(exc: Exception) -> grpc.Status:
            mapped = from_exception(exc)
            if isinstance(exc, NotImplementedError) and str(exc) in ("", "Method not implemented!"):
                mapped = Unimplemented(f"{method.lstrip('/')} is not implemented yet")
            if not isinstance(exc, BoothStudioError | NotImplementedError):
                _log.error(
                    "unhandled exception in %s",
                    method,
                    exc_info=exc,
                    extra={"grpc_method": method},
                )
            return mapped.to_grpc_status()

        # The abort is raised after the except block, never inside it: an exception raised
        # while handling another keeps it (__context__) and, through its traceback, every frame
        # that held the request. Those cycles only go at a full garbage collection, so a
        # stream of refused multi-megabyte requests grew the process by hundreds of MB.

        def unary(inner: UnaryBehavior) -> UnaryBehavior:
            async def call(request: Any, context: Context) -> Any:
                try:
                    return await inner(request, context)
                except aio.AbortError:
                    raise
                except Exception as exc:
                    status = status_of(exc)
                end_with(context, status)
                return None

            return call

        def stream(inner: StreamBehavior) -> StreamBehavior:
            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    async for item in inner(request, context):
                        yield item
                    return
                except aio.AbortError:
                    raise
                except Exception as exc:
                    status = status_of(exc)
                end_with(context, status)

            return call

        return wrap_handler(handler, unary, stream)


def _checked(request: Any) -> Any:
    """The request itself, or InvalidArgument when it did not parse or holds values no field
    takes (see shared.request_checks)."""
    if isinstance(request, UndecodableRequest):
        raise InvalidArgument(
            f"the request bytes are not a valid {request.type_name} ({request.error})",
            reason="MALFORMED_REQUEST",
        )
    problems = message_problems(request)
    if problems:
        raise InvalidArgument(violations=problems)
    return request


class RequestCheckInterceptor(_Interceptor):
    """Innermost: refuses undecodable request bytes (which the server library would answer
    UNKNOWN), non-finite numbers and control characters, in every message of every RPC,
    before the servicer runs. Client streams are checked message by message."""

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        streaming = handler.request_streaming

        async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                yield _checked(request)

        def incoming(request: Any) -> Any:
            return checked_stream(request) if streaming else _checked(request)

        def unary(inner: UnaryBehavior) -> UnaryBehavior:
            async def call(request: Any, context: Context) -> Any:
                return await inner(incoming(request), context)

            return call

        def stream(inner: StreamBehavior) -> StreamBehavior:
            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                async for item in inner(incoming(request), context):
                    yield item

            return call

        return wrap_handler(
            handler, unary, stream, safe_deserializer(handler.request_deserializer)
        )


class AuthInterceptor(_Interceptor):
    """Checks the API key and the method's required role (see boothstudio.shared.auth.METHOD_ROLES).

    The caller's Principal is available to servicers via shared.auth.current_principal().
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        method = details.method
        metadata = list(details.invocation_metadata or ())
        try:
            principal = self.authenticator.authorize(method, metadata)
            error: BoothStudioError | None = None
        except BoothStudioError as exc:
            principal, error = None, exc

        def unary(inner: UnaryBehavior) -> UnaryBehavior:
            async def call(request: Any, context: Context) -> Any:
                if error is not None:
                    await abort_with(context, error)
                token = set_current_principal(principal)
                try:
                    return await inner(request, context)
                finally:
                    _reset(token)

            return call

        def stream(inner: StreamBehavior) -> StreamBehavior:
            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                if error is not None:
                    await abort_with(context, error)
                set_current_principal(principal)
                async for item in inner(request, context):
                    yield item

            return call

        return wrap_handler(handler, unary, stream)


def _reset(token: contextvars.Token[Any]) -> None:
    try:
        token.var.reset(token)
    except ValueError:  # reset from another context (should not happen); fall back
        token.var.set(None)


class MetricsInterceptor(_Interceptor):
    """grpc_server_started_total, grpc_server_handled_total, grpc_server_handling_seconds,
    grpc_server_msg_sent_total."""

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        service, method = metrics.split_method(details.method)
        labels = (
            metrics.grpc_type(handler.request_streaming, handler.response_streaming),
            service,
            method,
        )

        def done(context: Context, exc: BaseException | None, start: float) -> None:
            code = final_code(context, exc)
            metrics.GRPC_HANDLED.labels(*labels, code.name).inc()
            metrics.GRPC_HANDLING_SECONDS.labels(*labels).observe(time.perf_counter() - start)

        def unary(inner: UnaryBehavior) -> UnaryBehavior:
            async def call(request: Any, context: Context) -> Any:
                metrics.GRPC_STARTED.labels(*labels).inc()
                start = time.perf_counter()
                try:
                    result = await inner(request, context)
                except BaseException as exc:
                    done(context, exc, start)
                    raise
                done(context, None, start)
                return result

            return call

        def stream(inner: StreamBehavior) -> StreamBehavior:
            sent = metrics.GRPC_MSG_SENT.labels(*labels)

            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                metrics.GRPC_STARTED.labels(*labels).inc()
                start = time.perf_counter()
                try:
                    async for item in inner(request, context):
                        sent.inc()
                        yield item
                except BaseException as exc:
                    done(context, exc, start)
                    raise
                done(context, None, start)

            return call

        return wrap_handler(handler, unary, stream)


class LoggingInterceptor(_Interceptor):
    """One structured log line per finished RPC: method, code, duration, peer, key id,
    request id (from `x-request-id` metadata or generated). Health checks log at DEBUG."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or _log

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        method = details.method
        metadata = list(details.invocation_metadata or ())
        request_id = next(
            (str(v) for k, v in metadata if k.lower() == "x-request-id"), uuid.uuid4().hex[:16]
        )
        key = extract_key(metadata)
        key_id = key_fingerprint(key) if key else ""
        quiet = method.startswith(("/grpc.health.", "/grpc.reflection."))

        def done(context: Context, exc: BaseException | None, start: float, peer: str) -> None:
            code = final_code(context, exc)
            level = logging.DEBUG if quiet and code == grpc.StatusCode.OK else logging.INFO
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                level = logging.ERROR
            if not self.logger.isEnabledFor(level):
                return
            self.logger.log(
                level,
                "rpc %s %s",
                method,
                code.name,
                extra={
                    "grpc_method": method,
                    "grpc_code": code.name,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                    "peer": peer,
                    "request_id": request_id,
                    "key_id": key_id,
                },
            )

        def unary(inner: UnaryBehavior) -> UnaryBehavior:
            async def call(request: Any, context: Context) -> Any:
                start, peer = time.perf_counter(), context.peer()
                try:
                    result = await inner(request, context)
                except BaseException as exc:
                    done(context, exc, start, peer)
                    raise
                done(context, None, start, peer)
                return result

            return call

        def stream(inner: StreamBehavior) -> StreamBehavior:
            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                # Read the peer while the call is live: context.peer() after the client has
                # cancelled a stream crashes inside grpc (seen as a segfault of the service).
                start, peer = time.perf_counter(), context.peer()
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException as exc:
                    done(context, exc, start, peer)
                    raise
                done(context, None, start, peer)

            return call

        return wrap_handler(handler, unary, stream)
