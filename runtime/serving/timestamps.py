"""Epoch milliseconds as RFC 3339 UTC text (`2026-12-02T03:15:26.123Z`), cheaply.

Every read answers `as_of`, and each user in it `last_event_at` and `updated_at`: 201
timestamps for a 100-user batch. Through `datetime` they cost ~3 µs each, 7% of the
batch's CPU (py-spy). Here the text of a minute is made once (bounded cache) and the
seconds and milliseconds come from one table: one dict lookup and one concatenation.
"""

from __future__ import annotations

from datetime import UTC, datetime

_MS_PER_MINUTE = 60_000
# "SS.mmmZ" of every millisecond of a minute (60,000 short strings, ~3.5 MB).
_IN_MINUTE = [f"{ms // 1000:02d}.{ms % 1000:03d}Z" for ms in range(_MS_PER_MINUTE)]
# "YYYY-MM-DDTHH:MM:" per minute since the epoch. Reads touch the current minutes and
# those of users' recent events; past the bound the cache starts over.
_MAX_MINUTES = 65_536
_minutes: dict[int, str] = {}


def rfc3339_ms(epoch_ms: int) -> str:
    """Returns `epoch_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, exact to the millisecond).

    Raises ValueError or OverflowError outside the years 1 to 9999, as `datetime` does.
    """
    minute, rest = divmod(epoch_ms, _MS_PER_MINUTE)
    prefix = _minutes.get(minute)
    if prefix is None:
        if len(_minutes) >= _MAX_MINUTES:
            _minutes.clear()
        moment = datetime.fromtimestamp(minute * 60, UTC).replace(tzinfo=None)
        prefix = _minutes[minute] = moment.isoformat(timespec="minutes") + ":"
    return prefix + _IN_MINUTE[rest]
