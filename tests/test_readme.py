"""The README stays true: its configuration table names every setting a process reads,
and it opens with the two commands, which the Makefile and CI really run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from app.core.settings import (
    ArchiveSettings,
    AuthSettings,
    BackendSettings,
    ComputeSettings,
    ConfigApiSettings,
    IngestionSettings,
    ServiceSettings,
    ServingSettings,
    StandaloneSettings,
)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# Nested settings objects (read from their own unprefixed variables), not variables.
_NESTED = {"backends", "auth"}


def env_names(cls: type[BaseSettings]) -> list[str]:
    """The environment variable each field of a settings class is read from."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = []
    for name, field in cls.model_fields.items():
        if name in _NESTED:
            continue
        alias = field.validation_alias
        names.append(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


@pytest.mark.parametrize(
    "cls",
    [
        BackendSettings,
        AuthSettings,
        ServiceSettings,
        ConfigApiSettings,
        IngestionSettings,
        ComputeSettings,
        ArchiveSettings,
        ServingSettings,
        StandaloneSettings,
    ],
)
def test_readme_configuration_table_names_every_setting(cls: type[BaseSettings]) -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    missing = [name for name in env_names(cls) if name not in documented]
    # HOST/PORT of the shared base are documented per process (API_PORT, ...).
    missing = [name for name in missing if name not in {"HOST", "PORT"}]
    assert missing == [], f"README configuration table lacks {missing}"


def test_readme_opens_with_the_run_and_test_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make run" in first_block
    assert "make test" in first_block
    makefile = (ROOT / "Makefile").read_text()
    assert "run:" in makefile
    assert "scripts/run.sh" in makefile
    assert "scripts/test.sh" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
