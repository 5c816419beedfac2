"""Timestamps in answers are RFC 3339 UTC with milliseconds, exact at every millisecond."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.serving import timestamps
from runtime.serving.timestamps import rfc3339_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def reference(epoch_ms: int) -> str:
    moment = EPOCH + timedelta(milliseconds=epoch_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.integers(FIRST_MS, LAST_MS))
def test_text_equals_datetime_s_at_any_millisecond(epoch_ms: int) -> None:
    assert rfc3339_ms(epoch_ms) == reference(epoch_ms)


def test_first_and_last_representable_moments() -> None:
    assert rfc3339_ms(FIRST_MS) == "0001-01-01T00:00:00.000Z"
    assert rfc3339_ms(LAST_MS) == "9999-12-31T23:59:59.999Z"
    with pytest.raises(ValueError, match="out of range"):
        rfc3339_ms(LAST_MS + 1)


def test_the_minute_cache_starts_over_at_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timestamps, "_MAX_MINUTES", 3)
    monkeypatch.setattr(timestamps, "_minutes", {})
    moments = [1_796_168_047_878 + n * 60_000 for n in range(10)]
    assert [rfc3339_ms(ms) for ms in moments] == [reference(ms) for ms in moments]
    assert len(timestamps._minutes) <= 3
