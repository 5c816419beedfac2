"""Bearer tokens issued by the Identity Service, and the project access rule.

A token carries `sub` (the user or service) and `projects` (the project ids it may
use; `"*"` for all, e.g. an internal recommender service). A caller asking for a
project outside its token gets 404, the same answer as for a project that does not
exist, so ids cannot be probed.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.errors import ProjectNotFound, Unauthorized
from app.core.settings import AuthSettings, ServiceSettings

PROJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_PROJECT_ID_RE = re.compile(PROJECT_ID_PATTERN)
ALL_PROJECTS = "*"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and which projects they may touch."""

    sub: str
    projects: frozenset[str]

    def may_access(self, project_id: str) -> bool:
        return ALL_PROJECTS in self.projects or project_id in self.projects


DEV_PRINCIPAL = Principal(sub="dev", projects=frozenset({ALL_PROJECTS}))


# Verified tokens remembered per process. A recommender sends the same token on every
# read; checking its signature again each time cost ~30 µs of a ~1 ms feature read.
_VERIFIED_CACHE_SIZE = 4096


class TokenVerifier:
    """Checks signature, expiry and the optional issuer/audience of a JWT.

    A token that passed is remembered (bounded LRU) until its `exp`, so repeated calls with
    the same token skip the signature check; an expired one is never served from memory.
    """

    def __init__(self, settings: AuthSettings) -> None:
        self._algorithm = settings.algorithm
        if settings.algorithm == "HS256":
            self._key = settings.secret.get_secret_value() if settings.secret else ""
        else:
            self._key = settings.public_key or ""
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def verify(self, token: str) -> Principal:
        """Returns the token's principal; raises Unauthorized for any invalid token."""
        hit = self._verified.get(token)
        if hit is not None:
            principal, expires_at = hit
            if time.time() < expires_at:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        principal, expires_at = self._decode(token)
        self._verified[token] = (principal, expires_at)
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["sub", "exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("Token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"Invalid token: {exc}") from exc
        projects = claims.get("projects", [])
        if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
            raise Unauthorized("Invalid token: 'projects' must be a list of project ids")
        principal = Principal(sub=str(claims["sub"]), projects=frozenset(projects))
        return principal, float(claims["exp"])


def issue_token(
    settings: AuthSettings, sub: str, projects: list[str], ttl_seconds: int = 30 * 86400
) -> str:
    """Mints an HS256 token (standalone's dev token and tests; production tokens come from
    the Identity Service)."""
    if settings.secret is None:
        raise ValueError("issuing a token needs JWT_SECRET")
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, "projects": projects, "iat": now}
    claims["exp"] = now + ttl_seconds
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience
    return jwt.encode(claims, settings.secret.get_secret_value(), algorithm="HS256")


_bearer = HTTPBearer(auto_error=False, description="JWT from the Identity Service")


# The dependencies below are `async def` although they never await: FastAPI runs a sync
# dependency in a worker thread, and that hop cost more than the JWT check itself on
# the serving hot path (measured by bench/serving_bench.py).
async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the Authorization header (or the dev principal when auth is off)."""
    settings: ServiceSettings = request.app.state.settings
    if settings.auth_disabled:
        return DEV_PRINCIPAL
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Missing bearer token")
    verifier: TokenVerifier = request.app.state.token_verifier
    return verifier.verify(credentials.credentials)


def principal_of(request: Request) -> Principal:
    """`get_principal` as a plain call, for routes served without FastAPI's dependency
    solving (serving's reads): the same header parsing (HTTPBearer's), the same answers.
    Raises Unauthorized."""
    settings: ServiceSettings = request.app.state.settings
    if settings.auth_disabled:
        return DEV_PRINCIPAL
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if not (scheme and token) or scheme.lower() != "bearer":
        raise Unauthorized("Missing bearer token")
    verifier: TokenVerifier = request.app.state.token_verifier
    return verifier.verify(token)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def accessible_project(project_id: str, principal: Principal) -> str:
    """Returns `project_id` when `principal` may use it; raises ProjectNotFound otherwise."""
    # A malformed id and a foreign project look the same from outside: not found.
    if not _PROJECT_ID_RE.fullmatch(project_id) or not principal.may_access(project_id):
        raise ProjectNotFound(f"Project {project_id!r} not found")
    return project_id


async def get_project_id(
    project_id: Annotated[str, Path(description="Project id (from the Identity Service)")],
    principal: PrincipalDep,
) -> str:
    """The path's project id, once the caller is known to have access to it."""
    return accessible_project(project_id, principal)


ProjectDep = Annotated[str, Depends(get_project_id)]
