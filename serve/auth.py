"""Bearer-token authentication, on every route but /healthz."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from fastapi import Request
from fastapi.exceptions import HTTPException

from wtb_ray.config import Settings
from wtb_ray.domain.errors import InvalidInput

TOKEN_FILE = "api_token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(settings: Settings) -> str:
    """The configured token; on a loopback host without one, a generated token kept in
    <home>/api_token (0600). Any other host without a token is refused."""
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return settings.api_token.get_secret_value()
    if not is_loopback(settings.api_host):
        raise InvalidInput(f"refusing to serve on {settings.api_host}: set WTB_API_TOKEN "
                           "(a bearer token is required off loopback)")
    path = token_path(settings)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def token_path(settings: Settings) -> Path:
    return settings.home.expanduser() / TOKEN_FILE


def require_token(request: Request) -> None:
    from serve.context import current

    expected = current().token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             expected.encode()):
        raise HTTPException(401, "a valid bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})
