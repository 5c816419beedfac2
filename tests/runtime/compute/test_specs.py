"""Deployed config → compute specs: which features run, keys, fingerprints, memoising."""

from __future__ import annotations

from app.tiles.record import AppliedEvent, apply_batch, serve
from runtime.compute.specs import SpecCache, build_specs, event_key
from tests.factories import new_id
from tests.runtime.compute.oracle import config, feature, pipeline

NOW = 1_700_000_000_000


class TestWhichFeaturesRun:
    def test_only_enabled_features_of_enabled_events_of_active_pipelines_run(self):
        live, paused = new_id(), new_id()
        p_live = pipeline(live, "add_to_cart", "purchase")
        p_live.events[1].enabled = False
        snapshot = config(
            "shop",
            1,
            [p_live, pipeline(paused, "add_to_cart", status="inactive")],
            [
                feature("runs", live, "COUNT", ["5m"]),
                feature("disabled", live, "COUNT", ["5m"], enabled=False),
                feature("event_off", live, "COUNT", ["5m"], source_event="purchase"),
                feature("pipeline_off", paused, "COUNT", ["5m"]),
                feature("no_such_event", live, "COUNT", ["5m"], source_event="page_view"),
            ],
        )

        specs = build_specs(snapshot)

        assert [s.name for s in specs.specs] == ["runs"]
        assert list(specs.by_event) == [event_key(live, "add_to_cart")]

    def test_same_event_name_in_two_pipelines_feeds_only_its_own_features(self):
        a, b = new_id(), new_id()
        snapshot = config(
            "shop",
            1,
            [pipeline(a, "add_to_cart"), pipeline(b, "add_to_cart")],
            [feature("a_adds", a, "COUNT", ["5m"]), feature("b_adds", b, "COUNT", ["5m"])],
        )

        specs = build_specs(snapshot)

        assert [s.name for s in specs.by_event[event_key(a, "add_to_cart")]] == ["a_adds"]
        assert [s.name for s in specs.by_event[event_key(b, "add_to_cart")]] == ["b_adds"]

    def test_a_feature_with_an_unparsable_window_is_listed_invalid_and_others_still_run(self):
        p = new_id()
        snapshot = config(
            "shop",
            1,
            [pipeline(p, "add_to_cart")],
            [feature("bad", p, "COUNT", ["0m"]), feature("good", p, "COUNT", ["1h"])],
        )

        specs = build_specs(snapshot)

        assert [s.name for s in specs.specs] == ["good"]
        assert [i.name for i in specs.invalid] == ["bad"]

    def test_record_ttl_covers_the_longest_window_and_is_none_without_features(self):
        p = new_id()
        with_features = build_specs(
            config(
                "shop", 1, [pipeline(p, "add_to_cart")], [feature("f", p, "COUNT", ["5m", "7d"])]
            )
        )
        without = build_specs(config("shop", 1, [pipeline(p, "add_to_cart")], []))

        assert with_features.ttl_seconds is not None
        assert with_features.ttl_seconds > 7 * 86_400
        assert without.ttl_seconds is None


class TestFingerprints:
    def test_moving_a_feature_to_another_source_event_restarts_its_tiles(self):
        p = new_id()
        pipes = [pipeline(p, "add_to_cart", "purchase")]
        v1 = build_specs(config("shop", 1, pipes, [feature("f", p, "COUNT", ["1h"])]))
        v2 = build_specs(
            config("shop", 2, pipes, [feature("f", p, "COUNT", ["1h"], source_event="purchase")])
        )
        adds = [AppliedEvent(0, i, event_key(p, "add_to_cart"), NOW - 1000, {}) for i in range(3)]
        buy = [AppliedEvent(0, 10, event_key(p, "purchase"), NOW - 500, {})]

        record = apply_batch(None, v1.by_event, adds, NOW).record
        record = apply_batch(record, v2.by_event, buy, NOW).record

        assert serve(record, v2.specs, NOW) == {"f_1h": 1}

    def test_changing_only_windows_keeps_the_tiles_of_the_windows_kept(self):
        p = new_id()
        pipes = [pipeline(p, "add_to_cart")]
        v1 = build_specs(config("shop", 1, pipes, [feature("f", p, "COUNT", ["1h"])]))
        v2 = build_specs(config("shop", 2, pipes, [feature("f", p, "COUNT", ["1h", "24h"])]))
        adds = [AppliedEvent(0, i, event_key(p, "add_to_cart"), NOW - 1000, {}) for i in range(3)]

        record = apply_batch(None, v1.by_event, adds, NOW).record
        more = [AppliedEvent(0, 5, event_key(p, "add_to_cart"), NOW - 10, {})]
        record = apply_batch(record, v2.by_event, more, NOW).record

        assert serve(record, v2.specs, NOW) == {"f_1h": 4, "f_24h": 1}


class TestSpecCache:
    def test_specs_are_built_once_per_version_and_rebuilt_for_a_new_one(self):
        p = new_id()
        pipes = [pipeline(p, "add_to_cart")]
        cache = SpecCache()
        v1 = config("shop", 1, pipes, [feature("f", p, "COUNT", ["1h"])])
        v2 = config("shop", 2, pipes, [feature("f", p, "SUM", ["1h"])])

        first, built_first = cache.get(v1)
        again, built_again = cache.get(v1.model_copy())
        newer, built_newer = cache.get(v2)

        assert (built_first, built_again, built_newer) == (True, False, True)
        assert again is first
        assert newer.version == 2
        assert newer.specs[0].fingerprint != first.specs[0].fingerprint
