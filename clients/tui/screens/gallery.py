"""Gallery: newest first as thumbnails; the selected image large with its parameters; reuse in
Generate, edit, delete, export to a file, full view."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from boothstudio.clients.sdk import GalleryImage
from boothstudio.clients.tui.images import image_widget, set_image
from boothstudio.clients.tui.screens.base import StudioScreen, newest_first
from boothstudio.clients.tui.screens.dialogs import ConfirmDialog, ImageViewer, PathDialog
from boothstudio.clients.tui.screens.edit import ReuseEdit
from boothstudio.clients.tui.widgets.thumbs import Thumb


def parameters_text(img: GalleryImage) -> str:
    lines = [
        f"[b]{img.prompt or '(no prompt)'}[/b]",
        f"negative: {img.negative_prompt}" if img.negative_prompt else "",
        f"id {img.image_id} · job {img.job_id} #{img.index}",
        f"model {img.model_id}",
        f"sampler {img.sampler} {img.schedule} · steps {img.steps} · cfg {img.cfg_scale:g}",
        f"seed {img.seed} · {img.width}x{img.height}",
        f"generated in {img.generation_seconds:.2f}s (queued {img.queue_seconds:.2f}s)",
        "img2img" if img.has_init_image and not img.has_mask else "",
        "inpainted" if img.has_mask else "",
    ]
    options = img.params.get("sampler_options") or {}
    if options:
        lines.append("options " + ", ".join(f"{k}={v}" for k, v in options.items()))
    return "\n".join(line for line in lines if line)


class GalleryScreen(StudioScreen):
    MODE = "gallery"
    TITLE_TEXT = "Gallery"

    BINDINGS = [
        Binding("ctrl+r", "refresh", "Refresh"),
        Binding("f,enter", "full_view", "Full view"),
        Binding("r", "reuse", "Reuse"),
        Binding("e", "edit", "Edit"),
        Binding("x", "export", "Export"),
        Binding("d,delete", "delete", "Delete"),
        Binding("down,right", "app.focus_next", "Next", show=False),
        Binding("up,left", "app.focus_previous", "Previous", show=False),
    ]

    @dataclass
    class Listed(Message):
        images: list[GalleryImage]

    @dataclass
    class Fetched(Message):
        image: GalleryImage

    def __init__(self) -> None:
        super().__init__()
        self.images: list[GalleryImage] = []
        self.selected: GalleryImage | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="gallery-body", classes="body"):
            with VerticalScroll(id="thumbs-scroll"):
                yield Grid(id="thumbs")
                yield Static("", id="gallery-empty", classes="hint")
            with Vertical(id="gallery-detail", classes="panel"):
                yield image_widget(None, self.studio.image_method, id="gallery-image")
                yield Static("Select an image.", id="gallery-params")

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.action_refresh()

    def action_refresh(self) -> None:
        self.say("loading the gallery…")
        self.load()

    @work(exclusive=True, group="gallery")
    async def load(self) -> None:
        try:
            page = await self.client.list_images(page_size=100)
        except Exception as exc:
            self.post_message(self.Failed(exc, "gallery"))
            return
        images = newest_first(page.items)
        self.post_message(self.Listed(images))
        cache = self.studio.png_cache
        for img in images:
            if img.image_id in cache:
                continue
            try:
                full = await self.client.get_image(img.image_id)
            except Exception as exc:
                self.post_message(self.Failed(exc, "thumbnail"))
                return
            self.post_message(self.Fetched(full))

    @on(Listed)
    async def listed(self, event: Listed) -> None:
        old = [img.image_id for img in self.images]
        self.images = event.images
        self.query_one("#gallery-empty", Static).update(
            "" if self.images else "No images yet: generate some (F1)."
        )
        self.say(f"{len(self.images)} images")
        if old == [img.image_id for img in self.images]:
            return
        grid = self.query_one("#thumbs", Grid)
        await grid.remove_children()
        cache = self.studio.png_cache
        method = self.studio.image_method
        await grid.mount_all(Thumb(img, cache.get(img.image_id), method) for img in self.images)
        if self.images:
            keep = self.selected.image_id if self.selected else ""
            target = next((t for t in self.query(Thumb) if t.image.image_id == keep), None)
            (target or self.query(Thumb).first()).focus()
        else:
            self.show_detail(None)

    @on(Fetched)
    def fetched(self, event: Fetched) -> None:
        img = event.image
        if img.png:
            self.studio.png_cache[img.image_id] = img.png
        for thumb in self.query(Thumb):
            if thumb.image.image_id == img.image_id and img.png:
                thumb.show_png(img.png)
        if self.selected and self.selected.image_id == img.image_id:
            self.show_detail(self.selected)

    @on(Thumb.Selected)
    def thumb_selected(self, event: Thumb.Selected) -> None:
        self.show_detail(event.thumb.image)

    def show_detail(self, img: GalleryImage | None) -> None:
        self.selected = img
        params = self.query_one("#gallery-params", Static)
        picture = self.query_one("#gallery-image")
        if img is None:
            params.update("Select an image.")
            set_image(picture, None)
            return
        params.update(parameters_text(img))
        set_image(picture, self.studio.png_cache.get(img.image_id))

    def _selected_png(self) -> tuple[GalleryImage, bytes] | None:
        if self.selected is None:
            self.notify("select an image first")
            return None
        png = self.studio.png_cache.get(self.selected.image_id)
        if png is None:
            self.notify("the image is still loading")
            return None
        return self.selected, png

    def action_full_view(self) -> None:
        chosen = self._selected_png()
        if chosen:
            img, png = chosen
            caption = f"{img.prompt} · seed {img.seed} · {img.width}x{img.height}"
            self.app.push_screen(ImageViewer(png, caption, self.studio.image_method))

    async def action_reuse(self) -> None:
        """Its settings in Generate; an img2img or inpainted image's in Edit (Generate would
        make a txt2img of them)."""
        img = self.selected
        if img is None:
            return
        if img.has_init_image or img.has_mask:
            await self.studio.hand_over("edit", ReuseEdit(img))
        else:
            await self.studio.hand_over("generate", img)

    async def action_edit(self) -> None:
        chosen = self._selected_png()
        if chosen:
            img, png = chosen
            img.png = png
            await self.studio.hand_over("edit", img)

    def action_export(self) -> None:
        chosen = self._selected_png()
        if not chosen:
            return
        img, png = chosen
        default = str(Path.cwd() / f"{img.image_id}.png")

        def export(path: str | None) -> None:
            if path:
                self.export_png(png, Path(path).expanduser())

        self.app.push_screen(PathDialog(f"Export {img.image_id} to", default), export)

    @work(group="export")
    async def export_png(self, png: bytes, path: Path) -> None:
        try:
            await asyncio.to_thread(_write, path, png)
        except OSError as exc:
            self.post_message(self.Failed(exc, "export"))
            return
        self.post_message(self.Done(f"exported to {path}"))

    def action_delete(self) -> None:
        if self.selected is None:
            return
        img = self.selected

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.delete_image(img.image_id)

        self.app.push_screen(ConfirmDialog(f"Delete image {img.image_id}?"), confirmed)

    @work(group="delete")
    async def delete_image(self, image_id: str) -> None:
        try:
            result = await self.client.delete_images([image_id])
        except Exception as exc:
            self.post_message(self.Failed(exc, "delete"))
            return
        self.studio.png_cache.pop(image_id, None)
        self.post_message(self.Done(f"deleted {result.deleted_count} image(s)"))
        self.load()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
