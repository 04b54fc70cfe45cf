"""Form fields that can show a service's complaint about them, right under the input.

A `FormField` names the request fields it stands for (``"steps"``, ``"sampler_options.eta"``,
``"config.identifier"``...). `show_violations` hands each InvalidArgument field violation to the
field that claims it and returns those that none claimed (to be shown elsewhere).

`parse_int` and `parse_float` read a form's text the same way on every screen (blank = not set,
anything else a number or an InvalidArgument of that field); `model_label` names a model in a
model select.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast
from weakref import WeakKeyDictionary

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.dom import DOMNode
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Select, Static

from boothstudio.clients.sdk import BoothStudioError, FieldViolation, GenerateParams, Model
from boothstudio.clients.sdk._convert import readable_enum_names
from boothstudio.clients.sdk.errors import invalid

N = TypeVar("N", int, float)


class FieldError(Static):
    """The error line under a field (hidden while empty)."""


class FormField(Vertical):
    """A label, one input widget and an error line."""

    def __init__(
        self,
        label: str,
        widget: Widget,
        *,
        field: str | Sequence[str],
        id: str | None = None,
        classes: str | None = None,
        name_fields: bool = False,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.label = label
        self.widget = widget
        self.fields = [field] if isinstance(field, str) else list(field)
        #: Errors name the field they are about (a field of many settings, e.g. key=value pairs).
        self.name_fields = name_fields
        if isinstance(widget, Input | Select | Checkbox):
            widget.compact = True

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="field-label")
        yield self.widget
        yield FieldError(classes="field-error")

    def claims(self, path: str) -> bool:
        """True when a violation of `path` concerns this field."""
        return self.claimed(path) is not None

    def claimed(self, path: str) -> str | None:
        """Which of this field's names a violation of `path` is about (None: not this field)."""
        return next(
            (
                f
                for f in self.fields
                if path == f or path.endswith("." + f) or path.startswith(f + "[")
            ),
            None,
        )

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _edited(self) -> None:
        """A new value: the complaint about the old one no longer holds."""
        if self.has_class("-invalid"):
            self.clear_error()

    def set_error(self, message: str) -> None:
        self.query_one(FieldError).update(message)
        self.set_class(bool(message), "-invalid")

    def clear_error(self) -> None:
        self.set_error("")


def clear_errors(root: DOMNode) -> None:
    for field in root.query(FormField):
        field.clear_error()


def show_violations(root: DOMNode, violations: Iterable[FieldViolation]) -> list[FieldViolation]:
    """Show each violation under the FormField (inside `root`) that claims it; return the rest."""
    fields = list(root.query(FormField))
    unclaimed: list[FieldViolation] = []
    for v in violations:
        owners = [f for f in fields if f.claims(v.field)]
        if not owners:
            unclaimed.append(v)
        for f in owners:
            named = f"{f.claimed(v.field)}: {v.description}"
            f.set_error(named if f.name_fields else v.description)
    return unclaimed


def describe(exc: BaseException) -> str:
    """One line for an error: the service's message, or the exception's text."""
    if isinstance(exc, BoothStudioError):
        reason = f" [{exc.reason}]" if getattr(exc, "reason", "") else ""
        return f"{readable_enum_names(exc.message)}{reason}"
    return str(exc) or type(exc).__name__


def parse_int(text: str, field: str) -> int | None:
    """A whole number typed in a form (None when blank); InvalidArgument of `field` otherwise."""
    return _parse(text, field, int, "must be a whole number")


def parse_float(text: str, field: str) -> float | None:
    """A number typed in a form (None when blank); InvalidArgument of `field` otherwise."""
    return _parse(text, field, float, "must be a number")


def _parse(text: str, field: str, cast: Callable[[str], N], problem: str) -> N | None:
    text = text.strip()
    if not text:
        return None
    try:
        return cast(text)
    except ValueError:
        raise invalid(field, problem) from None


#: Request fields typed as numbers: whole ones, and the rest.
INT_FIELDS = frozenset({"width", "height", "steps", "count", "seed", "mask_blur"})
FLOAT_FIELDS = frozenset({"cfg_scale", "strength"})


def form_params(root: DOMNode, widgets: Mapping[str, str]) -> GenerateParams:
    """The request fields a form sets, read from its widgets (request field -> widget id): a
    Select's chosen value, an Input's number (INT_FIELDS, FLOAT_FIELDS) or stripped text;
    blank = not set (the service's default)."""
    params: dict[str, Any] = {}
    for name, widget_id in widgets.items():
        widget = root.query_one(f"#{widget_id}")
        value: Any = None
        if isinstance(widget, Select):
            value = widget.value if isinstance(widget.value, str) else None
        elif isinstance(widget, Input) and name in INT_FIELDS:
            value = parse_int(widget.value, name)
        elif isinstance(widget, Input) and name in FLOAT_FIELDS:
            value = parse_float(widget.value, name)
        elif isinstance(widget, Input):
            value = widget.value.strip() or None
        if value is not None:
            params[name] = value
    return cast(GenerateParams, params)


_OFFERED: WeakKeyDictionary[Select[str], list[tuple[str, str]]] = WeakKeyDictionary()


def refill(
    select: Select[str], options: Iterable[tuple[str, str]], default: str = "", want: str = ""
) -> None:
    """Give `select` the service's current options (label, value) and choose `want` if offered,
    else keep the current choice if still offered, else `default`. Options as they were are
    left alone: no Changed event, so nothing that follows the choice is reset by a reload."""
    new = list(options)
    values = [v for _, v in new]
    if new != _OFFERED.get(select):
        current = select.value
        select.set_options(new)
        _OFFERED[select] = new
        if current in values:
            select.value = current
    if want in values:
        select.value = want
    elif select.value not in values and default in values:
        select.value = default


def model_label(m: Model) -> str:
    """How a model is named in a model select: its id first (fine-tunes of one subject share a
    name, never an id; a long label is cut at its end), then its name."""
    if m.display_name and m.display_name != m.id:
        return f"{m.id} · {m.display_name}"
    return m.id
