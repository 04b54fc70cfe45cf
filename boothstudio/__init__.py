"""BoothStudio: DreamBooth fine-tuning and Stable Diffusion generation as gRPC services.

    from boothstudio import BoothStudio

    with BoothStudio() as client:
        images = client.generate("a red circle on a blue background", seed=1)

Everything the project ships is under this one name, so nothing collides with another
project's top-level packages:

- `boothstudio.BoothStudio`, `boothstudio.AsyncBoothStudio` and the SDK's other public names
  (`boothstudio.clients.sdk`), loaded on first use;
- `boothstudio.v1`: the generated protobuf and gRPC code of the contracts in protos/;
- `boothstudio.shared`, `boothstudio.clients` (light: the `boothstudio-sdk` distribution);
- `boothstudio.services` (torch, diffusers: the `boothstudio[services]` distribution).

In the repository these are the folders shared/, clients/, services/ and shared/gen/, linked
from boothstudio/ so that one import name reaches them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AsyncBoothStudio", "BoothStudio"]


def __getattr__(name: str) -> Any:
    # Lazy: importing boothstudio.v1 (as the generated code and the services do) must not pull
    # the SDK in, and the SDK imports boothstudio.v1 itself.
    if name.startswith("_"):
        raise AttributeError(name)
    from boothstudio.clients import sdk

    try:
        return getattr(sdk, name)
    except AttributeError:
        raise AttributeError(f"module 'boothstudio' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    from boothstudio.clients import sdk

    return sorted({*globals(), *sdk.__all__})
