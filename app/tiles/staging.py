"""Where a record keeps a feature while a deployment backfills it.

A deployment that adds a feature, or changes one's definition (its fingerprint), fills
it from the event archive before it goes live (`app/services/backfill_service.py`).
Meanwhile the old version keeps serving, so the old definition's state must stay in the
record under the feature's name, and the new one needs a place beside it: the staged
name `{name}~{hash of the new fingerprint}`. Compute fills the staged entry from the
stream while the backfill fills it from the archive; once the version is live:

- serving reads a feature whose entry is missing, or holds another fingerprint, from
  its staged name when that holds the right fingerprint (`Merger`, `record.serve`);
- compute moves the staged entry to the feature's name on the user's next write
  (`BatchApplier`), so the staged name lives only until then (or the record's TTL).

`~` cannot occur in a feature name (`app/schemas/feature.py` allows letters, digits
and `_`), so a staged name never collides with a real one.
"""

from __future__ import annotations

import hashlib

STAGED_MARK = "~"


def staged_name(name: str, fingerprint: str) -> str:
    """Returns the record key a backfilled feature `name` of `fingerprint` is staged
    under (stable across processes)."""
    digest = hashlib.blake2b(fingerprint.encode(), digest_size=5).hexdigest()
    return f"{name}{STAGED_MARK}{digest}"
