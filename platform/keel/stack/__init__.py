"""The local stack: real services (MLflow, Redis, Prometheus, ...) supervised on loopback."""

from keel.stack.services import SERVICE_NAMES, build_services
from keel.stack.supervisor import Stack

__all__ = ["SERVICE_NAMES", "Stack", "build_services"]
