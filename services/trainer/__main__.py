"""`python -m boothstudio.services.trainer`: run the trainer service (see `--help`)."""

from boothstudio.services.trainer.servicer import build
from boothstudio.shared.server import exit_service

if __name__ == "__main__":
    exit_service("trainer", build)
