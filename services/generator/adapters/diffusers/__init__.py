"""The local diffusers backend adapter."""

from boothstudio.services.generator.adapters.diffusers.adapter import (
    DiffusersAdapter,
    DiffusersPlan,
)

__all__ = ["DiffusersAdapter", "DiffusersPlan"]
