"""Checks every request passes before a servicer sees it, whatever its type.

Some bad values are bad in every field of every message, so they are refused once, here, by
walking the message (the server runner applies this to all RPCs through an interceptor):

- a float or double that is NaN or infinite (no BoothStudio setting means either);
- a string holding NUL or another control character (tab, newline and carriage return are
  fine): they end up in file names, logs, SQL and terminals, where they do harm;
- request bytes that do not parse as the method's message (the server library would answer
  UNKNOWN); `safe_deserializer` turns them into an `UndecodableRequest` marker instead.

Each problem is a FieldViolation with the field's path (`sampler_options.eta`,
`config.prior_preservation.loss_weight`, `config.validation_prompts[2]`). Range, length and
meaning stay with each service's own validation.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from boothstudio.shared.errors import MAX_VIOLATIONS, FieldViolation

# Control characters other than tab, newline and carriage return (which prompts may hold).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request whose bytes did not parse; the interceptor refuses it."""

    type_name: str
    error: str


def safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a handler's request deserializer so that bad bytes give a marker, not an exception."""
    if deserialize is None:
        return None
    name = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    type_name = getattr(name, "full_name", "the request message")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, bad UTF-8, recursion limit: all the caller's
            return UndecodableRequest(type_name, type(exc).__name__)

    return parse


def _is_value_wrapper(msg: Message) -> bool:
    oneofs = msg.DESCRIPTOR.oneofs
    return len(oneofs) == 1 and len(oneofs[0].fields) == len(msg.DESCRIPTOR.fields)


def _value_problem(fd: FieldDescriptor, value: Any) -> str | None:
    if fd.type in _FLOATS:
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
    elif fd.type == FieldDescriptor.TYPE_STRING:
        match = _CONTROL.search(value)
        if match:
            return f"contains a control character ({match.group()!r})"
    return None


class _Enough(Exception):
    """MAX_VIOLATIONS found: enough to fix a request; a hostile one (a million NaNs in a
    repeated field) must not make us build a million violations."""


def message_problems(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Non-finite numbers and control characters anywhere in `message`, by field path (at
    most MAX_VIOLATIONS of them)."""
    problems: list[FieldViolation] = []

    def add(path: str, problem: str) -> None:
        problems.append(FieldViolation(path, problem))
        if len(problems) >= MAX_VIOLATIONS:
            raise _Enough

    def walk(msg: Message, path: str, map_value: bool = False) -> None:
        # A map's value wrapper (every field in one oneof, like OptionValue) is one value to
        # its user: `sampler_options.eta`, not `sampler_options.eta.float_value`.
        wrapper = map_value and _is_value_wrapper(msg)
        for fd, value in msg.ListFields():
            name = path.rstrip(".") if wrapper else f"{path}{fd.name}"
            entry = fd.message_type
            if entry is not None and entry.GetOptions().map_entry:
                key_fd, value_fd = entry.fields_by_name["key"], entry.fields_by_name["value"]
                for key, item in value.items():
                    key_problem = _value_problem(key_fd, key)
                    if key_problem:
                        add(name, f"key {key_problem}")
                        continue
                    where = f"{name}.{key}" if _PLAIN_KEY.match(str(key)) else f"{name}[{key!r}]"
                    if value_fd.message_type is not None:
                        walk(item, where + ".", map_value=True)
                    else:
                        check(value_fd, item, where)
            elif fd.is_repeated:
                for i, item in enumerate(value):
                    if fd.message_type is not None:
                        walk(item, f"{name}[{i}].")
                    else:
                        check(fd, item, f"{name}[{i}]")
            elif fd.message_type is not None:
                walk(value, name + ".")
            else:
                check(fd, value, name)

    def check(fd: FieldDescriptor, value: Any, path: str) -> None:
        problem = _value_problem(fd, value)
        if problem:
            add(path, problem)

    with contextlib.suppress(_Enough):
        walk(message, prefix)
    return problems


__all__ = ["UndecodableRequest", "message_problems", "safe_deserializer"]
