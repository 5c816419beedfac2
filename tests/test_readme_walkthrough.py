"""The README's walkthrough, run for real: every bash block of "Try it" is executed, in
order, in one shell against the standalone platform (a real subprocess), so a newcomer
pasting them meets no error.

Only what cannot be literal is substituted, each substitution stated here: the dev token
(read from the process's output, as the user reads it), the port (a free one, not 8000),
the event generator's duration (3 s, not 60), and the client's install line (make test
already installed it from requirements-dev.txt). The commands run in a scratch folder
holding links to the repository's .venv, scripts and clients, so `dps init` writes its
YAML there and not into the repository."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.support.standalone import RunningStandalone, standalone_process

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def walkthrough_blocks() -> list[str]:
    section = README.split("## Try it", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return [part.split("```", 1)[0] for part in section.split("```bash\n")[1:]]


def as_run_here(script: str, platform: RunningStandalone) -> str:
    lines = [line for line in script.splitlines() if not line.startswith(".venv/bin/pip install")]
    text = "\n".join(lines)
    text = text.replace("<the dev token make run printed>", platform.token)
    text = text.replace("http://127.0.0.1:8000", platform.base_url)
    return text.replace("--duration 60", "--duration 3")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStandalone]:
    with standalone_process(tmp_path_factory.mktemp("walkthrough")) as p:
        yield p


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(platform: RunningStandalone, tmp_path: Path):
    blocks = walkthrough_blocks()
    assert len(blocks) == 4, "the walkthrough's bash blocks changed: update this test"
    for name in (".venv", "scripts", "clients"):
        (tmp_path / name).symlink_to(ROOT / name)
    script = "\n".join(as_run_here(block, platform) for block in blocks)
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out[-4000:]}\nstderr:\n{done.stderr[-4000:]}"

    assert (tmp_path / "dps" / "storefront.yaml").exists()
    assert "Deployed version 1" in out
    assert "+ feature cart_qty: created" in out
    assert "Deployed version 2 (1 change(s))" in out
    assert "Rolled back to version 1: it is live again as version 3." in out
    assert "The draft was reset to version 1." in out
    answers = printed_objects(out)
    # The curl rollback to version 2, pretty-printed.
    [rollback] = [a for a in answers if a.get("rolled_back_from") == 2]
    assert (rollback["version"], rollback["rolled_back_from"], rollback["draft_reset"]) == (
        4,
        2,
        True,
    )
    assert rollback["discarded_changes"] == []
    assert rollback["status"] == "backfilling"  # cart_qty comes back: filled from the archive
    # The filtered feature by curl, its deploy, and the recommender features read back.
    assert any(a.get("name") == "shoe_views" and a.get("filter") for a in answers)
    # shoe_views is new over an event the archive holds: version 5 backfills, `live` waits.
    assert any(a.get("version") == 5 and a.get("status") == "backfilling" for a in answers)
    for key in ("recently_viewed_7d", "top_categories_30d", "since_cart_add_24h", "shoe_views_7d"):
        assert f'"{key}"' in out
    # The per-product feature by curl, its deploy, a product and a batch of them read back.
    assert any(a.get("name") == "product_revenue" and a.get("entity") == "product" for a in answers)
    assert any(a.get("version") == 6 and a.get("status") == "success" for a in answers)
    # Read by curl and by `dps get sku-001 --entity product`: the same answer's keys.
    products = [a for a in answers if a.get("entity") == "product" and a.get("id") == "sku-001"]
    assert products
    assert set(cast(dict[str, object], products[0]["features"])) == {
        "product_cart_adds_1h",
        "product_cart_adds_24h",
        "product_revenue_1h",
        "product_revenue_24h",
    }
    [batch] = [a for a in answers if "entities" in a]
    entities = cast(list[dict[str, object]], batch["entities"])
    assert [e["id"] for e in entities] == ["sku-002", "sku-003"]
    # The derived feature by curl, and the derived features read alone.
    assert any(a.get("name") == "shoe_share_7d" and a.get("kind") == "derived" for a in answers)
    read = [f for a in answers if isinstance(f := a.get("features"), dict)]
    [derived] = [f for f in read if set(f) == {"shoe_share_7d", "cart_rate_24h"}]
    assert all(v is None or isinstance(v, float) for v in derived.values())


def printed_objects(out: str) -> list[dict[str, object]]:
    """Every JSON object printed from the start of a line (pretty-printed answers)."""
    decoder = json.JSONDecoder()
    found = []
    for start in [0, *(i + 1 for i, c in enumerate(out) if c == "\n")]:
        if out.startswith("{", start):
            try:
                obj, _ = decoder.raw_decode(out, start)
            except ValueError:
                continue
            if isinstance(obj, dict):
                found.append(obj)
    return found
