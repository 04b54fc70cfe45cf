"""`python -m services.trainer`: run the trainer service (see `--help`)."""

from services.trainer.servicer import build
from shared.server import exit_service

if __name__ == "__main__":
    exit_service("trainer", build)
