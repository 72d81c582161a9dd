"""Authorization of gRPC calls by the caller's certificate (``docs/security.md#who-may-call-what``).

Each server makes one ``Authorizer``: ``secure=True`` when its port runs mutual TLS, False in explicit plaintext
mode. Servicers call ``require_role`` or ``require_host`` at the top of a method; a refusal aborts the call with
PERMISSION_DENIED and a message that says which certificate was refused for what, so an operator can fix the
certificate (roles are subject OUs; host ids come from the CN/DNS and IP SANs).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from dragonfly.common.identity import ROLE_MANAGER, Identity, grpc_identity

log = logging.getLogger(__name__)


class Authorizer:
    """Check the identity behind each call of one server."""

    __slots__ = ("secure",)

    def __init__(self, *, secure: bool) -> None:
        self.secure = secure

    async def caller(self, context: Any) -> Identity | None:
        """Return the caller's identity; None in plaintext mode. A secure call without one is UNAUTHENTICATED."""
        if not self.secure:
            return None
        identity = grpc_identity(context)
        if identity is None:
            # The TLS layer requires a client certificate, so this is a misconfigured server, not a client error.
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no verified client certificate on this call")
        return identity

    async def require_role(self, context: Any, roles: tuple[str, ...], action: str) -> Identity | None:
        """Let the call through only if the caller's certificate has one of ``roles``."""
        identity = await self.caller(context)
        if identity is not None and not identity.has_role(*roles):
            await self.deny(context, identity, f"{action} needs a certificate with role {' or '.join(roles)}")
        return identity

    async def require_host(
        self, context: Any, host_id: str, action: str, *, admin_roles: tuple[str, ...] = (ROLE_MANAGER,)
    ) -> Identity | None:
        """Let the call through only if the caller owns ``host_id`` (or has one of ``admin_roles``)."""
        identity = await self.caller(context)
        if identity is not None and not identity.owns_host_id(host_id) and not identity.has_role(*admin_roles):
            await self.deny(context, identity, f"{action} for host {host_id[:256]!r}: the certificate does not own it")
        return identity

    @staticmethod
    async def deny(context: Any, identity: Identity, reason: str) -> None:
        """Abort the call with PERMISSION_DENIED (and log who was refused for what)."""
        log.warning("call refused", extra={"caller": identity.describe(), "reason": reason})
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{reason} (caller: {identity.describe()})")
