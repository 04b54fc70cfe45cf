"""Advanced settings built from a sampler's parameter schema (rebuilt when the sampler changes).

Each `Parameter` becomes a FormField for ``sampler_options.<name>``: an Input for numbers and
text, a Switch for booleans, a Select for choices. `values()` returns only what the person
changed (unset = the sampler's default on the server).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Input, Select, Static, Switch

from boothstudio.clients.sdk import Parameter, ParameterType, Sampler
from boothstudio.clients.sdk.types import OptionScalar
from boothstudio.clients.tui.widgets.fields import FormField


def _number(p: Parameter, value: float | None) -> str:
    if value is None:
        return ""
    if p.type is ParameterType.INT:
        return str(int(value))
    return f"{value:g}"


class SamplerSettings(Vertical):
    """The chosen sampler's own options."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.sampler: Sampler | None = None

    def compose(self) -> ComposeResult:
        yield Static("Pick a sampler to see its settings.", classes="hint", id="sampler-help")

    async def show_sampler(self, sampler: Sampler | None) -> None:
        """Replace the fields with those of `sampler`."""
        self.sampler = sampler
        await self.remove_children()
        if sampler is None:
            await self.mount(Static("Pick a sampler to see its settings.", classes="hint"))
            return
        widgets: list[Widget] = [
            Static(sampler.description or sampler.label or sampler.id, id="sampler-help")
        ]
        if not sampler.parameters:
            widgets.append(Static(f"{sampler.label or sampler.id} has no options.", classes="hint"))
        for p in sampler.parameters:
            widgets.append(self._field(p))
        await self.mount_all(widgets)

    def _field(self, p: Parameter) -> FormField:
        wid = f"opt-{p.name}"
        widget: Widget
        if p.type is ParameterType.BOOL:
            widget = Switch(value=bool(p.default), id=wid)
        elif p.type is ParameterType.CHOICE and p.choices:
            options = [(c, c) for c in p.choices]
            default = str(p.default) if p.default in p.choices else p.choices[0]
            widget = Select(options, value=default, allow_blank=False, id=wid)
        elif p.type in (ParameterType.INT, ParameterType.FLOAT):
            bounds = ""
            if p.min is not None or p.max is not None:
                bounds = f" [{_number(p, p.min) or '…'}..{_number(p, p.max) or '…'}]"
            number = float(p.default) if isinstance(p.default, int | float) else None
            widget = Input(
                placeholder=f"{_number(p, number)}{bounds}",
                type="integer" if p.type is ParameterType.INT else "number",
                id=wid,
            )
        else:
            widget = Input(placeholder=str(p.default or ""), id=wid)
        label = p.label or p.name
        field = FormField(label, widget, field=f"sampler_options.{p.name}", classes="option")
        field.tooltip = p.help or None
        return field

    def values(self) -> dict[str, OptionScalar]:
        """Options the person set (empty inputs and untouched defaults are left out)."""
        out: dict[str, OptionScalar] = {}
        if self.sampler is None:
            return out
        for p in self.sampler.parameters:
            try:
                widget = self.query_one(f"#opt-{p.name}")
            except Exception:
                continue
            if isinstance(widget, Switch):
                if widget.value != bool(p.default):
                    out[p.name] = widget.value
            elif isinstance(widget, Select):
                if isinstance(widget.value, str) and widget.value != p.default:
                    out[p.name] = widget.value
            elif isinstance(widget, Input) and widget.value.strip():
                text = widget.value.strip()
                if p.type is ParameterType.INT:
                    out[p.name] = int(float(text))
                elif p.type is ParameterType.FLOAT:
                    out[p.name] = float(text)
                else:
                    out[p.name] = text
        return out
