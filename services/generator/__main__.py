"""`python -m boothstudio.services.generator`: run the generator service (see `--help`)."""

from boothstudio.services.generator.servicer import build
from boothstudio.shared.server import exit_service

if __name__ == "__main__":
    exit_service("generator", build)
