"""`OptionValue` (sampler options, backend options, parameter defaults) to and from Python.

The one conversion both sides use: the Catalog describes defaults with it, the Generator reads
requests with it, the SDK writes them with it.
"""

from __future__ import annotations

from boothstudio.v1 import common_pb2

OptionScalar = bool | int | float | str


def to_option_value(value: OptionScalar) -> common_pb2.OptionValue:
    """The message for a scalar; TypeError for anything else."""
    # bool first: a bool is also an int
    if isinstance(value, bool):
        return common_pb2.OptionValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.OptionValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.OptionValue(float_value=value)
    if isinstance(value, str):
        return common_pb2.OptionValue(string_value=value)
    raise TypeError(f"options take int, float, bool or str, not {type(value).__name__}")


def from_option_value(value: common_pb2.OptionValue) -> OptionScalar | None:
    """The scalar a message holds (None when it holds none)."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    result: OptionScalar = getattr(value, kind)
    return result


__all__ = ["OptionScalar", "from_option_value", "to_option_value"]
