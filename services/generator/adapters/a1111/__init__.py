"""The AUTOMATIC1111 webui backend adapter (HTTP API under /sdapi/v1)."""

from boothstudio.services.generator.adapters.a1111.adapter import A1111Adapter, A1111Error

__all__ = ["A1111Adapter", "A1111Error"]
