"""Production refuses unsafe auth settings, but only in the processes that verify bearer
tokens (config API, serving, standalone); ingestion and compute never read a token, so
they start without a JWT secret. Development accepts anything.

Settings are read from the environment, as a deployed process reads them.
"""

from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError

from app.core.settings import (
    ComputeSettings,
    ConfigApiSettings,
    IngestionSettings,
    ServiceSettings,
    ServingSettings,
    StandaloneSettings,
)

TOKEN_VERIFIERS: list[type[ServiceSettings]] = [
    ConfigApiSettings,
    ServingSettings,
    StandaloneSettings,
]
NO_TOKENS: list[type[ServiceSettings]] = [IngestionSettings, ComputeSettings]
ALL = [*TOKEN_VERIFIERS, *NO_TOKENS]
STRONG = secrets.token_urlsafe(32)
PUBLIC_KEY = "-----BEGIN PUBLIC KEY-----\nMFkw...\n-----END PUBLIC KEY-----"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the shell that runs the tests leaks into the settings."""
    for name in (
        "ENVIRONMENT",
        "AUTH_DISABLED",
        "JWT_SECRET",
        "JWT_ALGORITHM",
        "JWT_PUBLIC_KEY",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
    ):
        monkeypatch.delenv(name, raising=False)


def production(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("cls", TOKEN_VERIFIERS, ids=lambda c: c.__name__)
class TestProductionRefusesUnsafeAuthWhereTokensAreVerified:
    def test_missing_jwt_secret_is_refused(
        self, cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        production(monkeypatch)
        with pytest.raises(ValidationError, match="JWT_SECRET"):
            cls()

    @pytest.mark.parametrize("weak", ["changethis", "secret", "dev-secret", "x" * 31])
    def test_known_or_short_secret_is_refused(
        self, cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch, weak: str
    ) -> None:
        production(monkeypatch, JWT_SECRET=weak)
        with pytest.raises(ValidationError, match="JWT_SECRET"):
            cls()

    def test_auth_disabled_is_refused_even_with_a_strong_secret(
        self, cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        production(monkeypatch, JWT_SECRET=STRONG, AUTH_DISABLED="true")
        with pytest.raises(ValidationError, match="AUTH_DISABLED"):
            cls()

    def test_rs256_without_a_public_key_is_refused(
        self, cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        production(monkeypatch, JWT_ALGORITHM="RS256")
        with pytest.raises(ValidationError, match="JWT_PUBLIC_KEY"):
            cls()

    def test_strong_secret_is_accepted(
        self, cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        production(monkeypatch, JWT_SECRET=STRONG)
        settings = cls()
        assert settings.environment == "production"
        assert settings.auth.secret is not None
        assert settings.auth.secret.get_secret_value() == STRONG

    def test_rs256_with_a_public_key_is_accepted(
        self, cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        production(monkeypatch, JWT_ALGORITHM="RS256", JWT_PUBLIC_KEY=PUBLIC_KEY)
        assert cls().auth.public_key == PUBLIC_KEY


@pytest.mark.parametrize("cls", NO_TOKENS, ids=lambda c: c.__name__)
class TestProcessesWithoutTokensNeedNoJwtSecret:
    def test_production_without_a_jwt_secret_is_accepted(
        self, cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        production(monkeypatch)
        settings = cls()
        assert (settings.environment, settings.auth.secret) == ("production", None)

    def test_production_default_environment_is_accepted_without_a_secret(
        self, cls: type[ServiceSettings]
    ) -> None:
        assert cls().environment == "production"

    def test_auth_disabled_does_not_stop_a_process_that_checks_no_token(
        self, cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # One env file wires every process; the API and serving refuse it, which is
        # where it matters.
        production(monkeypatch, AUTH_DISABLED="true")
        assert cls().auth_disabled is True


@pytest.mark.parametrize("cls", [ConfigApiSettings, ServingSettings], ids=lambda c: c.__name__)
def test_production_is_the_default_and_refuses_a_missing_secret(
    cls: type[ServiceSettings],
) -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        cls()


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_development_accepts_auth_disabled_and_no_secret(
    cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.setenv("AUTH_DISABLED", "true")
    settings = cls()
    assert (settings.environment, settings.auth_disabled) == ("development", True)
    assert settings.auth.secret is None


@pytest.mark.parametrize("weak", ["changethis", "short"])
def test_development_accepts_a_weak_secret(monkeypatch: pytest.MonkeyPatch, weak: str) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.setenv("JWT_SECRET", weak)
    secret = ConfigApiSettings().auth.secret
    assert secret is not None
    assert secret.get_secret_value() == weak


def test_standalone_defaults_to_development_and_starts_without_a_secret() -> None:
    settings = StandaloneSettings()
    assert (settings.environment, settings.auth.secret) == ("development", None)


class TestStandaloneBackends:
    def test_standalone_runs_the_embedded_backends_by_default(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in ("CONFIG_STORE", "EVENT_LOG", "ONLINE_STORE", "ANALYTICS", "CACHE"):
            monkeypatch.delenv(name, raising=False)
        backends = StandaloneSettings().backends
        assert (
            backends.config_store,
            backends.event_log,
            backends.online_store,
            backends.analytics,
            backends.cache,
        ) == ("sqlite", "local", "sqlite", "chdb", "memory")

    def test_the_environment_picks_standalone_backends_as_for_every_process(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ANALYTICS", "none")
        monkeypatch.setenv("ONLINE_STORE", "redis")
        backends = StandaloneSettings().backends
        assert (backends.analytics, backends.online_store) == ("none", "redis")
        assert (backends.config_store, backends.event_log) == ("sqlite", "local")


class TestIngestionClaimTtl:
    def test_a_claim_that_could_expire_during_a_produce_is_refused(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("INGEST_CLAIM_TTL_SECONDS", "30")
        monkeypatch.setenv("INGEST_PRODUCE_TIMEOUT_SECONDS", "25")
        with pytest.raises(ValidationError, match="INGEST_CLAIM_TTL_SECONDS"):
            IngestionSettings()

    def test_a_claim_outliving_the_produce_by_the_margin_is_accepted(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("INGEST_CLAIM_TTL_SECONDS", "35")
        monkeypatch.setenv("INGEST_PRODUCE_TIMEOUT_SECONDS", "25")
        settings = IngestionSettings()
        assert (settings.claim_ttl_seconds, settings.produce_timeout_seconds) == (35, 25)

    def test_defaults_keep_claims_a_minute_and_produces_half_of_it(self) -> None:
        settings = IngestionSettings()
        assert (settings.claim_ttl_seconds, settings.produce_timeout_seconds) == (60, 30)
