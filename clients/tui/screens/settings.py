"""Settings: service addresses, API key, theme and how images are drawn."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Input, Label, Select, Static

from boothstudio.clients.tui.screens.base import StudioScreen
from boothstudio.clients.tui.settings import IMAGE_METHODS, StudioSettings
from boothstudio.clients.tui.widgets.fields import FormField


class SettingsScreen(StudioScreen):
    MODE = "settings"
    TITLE_TEXT = "Settings"

    BINDINGS = [Binding("ctrl+s", "save", "Save")]

    def compose_body(self) -> ComposeResult:
        s = self.studio.settings
        themes = sorted(self.app.available_themes)
        with VerticalScroll(id="settings-body", classes="body form"):
            yield Label("Services", classes="section")
            yield FormField(
                "Catalog",
                Input(s.catalog, placeholder="host:port", id="set-catalog"),
                field="catalog",
            )
            yield FormField(
                "Generator (comma-separated for several)",
                Input(s.generator, placeholder="host:port", id="set-generator"),
                field="generator",
            )
            yield FormField(
                "Trainer",
                Input(s.trainer, placeholder="host:port", id="set-trainer"),
                field="trainer",
            )
            yield FormField(
                "API key",
                Input(s.api_key, password=True, placeholder="none", id="set-api-key"),
                field="api_key",
            )
            yield Label("Look", classes="section")
            with Horizontal(classes="row"):
                yield FormField(
                    "Theme",
                    Select(
                        [(t, t) for t in themes],
                        value=self.app.theme,
                        allow_blank=False,
                        id="set-theme",
                    ),
                    field="theme",
                )
                yield FormField(
                    "Images",
                    Select(
                        [(m, m) for m in IMAGE_METHODS],
                        value=s.images,
                        allow_blank=False,
                        id="set-images",
                    ),
                    field="images",
                )
            yield Button("Save  ctrl+s", variant="primary", id="settings-save")
            where = self.studio.settings_path
            yield Static(
                f"Saved to {where}" if where else "Not saved to disk (no settings file).",
                classes="hint",
            )

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        select = self.query_one("#set-theme", Select)
        if select.value != self.app.theme:
            select.value = self.app.theme

    @on(Select.Changed, "#set-theme")
    def theme_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.app.theme:
            self.studio.set_theme(event.value)

    def form(self) -> StudioSettings:
        def value(wid: str) -> str:
            return self.query_one(wid, Input).value.strip()

        images = self.query_one("#set-images", Select).value
        return self.studio.settings.updated(
            catalog=value("#set-catalog"),
            generator=value("#set-generator"),
            trainer=value("#set-trainer"),
            api_key=value("#set-api-key"),
            theme=self.app.theme,
            images=images if isinstance(images, str) else None,
        )

    def action_save(self) -> None:
        self.clear_field_errors()
        new = self.form()
        bad = False
        for name in ("catalog", "generator", "trainer"):
            for address in getattr(new, name).split(","):
                if address and ":" not in address:
                    self._field_error(name, f"{address!r}: expected host:port")
                    bad = True
        if bad:
            return
        self.studio.apply_settings(new)
        self.say("settings saved; reconnecting")
        self.notify("settings saved")

    def _field_error(self, name: str, message: str) -> None:
        for field in self.query(FormField):
            if field.claims(name):
                field.set_error(message)

    @on(Button.Pressed, "#settings-save")
    def save_pressed(self) -> None:
        self.action_save()
