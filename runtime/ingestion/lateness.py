"""Which accepted events are too old to count in any feature ("late").

Compute keeps each window's partial aggregates in tiles of 1/60 of the window and skips
an event whose tile no read at now (or later) can include: one older than its longest
window plus up to one tile, for every feature it feeds (`app/tiles/features.timing`).
Ingestion still accepts such an event (it is valid and the archive keeps it), but its
answer counts it as `late` so the sender learns it will show in no feature.

The boundary per window is the start of the oldest tile a read at `now` merges,
`floor((now - W) / tile) * tile`: the same arithmetic as `Window.tile_range`, so the
two sides agree to the millisecond. An event that feeds no enabled feature is never late:
its age is not why it counts in nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.schemas.deployment import ConfigSnapshot
from app.tiles.windows import Window, parse_window


@dataclass(frozen=True, slots=True)
class EventLateness:
    """One deployed version's windows per (pipeline id, event name)."""

    version: int
    windows: dict[tuple[str, str], tuple[Window, ...]]

    def is_late(self, pipeline_id: str, event: str, event_time_ms: int, now_ms: int) -> bool:
        """Whether an event at `event_time_ms`, received at `now_ms`, counts in no window
        of any enabled feature it feeds."""
        windows = self.windows.get((pipeline_id, event))
        if not windows:
            return False
        return all(w.tile_of(event_time_ms) < w.tile_range(now_ms)[0] for w in windows)


def compile_lateness(snapshot: ConfigSnapshot) -> EventLateness:
    """Collects the windows of every enabled aggregate by the event it reads (a derived
    feature reads no event)."""
    windows: dict[tuple[str, str], set[Window]] = {}
    for feature in snapshot.features:
        if not feature.enabled or feature.kind == "derived":
            continue
        key = (feature.pipeline_id, feature.source_event)
        windows.setdefault(key, set()).update(parse_window(w) for w in feature.time_windows)
    return EventLateness(
        snapshot.version,
        {key: tuple(sorted(ws, key=lambda w: w.seconds)) for key, ws in windows.items()},
    )
