"""Stability AI's hosted REST API as a backend."""

from boothstudio.services.generator.adapters.hosted.adapter import HostedAdapter, HostedCall

__all__ = ["HostedAdapter", "HostedCall"]
