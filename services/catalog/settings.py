"""The Catalog's settings (YAML `catalog:` section, `--set KEY=VALUE`,
BOOTHSTUDIO_CATALOG_<KEY>)."""

from __future__ import annotations

from pydantic import Field

from boothstudio.services.diffusion.backends import RemoteBackendSettings


class CatalogSettings(RemoteBackendSettings):
    embedded_model: str = Field(
        "",
        description="folder of the default model (default: the shipped "
        "services/diffusion/embedded_model)",
        json_schema_extra={"env": "BOOTHSTUDIO_EMBEDDED_MODEL"},
    )
    generator_device: str = Field(
        "cpu", description="device shown for the local diffusers backend"
    )
