"""Windows, time tiles and the aggregations over them: pure domain code, no I/O.

Shared by compute (`record.py` applies events), serving (`merge.py` reads records), the
config API (which aggregations need which field types) and history. Nothing here
imports `app.api`, `app.services` or `runtime`.

- `windows.py`: window labels, tile sizes and the tile range a read at `now` covers;
- `aggregations.py`: one class per aggregation (normalise, add, combine, read, empty);
- `sketch.py`: COUNT_DISTINCT's exact-then-HLL partial;
- `features.py`: `FeatureSpec` and the reference apply/prune/read, one event at a time;
- `record.py`: the stored record, batches applied with exactly-once effect, `serve`;
- `merge.py`: `serve` made cheap for many records at one `now`.
"""
