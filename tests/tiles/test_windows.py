"""Window parsing and the tile range a query reads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.tiles.windows import MAX_WINDOW_SECONDS, Window, parse_window

UNIT_SECONDS = {"m": 60, "h": 3_600, "d": 86_400}
NOW = st.integers(min_value=-(10**13), max_value=10**13)


@st.composite
def valid_windows(draw: st.DrawFn) -> Window:
    unit = draw(st.sampled_from("mhd"))
    amount = draw(st.integers(1, MAX_WINDOW_SECONDS // UNIT_SECONDS[unit]))
    return parse_window(f"{amount}{unit}")


class TestParseWindow:
    @pytest.mark.parametrize(
        ("text", "seconds", "tile_seconds"),
        [
            ("1m", 60, 1),
            ("5m", 300, 5),
            ("7m", 420, 7),
            ("1h", 3_600, 60),
            ("3h", 10_800, 180),
            ("24h", 86_400, 1_440),
            ("7d", 604_800, 10_080),
            ("30d", 2_592_000, 43_200),
            ("90d", 7_776_000, 129_600),
        ],
    )
    def test_parses_the_documented_windows_into_sixty_tiles(
        self, text: str, seconds: int, tile_seconds: int
    ) -> None:
        assert parse_window(text) == Window(text, seconds, tile_seconds)

    @given(unit=st.sampled_from("mhd"), data=st.data())
    def test_accepts_every_whole_amount_between_1m_and_90d(
        self, unit: str, data: st.DataObject
    ) -> None:
        amount = data.draw(st.integers(1, MAX_WINDOW_SECONDS // UNIT_SECONDS[unit]))
        window = parse_window(f"{amount}{unit}")
        assert window.label == f"{amount}{unit}"
        assert window.seconds == amount * UNIT_SECONDS[unit]
        # Windows are whole minutes, so the tile is a whole second and exactly 1/60.
        assert window.tile_seconds * 60 == window.seconds

    @pytest.mark.parametrize(("text", "label"), [("05m", "5m"), ("0001h", "1h"), ("007d", "7d")])
    def test_drops_leading_zeros_from_the_label(self, text: str, label: str) -> None:
        assert parse_window(text).label == label

    def test_keeps_the_unit_as_written_so_60m_and_1h_are_different_keys(self) -> None:
        assert parse_window("60m").label == "60m"
        assert parse_window("60m").seconds == parse_window("1h").seconds

    @pytest.mark.parametrize("text", ["1441m", "2160h", "129600m", "90d"])
    def test_accepts_any_unit_up_to_90_days(self, text: str) -> None:
        assert parse_window(text).seconds <= 90 * 86_400

    @pytest.mark.parametrize(
        "text",
        [
            "0m",
            "00h",
            "91d",
            "2161h",
            "129601m",
            "1s",
            "1w",
            "5 m",
            " 5m",
            "5m ",
            "5m\n",
            "",
            "m",
            "5",
            "5M",
            "-5m",
            "+5m",
            "5.0m",
            "1h30m",
            "\u0665m",  # Arabic-Indic digit five: int() would accept it
        ],
    )
    def test_rejects_malformed_or_out_of_range_text(self, text: str) -> None:
        with pytest.raises(ValueError, match="invalid window"):
            parse_window(text)

    @pytest.mark.parametrize("value", [None, 5, b"5m"])
    def test_rejects_non_strings_with_a_value_error(self, value: object) -> None:
        with pytest.raises(ValueError, match="window must be a string"):
            parse_window(value)  # type: ignore[arg-type]


class TestTiles:
    @given(window=valid_windows(), t_ms=NOW)
    def test_tile_of_is_the_tile_whose_span_holds_the_time(self, window: Window, t_ms: int) -> None:
        i = window.tile_of(t_ms)
        assert i * window.tile_ms <= t_ms < (i + 1) * window.tile_ms

    @given(window=valid_windows(), now_ms=NOW)
    def test_query_reads_61_tiles_covering_the_exact_window(
        self, window: Window, now_ms: int
    ) -> None:
        lo, hi = window.tile_range(now_ms)
        start, end = window.span_ms(now_ms)
        assert hi - lo + 1 == 61
        assert hi == window.tile_of(now_ms)
        # Covers every ms of (now - W, now] ...
        assert start <= now_ms - window.window_ms + 1
        assert end > now_ms
        # ... and exceeds it by less than one tile at each end.
        assert start > now_ms - window.window_ms - window.tile_ms
        assert end <= now_ms + window.tile_ms

    @given(window=valid_windows(), now_ms=NOW, later=st.integers(0, 10**11))
    def test_range_bounds_never_move_back_as_now_advances(
        self, window: Window, now_ms: int, later: int
    ) -> None:
        lo, hi = window.tile_range(now_ms)
        lo2, hi2 = window.tile_range(now_ms + later)
        assert lo2 >= lo
        assert hi2 >= hi


@settings(max_examples=50)
@given(window=valid_windows())
def test_window_is_hashable_and_immutable(window: Window) -> None:
    assert {window: 1}[parse_window(window.label)] == 1
    with pytest.raises(AttributeError):
        window.seconds = 1  # type: ignore[misc]
