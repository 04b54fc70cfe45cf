"""Modal dialogs returning typed results."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from boothstudio.clients.sdk import AsyncBoothStudio, GalleryImage
from boothstudio.clients.tui.images import image_widget
from boothstudio.clients.tui.screens.base import newest_first
from boothstudio.clients.tui.settings import ImageMethod
from boothstudio.clients.tui.widgets.fields import describe
from boothstudio.clients.tui.widgets.thumbs import Thumb


class ConfirmDialog(ModalScreen[bool]):
    """Yes or no."""

    BINDINGS = [
        Binding("escape", "answer(False)", "No"),
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No", show=False),
    ]

    #: Enter answers No: deleting takes a deliberate "y" or a click on Yes.
    AUTO_FOCUS = "#no"

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
    """Choose an image of the gallery by its thumbnail; returns its id."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("enter", "pick", "Pick"),
        Binding("down,right", "app.focus_next", "Next", show=False),
        Binding("up,left", "app.focus_previous", "Previous", show=False),
    ]

    @dataclass
    class Loaded(Message):
        """The gallery listing arrived (or failed: `error`)."""

        images: list[GalleryImage]
        error: str = ""

    @dataclass
    class Fetched(Message):
        """One image's bytes arrived (for its thumbnail)."""

        image_id: str
        png: bytes

    def __init__(
        self, client: AsyncBoothStudio, png_cache: dict[str, bytes], method: ImageMethod
    ) -> None:
        super().__init__(classes="dialog")
        self.client = client
        self.png_cache = png_cache
        self.method = method
        self.chosen: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box tall picker"):
            yield Label("Pick an image from the gallery", classes="dialog-title")
            with VerticalScroll(id="pick-scroll"):
                yield Grid(id="pick-grid")
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
        images = newest_first(page.items)
        self.post_message(self.Loaded(images))
        for img in images:
            if img.image_id in self.png_cache:
                continue
            try:
                full = await self.client.get_image(img.image_id)
            except Exception:
                continue  # no thumbnail: the caption still names it
            if full.png:
                self.post_message(self.Fetched(img.image_id, full.png))

    @on(Loaded)
    async def show(self, event: Loaded) -> None:
        images = event.images
        status = self.query_one("#pick-status", Static)
        if event.error:
            status.update(event.error)
            return
        await self.query_one("#pick-grid", Grid).mount_all(
            Thumb(img, self.png_cache.get(img.image_id), self.method) for img in images
        )
        count = f"{len(images)} images · arrows choose, enter picks"
        status.update(count if images else "the gallery is empty")
        if images:
            self.query(Thumb).first().focus()

    @on(Fetched)
    def fetched(self, event: Fetched) -> None:
        self.png_cache[event.image_id] = event.png
        for thumb in self.query(Thumb):
            if thumb.image.image_id == event.image_id:
                thumb.show_png(event.png)

    @on(Thumb.Selected)
    def selected(self, event: Thumb.Selected) -> None:
        self.chosen = event.thumb.image.image_id

    def action_pick(self) -> None:
        if self.chosen:
            self.dismiss(self.chosen)

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
