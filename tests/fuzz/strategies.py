"""Hypothesis strategies built from protobuf descriptors: any request message of any RPC, its
fields drawn from boundary values, hand-picked hostile values (tests/fuzz/hostile.py) and
random ones.

    st_message(GenerateRequest.DESCRIPTOR)   # -> strategy of GenerateRequest messages

Every field kind is covered: ints at their edges, floats with NaN/inf/-0/1e308, strings with
control characters, path segments, forged tokens and huge values, bytes with image bombs,
enums with unknown numbers, repeated and map fields, and one member (or none) of each oneof.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from tests.fuzz import hostile

F = FieldDescriptor
MAX_DEPTH = 4

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1, hostile.INT32_EDGES),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1, hostile.INT32_EDGES),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1, hostile.INT32_EDGES),
    F.TYPE_INT64: (-(2**63), 2**63 - 1, hostile.INT64_EDGES),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1, hostile.INT64_EDGES),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1, hostile.INT64_EDGES),
    F.TYPE_UINT32: (0, 2**32 - 1, hostile.UINT32_EDGES),
    F.TYPE_FIXED32: (0, 2**32 - 1, hostile.UINT32_EDGES),
    F.TYPE_UINT64: (0, 2**64 - 1, hostile.UINT64_EDGES),
    F.TYPE_FIXED64: (0, 2**64 - 1, hostile.UINT64_EDGES),
}


def st_string() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(hostile.HOSTILE_STRINGS),
        st.sampled_from(hostile.KNOWN_STRINGS),
        st.from_regex(r"\A[a-z][a-z0-9_-]{0,20}\Z"),  # passes id checks: reaches the lookups
        st.text(max_size=40),
    )


def st_bytes() -> st.SearchStrategy[bytes]:
    pictures = hostile.images()
    return st.one_of(
        st.sampled_from(sorted(pictures)).map(pictures.__getitem__),
        st.binary(max_size=64),
    )


def st_int(fd: FieldDescriptor) -> st.SearchStrategy[int]:
    lo, hi, edges = _INT_RANGES[fd.type]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def st_float(fd: FieldDescriptor) -> st.SearchStrategy[float]:
    width = 32 if fd.type == F.TYPE_FLOAT else 64
    edges = hostile.FLOAT_EDGES
    if width == 32:  # a float field holds 1e308 as inf; keep the list to what it can carry
        edges = [e for e in edges if not (abs(e) > 3.5e38 and abs(e) != float("inf"))]
    return st.one_of(st.sampled_from(edges), st.floats(width=width))


def st_enum(fd: FieldDescriptor) -> st.SearchStrategy[int]:
    known = [v.number for v in fd.enum_type.values]
    unknown = [max(known) + 1, 99, -1, 2**31 - 1, -(2**31)]
    return st.one_of(st.sampled_from(known), st.sampled_from(unknown))


def st_scalar(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if fd.type == F.TYPE_MESSAGE:
        return st_message(fd.message_type, depth + 1)
    if fd.type == F.TYPE_ENUM:
        return st_enum(fd)
    if fd.type == F.TYPE_BOOL:
        return st.booleans()
    if fd.type == F.TYPE_STRING:
        return st_string()
    if fd.type == F.TYPE_BYTES:
        return st_bytes()
    if fd.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return st_float(fd)
    if fd.type in _INT_RANGES:
        return st_int(fd)
    raise AssertionError(f"field type {fd.type} of {fd.full_name} has no strategy")


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def st_field(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """A value for one field: a list for repeated, a dict for maps, else a scalar/message."""
    if _is_map(fd):
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        return st.dictionaries(st_scalar(key_fd, depth), st_scalar(value_fd, depth), max_size=3)
    if fd.is_repeated:
        item = st_scalar(fd, depth)
        many = 4 if depth < 2 else 2
        return st.one_of(
            st.lists(item, max_size=many),
            # a hostile count: hundreds of copies of one value
            item.map(lambda v: [v] * 300) if fd.message_type is None else st.nothing(),
        )
    return st_scalar(fd, depth)


def assign(msg: Message, fd: FieldDescriptor, value: Any) -> None:
    """Set field `fd` of `msg` to a value as st_field draws it (list, dict, message, scalar)."""
    if _is_map(fd):
        target = getattr(msg, fd.name)
        for k, v in value.items():
            if fd.message_type.fields_by_name["value"].message_type is not None:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif fd.is_repeated:
        getattr(msg, fd.name).extend(value)
    elif fd.message_type is not None:
        getattr(msg, fd.name).CopyFrom(value)
    else:
        setattr(msg, fd.name, value)


@functools.cache
def st_message(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type `desc`: each field set or not; at most one member per oneof."""
    cls = GetMessageClass(desc)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    # real oneofs (not the synthetic ones proto3 `optional` creates): choose one member or none
    oneofs = [o for o in desc.oneofs if not (len(o.fields) == 1 and o.name.startswith("_"))]
    in_oneof = {f.name for o in oneofs for f in o.fields}
    plain = [f for f in desc.fields if f.name not in in_oneof]

    parts: dict[str, st.SearchStrategy[Any]] = {
        f.name: st.one_of(st.none(), st.deferred(lambda f=f: st_field(f, depth))) for f in plain
    }
    for o in oneofs:
        choices = [st.none()] + [
            st.tuples(st.just(f.name), st.deferred(lambda f=f: st_field(f, depth)))
            for f in o.fields
        ]
        parts[f"oneof:{o.name}"] = st.one_of(*choices)

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        for key, value in values.items():
            if value is None:
                continue
            if key.startswith("oneof:"):
                key, value = value
            assign(msg, desc.fields_by_name[key], value)
        return msg

    return st.fixed_dictionaries(parts).map(build)


def requests_for(method: Any) -> st.SearchStrategy[Any]:
    """The request of one RPC (a MethodDescriptor); a list of 0-5 messages for client streams."""
    one = st_message(method.input_type)
    if method.client_streaming:
        return st.lists(one, max_size=5)
    return one
