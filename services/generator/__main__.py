"""`python -m services.generator`: run the generator service (see `--help`)."""

from services.generator.servicer import build
from shared.server import exit_service

if __name__ == "__main__":
    exit_service("generator", build)
