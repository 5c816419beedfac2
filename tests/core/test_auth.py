"""Bearer tokens: what the verifier accepts, refuses, and remembers."""

from __future__ import annotations

import time

import jwt
import pytest
from pydantic import SecretStr

from app.core.auth import TokenVerifier, issue_token
from app.core.errors import Unauthorized
from app.core.settings import AuthSettings

SETTINGS = AuthSettings(secret=SecretStr("s" * 40))


def test_a_valid_token_gives_its_subject_and_projects() -> None:
    principal = TokenVerifier(SETTINGS).verify(issue_token(SETTINGS, "alice", ["p1", "p2"]))
    assert principal.sub == "alice"
    assert principal.may_access("p1")
    assert not principal.may_access("p3")


def test_a_token_signed_with_another_secret_is_refused() -> None:
    other = AuthSettings(secret=SecretStr("o" * 40))
    with pytest.raises(Unauthorized, match="Invalid token"):
        TokenVerifier(SETTINGS).verify(issue_token(other, "mallory", ["*"]))


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    verifier = TokenVerifier(SETTINGS)
    exp = int(time.time()) + 2
    token = jwt.encode(
        {"sub": "alice", "projects": ["p1"], "exp": exp},
        SETTINGS.secret.get_secret_value() if SETTINGS.secret else "",
        algorithm="HS256",
    )
    assert verifier.verify(token).sub == "alice"
    assert verifier.verify(token).sub == "alice"  # now from memory
    time.sleep(max(0.0, exp - time.time()) + 0.1)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)


def test_a_refused_token_is_not_remembered() -> None:
    verifier = TokenVerifier(SETTINGS)
    bad = issue_token(SETTINGS, "alice", ["p1"])[:-2] + "xx"
    for _ in range(2):
        with pytest.raises(Unauthorized):
            verifier.verify(bad)
