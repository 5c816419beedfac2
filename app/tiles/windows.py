"""Time windows ("5m", "24h", "30d") and the time tiles that serve them.

A window of W seconds is cut into tiles of W/60 seconds. Every window is a whole
number of minutes, so every window is exactly 60 tiles and the tile size is a whole
number of seconds (1m -> 1s tiles, 5m -> 5s, 1h -> 60s, 24h -> 1440s, 30d -> 43200s).

A query at `now_ms` reads the tiles `lo..hi` returned by `Window.tile_range`: the
61 tiles whose union is the smallest tile-aligned span that covers `(now - W, now]`.
The window is therefore never short of an event; it may hold extra ones:

- at the old edge, events in `[lo * s, now - W]`: less than one tile, so the error at
  the window's start is at most 1/60 of the window;
- at the new edge, events in `(now, (hi + 1) * s)`: events slightly in the future of
  the reader's clock (client or host clock skew) count as soon as they are stored.

An event at `t` therefore counts from the moment it is stored until at most
`W + one tile` after `t`, with no write needed for it to drop out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Tiles per window: bounds the old-edge error to 1/60 of the window while a window
# costs at most 61 partials per feature in the record.
TILES_PER_WINDOW = 60
MIN_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 90 * 86_400

_UNIT_SECONDS = {"m": 60, "h": 3_600, "d": 86_400}
# [0-9], not \d: \d also matches non-ASCII digits, which int() would then accept.
_WINDOW_RE = re.compile(r"([0-9]+)([mhd])")


@dataclass(frozen=True, slots=True)
class Window:
    """A parsed window. Build it with `parse_window`; `label` is the key suffix."""

    label: str
    seconds: int
    tile_seconds: int

    @property
    def window_ms(self) -> int:
        """Returns the window length in milliseconds."""
        return self.seconds * 1000

    @property
    def tile_ms(self) -> int:
        """Returns the tile length in milliseconds."""
        return self.tile_seconds * 1000

    def tile_of(self, t_ms: int) -> int:
        """Returns the index of the tile holding `t_ms`; tile i covers [i*s, (i+1)*s)."""
        return t_ms // self.tile_ms

    def tile_range(self, now_ms: int) -> tuple[int, int]:
        """Returns `(lo, hi)`: a query at `now_ms` reads the tiles lo <= i <= hi.

        `hi` is the tile holding `now`, `lo` the tile holding `now - W`, so the span
        `[lo * s, (hi + 1) * s)` covers `(now - W, now]` and exceeds it by less than a
        tile at each end. Both bounds only grow as `now` grows, which is what makes
        pruning tiles below `lo` safe.
        """
        return (now_ms - self.window_ms) // self.tile_ms, now_ms // self.tile_ms

    def span_ms(self, now_ms: int) -> tuple[int, int]:
        """Returns `[start, end)` in ms: the event times a query at `now_ms` counts."""
        lo, hi = self.tile_range(now_ms)
        return lo * self.tile_ms, (hi + 1) * self.tile_ms


def parse_window(text: str) -> Window:
    """Parses `"<n><m|h|d>"`, n a decimal integer, into a Window.

    The total must lie between 1m and 90d inclusive, so "1441m" and "2160h" are valid
    while "0m" and "91d" are not. The label keeps the unit as written ("60m" stays
    "60m" and is a different output key from "1h"); leading zeros are dropped
    ("05m" -> "5m") so one window has one key.

    Raises ValueError (with the offending text in the message) for anything else:
    other units ("1s", "1w"), spaces, signs, upper case, empty text, non-strings.
    """
    if not isinstance(text, str):
        raise ValueError(f"window must be a string like '5m', '1h' or '7d', got {text!r}")
    match = _WINDOW_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid window {text!r}: expected <n><m|h|d> such as '5m', '1h' or '7d'")
    amount, unit = int(match.group(1)), match.group(2)
    seconds = amount * _UNIT_SECONDS[unit]
    if not MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS:
        raise ValueError(f"invalid window {text!r}: must be between 1m and 90d")
    return Window(
        label=f"{amount}{unit}",
        seconds=seconds,
        tile_seconds=seconds // TILES_PER_WINDOW,
    )
