"""The stored form of a record (`record.py`): two blobs, the tiles and the event ids.

`encode_record(record)` returns `EncodedRecord(features, ids)`; `decode_record(features,
ids)` gives the record back, equal and of the same types (int stays int, -0.0 stays
-0.0). Stores keep both blobs opaque, write them in one compare-and-set, and hand
serving only `features`: the remembered event ids (up to 20,000 per record, 160 KB)
are compute's business, so `decode_record(features)` alone is a record without "ids".

`features` starts with a format byte:

- `{` (0x7B): JSON of the whole record, ids included, as every version before this one
  wrote it. Still read, so records stored before the upgrade serve unchanged; the next
  write stores them in the current form.
- 0x01 (a record whose features hold many tiles): zstd of compact JSON
  `[rest, strings, features]`: `rest` holds the record's other keys (offsets,
  updated_ms, last_event_ms), `features` one `[name, fingerprint, window labels, tiles
  per window, tile numbers, partials]` per feature, its windows laid end to end. Tile
  numbers are delta-encoded (consecutive tiles cost `1,`), and the partials are one
  column (`_column`): integers as deltas, pairs split in two columns (AVG's sum and
  count, LAST's time and value), strings as indexes into `strings`, the record's one
  sorted table of distinct strings (the product ids of COUNT_DISTINCT tiles repeat
  across windows and features; sorted, a tile's sorted list has small index steps).
  zstd then finds what repeats across columns.
- 0x02: zstd of the JSON of the record (ids apart), for a record with a few tiles per
  feature (`COMPACT_FROM_TILES_PER_FEATURE`), or of another shape (never built by
  compute; kept so any JSON-compatible dict round-trips).

Measured by `bench/record_bench.py` (20 features x 5 windows): 10,000 events ~5 minutes
apart take 152 KB as JSON, 21 KB as 0x01 (7.3x); a user with 3 events a month 2.7 KB,
0.6 KB as 0x02 (4.4x).

`ids` is empty for a record without "ids", else 0x01 then, per apply-time bucket, the
bucket (8 bytes, big-endian, signed), its hash count (4 bytes) and the hashes as stored
in memory (big-endian 8-byte words), or 0x02 then JSON for ids of another shape.

Both raise RecordRejected (a ValueError) for what JSON cannot hold (a non-finite float,
as `json.dumps(allow_nan=False)`), and ValueError for bytes that are no record.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import threading
from collections.abc import Mapping
from itertools import accumulate, chain, islice
from operator import itemgetter, sub
from typing import Any, NamedTuple

import msgspec
import zstandard
from backports import zstd
from pydantic_core import PydanticSerializationError, to_json

JSON_FORMAT = ord("{")
COMPACT_FORMAT = 1
PLAIN_FORMAT = 2
_COMPACT = bytes((COMPACT_FORMAT,))
_PLAIN = bytes((PLAIN_FORMAT,))
# Records with fewer tiles than this per feature are stored as zstd of their JSON. The
# compact form costs a few Python steps per feature to encode and decode, where JSON is
# all C, and gains little where features hold a few tiles each: zstd finds the repeats
# (names, fingerprints) itself. Measured (bench/record_bench.py; serving_bench's records
# of ~10 events, ~7 tiles a feature): zstd of JSON decodes in 1.1-1.5x JSON's time and is
# 4-10x smaller; the compact form decodes in 2.5-3.7x and is 6-7x smaller where features
# hold 15 tiles or more (a user with 30 events a month), 12x on sparse ones.
COMPACT_FROM_TILES_PER_FEATURE = 12
IDS_FORMAT = 1
IDS_JSON_FORMAT = 2
# zstd level 3 (its default): level 1 is no faster here and 6+ costs 3x the CPU for 5%.
_LEVEL = 3
_FEATURE_KEYS = frozenset({"fp", "w"})
_BUCKET = struct.Struct(">qI")

# Column tags (`_column`).
_RAW, _INTS, _STRS, _PAIRS, _STR_LISTS = range(5)


class RecordRejected(ValueError):
    """The store can never take this record as it is (it cannot be encoded, is too
    large, or the server refuses its key, bins or TTL): retrying cannot help.

    Raised by `put`, and by `put_many` for the whole call when one item is refused;
    the caller (compute's writer) then writes the items one by one to find the ones to
    park, so one poisoned record never stalls the others. A ValueError, as the encoding
    errors it replaces were."""


class EncodedRecord(NamedTuple):
    """A record's stored form: `features` (what serving reads) and `ids` (what only
    compute reads; empty when the record has no "ids")."""

    features: bytes
    ids: bytes


def encode_record(record: Mapping[str, Any]) -> EncodedRecord:
    """Returns the stored form of `record` (see the module docstring).

    Raises RecordRejected for a value JSON cannot hold (non-finite float, a key that is
    not a string...)."""
    rest = {k: v for k, v in record.items() if k != "ids"}
    ids = b"" if "ids" not in record else _encode_ids(record["ids"])
    dense = _tiles_per_feature(rest.get("features")) >= COMPACT_FROM_TILES_PER_FEATURE
    compact = _compact(rest) if dense else None
    if compact is None:
        return EncodedRecord(_PLAIN + zstd.compress(_json(rest), _LEVEL), ids)
    return EncodedRecord(_COMPACT + zstd.compress(_json(compact), _LEVEL), ids)


def _tiles_per_feature(features: Any) -> float:
    """The mean number of tiles a feature holds (0 for features of another shape)."""
    if not isinstance(features, dict) or not features:
        return 0.0
    try:
        windows = chain.from_iterable(entry["w"].values() for entry in features.values())
        return sum(map(len, windows)) / len(features)
    except (AttributeError, KeyError, TypeError):
        return 0.0


def decode_record(features: bytes | str, ids: bytes | None = None) -> dict[str, Any]:
    """Returns the record of `encode_record`'s blobs; without `ids` (or with b"") a
    record of the current form has no "ids" (one stored as JSON keeps its own).

    Raises ValueError when the bytes are no record."""
    if isinstance(features, str):
        return _from_json(features)  # a text column of the JSON form
    head = features[:1]
    if head == b"{":
        record = _from_json(features)
    elif head == _COMPACT:
        record = _expand(_from_json(_unzstd(features)))
    elif head == _PLAIN:
        record = _from_json(_unzstd(features))
    else:
        raise ValueError(f"not a stored record (format byte {head!r})")
    if ids:
        record["ids"] = _decode_ids(ids)
    return record


# -- JSON ---------------------------------------------------------------------------------
_json_encode = msgspec.json.Encoder().encode


def _json(value: Any) -> bytes:
    """Compact UTF-8 JSON (msgspec, else pydantic-core: ~2x `json.dumps`), with json's
    refusals.

    msgspec writes a record's JSON in 0.65-0.75x pydantic-core's time (the serving
    mix's records after 20 events, plain and compact layouts alike; the same bytes).
    It writes a non-finite float as `null` and refuses some values pydantic-core
    writes, so a payload holding `null` (which compute's records do not) or a refusal
    goes the way it went before."""
    try:
        payload = _json_encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        pass
    else:
        if b"null" not in payload:
            return payload
    try:
        payload = to_json(value)
    except PydanticSerializationError:
        # Text that is not valid Unicode (a lone surrogate) cannot be UTF-8: json
        # escapes it. Reached only by records no ingestion could have produced.
        return _json_dumps(value)
    # to_json writes a non-finite float as a bare NaN / Infinity token; json.dumps
    # decides whether those letters are such a token or inside a string.
    if b"NaN" in payload or b"Infinity" in payload:
        return _json_dumps(value)
    return payload


def _json_dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, TypeError) as exc:
        raise RecordRejected(f"record cannot be encoded: {exc}") from exc


_json_decode = msgspec.json.Decoder().decode


def _from_json(raw: bytes | str) -> Any:
    # msgspec: a serving-sized record (2.4 KB of JSON) in 13 µs where pydantic-core's
    # from_json took 19 and json.loads 36 (bench/serving_bench.py's records, best of 15).
    # It keeps integers past 64 bits exact (orjson, as fast, makes them floats).
    try:
        return _json_decode(raw)
    except msgspec.DecodeError:
        pass
    try:
        # msgspec refuses what json.dumps may have written and it does not take (an
        # escaped lone surrogate, say): the standard parser reads it.
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not a stored record: {exc}") from exc


class _Decompressors(threading.local):
    """One reusable zstd context per thread (a context serves one call at a time; the
    Aerospike store decodes in its executor's threads)."""

    def __init__(self) -> None:
        self.decompress = zstandard.ZstdDecompressor().decompress


_decompressors = _Decompressors()


def _unzstd(blob: bytes) -> bytes:
    # `zstd.decompress` builds a new context (and its ~100 KB window) for every call:
    # 9-21 µs for a 700-byte record, where a reused python-zstandard context takes 40-55%
    # of that. It reads the one frame `encode_record` writes, whose header holds the
    # content size; anything else (several frames, no size) goes the long way.
    try:
        return _decompressors.decompress(memoryview(blob)[1:])
    except zstandard.ZstdError:
        pass
    try:
        return zstd.decompress(blob[1:])
    except zstd.ZstdError as exc:
        raise ValueError(f"not a stored record: {exc}") from exc


# -- the compact form -----------------------------------------------------------------------
def _compact(record: Mapping[str, Any]) -> list[Any] | None:
    """Returns `[rest, strings, features]`, or None for a record of another shape.

    Work is per feature, not per window or tile: the windows of a feature are laid end to
    end (one column of tile numbers, one of partials, the tile count of each window), so
    the Python-level steps are a few per feature and the per-tile work runs in C
    (`map`, `chain`, `accumulate`)."""
    stored = record.get("features")
    if not isinstance(stored, dict):
        return None
    rest = {k: v for k, v in record.items() if k != "features"}
    pending: list[tuple[list[Any], int, bool]] = []
    features = []
    for name, entry in stored.items():
        if not isinstance(entry, dict) or entry.keys() != _FEATURE_KEYS:
            return None
        fp, state = entry["fp"], entry["w"]
        if not isinstance(fp, str) or not isinstance(state, dict):
            return None
        windows = list(state.values())
        if _kinds(windows) - {dict}:
            return None
        keys = list(chain.from_iterable(windows))
        try:
            numbers = list(map(int, keys))
        except (TypeError, ValueError):
            return None
        if list(map(str, numbers)) != keys:
            return None  # a key int() reads but compute would not write ("007", " 1")
        values = list(chain.from_iterable(map(dict.values, windows)))
        column = _column(values, pending)
        features.append([name, fp, list(state), list(map(len, windows)), _deltas(numbers), column])
    strings = sorted(set(chain.from_iterable(texts[at] for texts, at, _ in pending)))
    index = {s: i for i, s in enumerate(strings)}.__getitem__
    for column, at, delta in pending:
        refs = list(map(index, column[at]))
        column[at] = _deltas(refs) if delta else refs
    return [rest, strings, features]


def _deltas(numbers: list[int]) -> list[int]:
    return [numbers[0], *map(sub, numbers[1:], numbers[:-1])] if numbers else []


def _kinds(values: list[Any]) -> set[type]:
    return set(map(type, values))


_first = itemgetter(0)
_second = itemgetter(1)


def _column(values: list[Any], pending: list[tuple[list[Any], int, bool]]) -> list[Any]:
    """Returns partials as `[tag, ...]`:

    _INTS [deltas] | _STRS [indexes] | _PAIRS [column of firsts, column of seconds] |
    _STR_LISTS [lengths, index deltas] (sorted COUNT_DISTINCT lists: small steps) |
    _RAW [values] for anything else (floats, which JSON already writes shortest).

    String columns are left holding their strings and listed in `pending` (column, the
    position of the strings, whether to delta-encode), so that `_compact` replaces
    them by their indexes once the record's table of strings is known.
    """
    kinds = _kinds(values)
    if kinds == {int}:
        return [_INTS, _deltas(values)]
    if kinds == {str}:
        column: list[Any] = [_STRS, values]
        pending.append((column, 1, False))
        return column
    if kinds == {list} and values:
        if set(map(len, values)) == {2}:
            firsts = list(map(_first, values))
            seconds = list(map(_second, values))
            return [_PAIRS, _column(firsts, pending), _column(seconds, pending)]
        flat = list(chain.from_iterable(values))
        if _kinds(flat) <= {str}:
            column = [_STR_LISTS, list(map(len, values)), flat]
            pending.append((column, 2, True))
            return column
    return [_RAW, values]


def _values(column: list[Any], strings: list[str]) -> list[Any]:
    """Returns the partials of a `_column`."""
    tag = column[0]
    if tag == _RAW:
        values: list[Any] = column[1]
        return values
    if tag == _INTS:
        return list(accumulate(column[1]))
    if tag == _STRS:
        return list(map(strings.__getitem__, column[1]))
    if tag == _PAIRS:
        firsts, seconds = _values(column[1], strings), _values(column[2], strings)
        return list(map(list, zip(firsts, seconds, strict=True)))
    if tag == _STR_LISTS:
        flat = iter(map(strings.__getitem__, accumulate(column[2])))
        return [list(islice(flat, n)) for n in column[1]]
    raise ValueError(f"not a stored record (column tag {tag!r})")


def _expand(compact: list[Any]) -> dict[str, Any]:
    """Returns the record of `_compact`'s form."""
    rest, strings, stored = compact
    features = {}
    for name, fp, labels, counts, keys, column in stored:
        # One iterator over the feature's tiles, cut into its windows by their counts.
        tiles = zip(map(str, accumulate(keys)), _values(column, strings), strict=True)
        windows = {label: dict(islice(tiles, n)) for label, n in zip(labels, counts, strict=True)}
        features[name] = {"fp": fp, "w": windows}
    return {"features": features, **rest}


# -- event ids --------------------------------------------------------------------------------
def _encode_ids(ids: Any) -> bytes:
    """Returns the ids blob: packed buckets of hashes, or JSON for another shape."""
    if isinstance(ids, dict):
        parts = [bytes((IDS_FORMAT,))]
        try:
            for key, packed in ids.items():
                if not isinstance(packed, str) or str(int(key)) != key:
                    raise ValueError(key)
                raw = base64.b64decode(packed, validate=True)
                if len(raw) % 8 or base64.b64encode(raw).decode("ascii") != packed:
                    raise ValueError(key)
                parts += (_BUCKET.pack(int(key), len(raw) // 8), raw)
        except (ValueError, TypeError, struct.error, binascii.Error):
            pass
        else:
            return b"".join(parts)
    return bytes((IDS_JSON_FORMAT,)) + _json(ids)


def _decode_ids(blob: bytes) -> Any:
    """Returns the ids of `_encode_ids`' blob."""
    if blob[0] == IDS_JSON_FORMAT:
        return _from_json(blob[1:])
    if blob[0] != IDS_FORMAT:
        raise ValueError(f"not stored event ids (format byte {blob[:1]!r})")
    ids: dict[str, str] = {}
    at = 1
    try:
        while at < len(blob):
            bucket, count = _BUCKET.unpack_from(blob, at)
            at += _BUCKET.size
            raw = blob[at : at + count * 8]
            if len(raw) != count * 8:
                raise ValueError("stored event ids are cut short")
            ids[str(bucket)] = base64.b64encode(raw).decode("ascii")
            at += count * 8
    except struct.error as exc:
        raise ValueError(f"stored event ids are cut short: {exc}") from exc
    return ids
