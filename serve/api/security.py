"""The bearer-token check in front of the routes: ``require_tenant`` resolves the caller's tenant before a
route reads anything of the request, its body included."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve.api.errors import InternalError
from serve.auth import Authenticator

logger = logging.getLogger(__name__)

_STATE_ATTRIBUTE = "authenticator"

# Declares the scheme in the OpenAPI document (the "Authorize" button of /docs); the header itself is parsed
# by the Authenticator so missing and malformed headers get distinct messages.
_bearer_scheme = HTTPBearer(auto_error=False, scheme_name="BearerToken", description="API token of a tenant")


def install_authenticator(app: FastAPI, authenticator: Authenticator) -> None:
    setattr(app.state, _STATE_ATTRIBUTE, authenticator)


async def require_tenant(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)] = None,
) -> str:
    """Dependency: the caller's tenant id (401 otherwise). Also kept on ``request.state.tenant`` for logs."""
    authenticator = getattr(request.app.state, _STATE_ATTRIBUTE, None)
    if not isinstance(authenticator, Authenticator):
        logger.error("no authenticator installed on the app; refusing the request")
        raise InternalError()
    tenant = authenticator.authenticate(request.headers.get("authorization"))
    request.state.tenant = tenant
    return tenant


Tenant = Annotated[str, Depends(require_tenant)]
