"""API-key authentication and role-based authorisation.

Clients send a key as metadata, either `x-api-key: <key>` or `authorization: Bearer <key>`.
Each configured key carries roles; a role implies others:

    admin    -> everything
    generate -> read  (+ Generate, CancelGeneration, DeleteImages)
    train    -> read  (+ training jobs, uploads, registering models)
    read     -> list/get/watch calls

Every RPC of boothstudio.v1 has a required role in METHOD_ROLES (a test keeps the table complete).
Health checks and server reflection are public. With no keys configured, auth is off and every
call runs as an anonymous admin.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from boothstudio.shared.errors import PermissionDenied, Unauthenticated

READ, GENERATE, TRAIN, ADMIN = "read", "generate", "train", "admin"

#: roles a role grants (itself included)
ROLE_IMPLIES: dict[str, frozenset[str]] = {
    READ: frozenset({READ}),
    GENERATE: frozenset({GENERATE, READ}),
    TRAIN: frozenset({TRAIN, READ}),
    ADMIN: frozenset({ADMIN, TRAIN, GENERATE, READ}),
}

_P = "/boothstudio.v1."

#: full method name -> role required to call it
METHOD_ROLES: dict[str, str] = {
    # CatalogService
    f"{_P}CatalogService/ListModels": READ,
    f"{_P}CatalogService/GetModel": READ,
    f"{_P}CatalogService/GetModelPreview": READ,
    f"{_P}CatalogService/ImportModel": TRAIN,
    f"{_P}CatalogService/DeleteModel": ADMIN,
    f"{_P}CatalogService/ListSamplers": READ,
    f"{_P}CatalogService/ListBackends": READ,
    # GeneratorService
    f"{_P}GeneratorService/Generate": GENERATE,
    f"{_P}GeneratorService/CancelGeneration": GENERATE,
    f"{_P}GeneratorService/ListImages": READ,
    f"{_P}GeneratorService/GetImage": READ,
    f"{_P}GeneratorService/DeleteImages": GENERATE,
    # TrainerService
    f"{_P}TrainerService/CreateTrainingJob": TRAIN,
    f"{_P}TrainerService/UploadImages": TRAIN,
    f"{_P}TrainerService/GetTrainingJob": READ,
    f"{_P}TrainerService/ListTrainingJobs": READ,
    f"{_P}TrainerService/WatchTrainingJob": READ,
    f"{_P}TrainerService/CancelTrainingJob": TRAIN,
    f"{_P}TrainerService/ResumeTrainingJob": TRAIN,
    f"{_P}TrainerService/DeleteTrainingJob": TRAIN,
}

#: method prefixes anyone may call (probes and tooling)
PUBLIC_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

API_KEY_HEADER = "x-api-key"
AUTHORIZATION_HEADER = "authorization"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key fingerprint (never the key) and the roles granted."""

    key_id: str
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        return any(role in ROLE_IMPLIES.get(r, frozenset()) for r in self.roles)


ANONYMOUS_ADMIN = Principal("anonymous", frozenset({ADMIN}))

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "boothstudio_principal", default=None
)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled (inside a servicer), or None outside an RPC."""
    return _current.get()


def set_current_principal(p: Principal | None) -> contextvars.Token[Principal | None]:
    return _current.set(p)


def key_fingerprint(key: str) -> str:
    """Short non-reversible id of a key, safe to log."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def required_role(method: str) -> str | None:
    """Role needed for a full method name; None for public methods. Unknown methods need admin."""
    if method.startswith(PUBLIC_PREFIXES):
        return None
    return METHOD_ROLES.get(method, ADMIN)


def extract_key(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The API key from `x-api-key` or `authorization: Bearer ...` metadata."""
    for key, value in metadata:
        k = key.lower()
        v = value.decode() if isinstance(value, bytes) else value
        if k == API_KEY_HEADER and v:
            return v.strip()
        if k == AUTHORIZATION_HEADER:
            scheme, _, token = v.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Authenticator:
    """Checks keys against the configured table (hashed, constant-time comparison)."""

    def __init__(self, keys: Mapping[str, frozenset[str]]) -> None:
        self._keys = {
            hashlib.sha256(k.encode()).digest(): (key_fingerprint(k), roles)
            for k, roles in keys.items()
        }

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def lookup(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode()).digest()
        for stored, (fp, roles) in self._keys.items():
            if hmac.compare_digest(stored, digest):
                return Principal(fp, roles)
        return None

    def authorize(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]]
    ) -> Principal | None:
        """Return the caller, or raise Unauthenticated / PermissionDenied.

        Returns ANONYMOUS_ADMIN when auth is off, None for public methods.
        """
        role = required_role(method)
        if role is None:
            return None
        if not self.enabled:
            return ANONYMOUS_ADMIN
        key = extract_key(metadata)
        if key is None:
            raise Unauthenticated(
                "missing API key: send 'x-api-key' or 'authorization: Bearer <key>' metadata",
                reason="API_KEY_MISSING",
            )
        principal = self.lookup(key)
        if principal is None:
            raise Unauthenticated("invalid API key", reason="API_KEY_INVALID")
        if not principal.has(role):
            raise PermissionDenied(
                f"this API key lacks the '{role}' role needed for {method.rsplit('/', 1)[-1]}",
                reason="ROLE_REQUIRED",
                metadata={"required_role": role, "method": method},
            )
        return principal
