"""Modal dialogs returning typed results."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from boothstudio.clients.sdk import AsyncBoothStudio, GalleryImage
from boothstudio.clients.tui.images import image_widget
from boothstudio.clients.tui.screens.base import newest_first
from boothstudio.clients.tui.settings import ImageMethod
from boothstudio.clients.tui.widgets.fields import describe


class ConfirmDialog(ModalScreen[bool]):
    """Yes or no."""

    BINDINGS = [
        Binding("escape", "answer(False)", "No"),
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question, classes="dialog-title")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes", variant="error", id="yes")
                yield Button("No", variant="primary", id="no")

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PathDialog(ModalScreen[str | None]):
    """Ask for a file path (None = cancelled)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "") -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.value, placeholder="path", id="dialog-path")
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    @on(Button.Pressed, "#ok")
    def ok(self) -> None:
        self.dismiss(self.query_one(Input).value.strip() or None)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class PickImageDialog(ModalScreen[str | None]):
    """Choose an image of the gallery; returns its id."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    @dataclass
    class Loaded(Message):
        """The gallery listing arrived (or failed: `error`)."""

        images: list[GalleryImage]
        error: str = ""

    def __init__(self, client: AsyncBoothStudio) -> None:
        super().__init__(classes="dialog")
        self.client = client

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box tall"):
            yield Label("Pick an image from the gallery", classes="dialog-title")
            yield OptionList(id="pick-list")
            yield Static("loading…", id="pick-status")

    def on_mount(self) -> None:
        self.load()

    @work(exclusive=True)
    async def load(self) -> None:
        try:
            page = await self.client.list_images(page_size=100)
        except Exception as exc:
            self.post_message(self.Loaded([], describe(exc)))
            return
        self.post_message(self.Loaded(newest_first(page.items)))

    @on(Loaded)
    def show(self, event: Loaded) -> None:
        images = event.images
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options(
            Option(f"{img.prompt[:40] or '(no prompt)'}  ·  seed {img.seed}", id=img.image_id)
            for img in images
        )
        status = self.query_one("#pick-status", Static)
        if event.error:
            status.update(event.error)
            return
        status.update(f"{len(images)} images" if images else "the gallery is empty")
        if images:
            options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected)
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ImageViewer(ModalScreen[None]):
    """One image, as large as the terminal allows."""

    BINDINGS = [Binding("escape,f,q", "close", "Close")]

    def __init__(self, png: bytes, caption: str, method: ImageMethod) -> None:
        super().__init__(classes="dialog")
        self.png = png
        self.caption = caption
        self.method = method

    def compose(self) -> ComposeResult:
        with Vertical(classes="viewer"):
            yield image_widget(self.png, self.method, id="viewer-image")
            yield Static(self.caption, id="viewer-caption")

    def action_close(self) -> None:
        self.dismiss(None)
