"""The `dps` CLI against the real standalone platform: YAML definitions in a folder are
planned (pushed into the draft, pending diff shown), applied, rolled back and read, and
its refusals exit non-zero with the platform's message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dps_client.cli import main
from tests.support.standalone import RunningStandalone


class Dps:
    """Runs `dps` in-process with the test's environment and captures its output."""

    def __init__(
        self,
        platform: RunningStandalone,
        project: str,
        folder: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.args = ["--url", platform.base_url, "--token", platform.token, "--project", project]
        self.folder = folder
        self.capsys = capsys

    def __call__(self, *argv: str, code: int = 0) -> str:
        self.capsys.readouterr()
        command, *rest = argv
        exit_code = main([command, *self.args, "--dir", str(self.folder), *rest])
        out, err = self.capsys.readouterr()
        assert exit_code == code, out + err
        return out + err

    def definitions(self) -> dict:
        return yaml.safe_load((self.folder / "storefront.yaml").read_text())

    def write(self, document: dict) -> None:
        (self.folder / "storefront.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture
def dps(platform: RunningStandalone, project: str, tmp_path: Path, capsys) -> Dps:
    return Dps(platform, project, tmp_path / "dps", capsys)


CART_QTY = {
    "name": "cart_qty",
    "pipeline": "storefront",
    "source_event": "add_to_cart",
    "aggregation": "SUM",
    "field": "quantity",
    "time_windows": ["5m", "1h"],
}


class TestPlanApply:
    def test_init_plan_apply_then_nothing_pending(self, dps: Dps):
        assert "Wrote" in dps("init", "storefront", "--template", "behavioral")
        plan = dps("plan")
        assert "created pipeline storefront" in plan
        assert "Pending changes against nothing deployed yet:" in plan
        assert "+ feature cart_adds: created" in plan
        applied = dps("apply", "-m", "launch")
        assert "Deployed version 1" in applied
        again = dps("plan")
        assert "Draft already matches" in again
        assert "No changes: the draft equals version 1." in again
        assert "Nothing to deploy" in dps("apply")

    def test_an_edited_file_plans_only_its_change_and_apply_deploys_it(self, dps: Dps):
        dps("init", "storefront")
        dps("apply")
        document = dps.definitions()
        document["features"].append(CART_QTY)
        document["features"] = [f for f in document["features"] if f["name"] != "searches"]
        dps.write(document)
        plan = dps("plan")
        assert "created feature cart_qty" in plan
        assert "deleted feature searches" in plan
        assert "Pending changes against version 1:" in plan
        assert "2 change(s)" in plan
        assert "Deployed version 2 (2 change(s))" in dps("apply")

    def test_apply_of_a_new_feature_waits_until_its_backfill_is_live(self, dps: Dps):
        dps("init", "storefront")
        dps("apply")
        document = dps.definitions()
        document["features"].append(CART_QTY)
        dps.write(document)
        out = dps("apply", "--poll", "0.2")
        assert "Version 2 is backfilling; the previous version serves" in out
        assert out.rstrip().endswith("Version 2 is live.")
        assert dps("deployments").splitlines()[0].split()[:2] == ["v2", "success"]

    def test_apply_no_wait_returns_while_the_new_version_backfills(self, dps: Dps):
        dps("init", "storefront")
        dps("apply")
        document = dps.definitions()
        document["features"].append(CART_QTY)
        dps.write(document)
        out = dps("apply", "--no-wait")
        assert "Deployed version 2" in out
        assert "is live" not in out
        assert dps("deployments").splitlines()[0].split()[:2] == ["v2", "backfilling"]

    def test_rollback_by_version_says_the_draft_was_reset(self, dps: Dps):
        dps("init", "storefront")
        dps("apply")
        document = dps.definitions()
        document["features"].append(CART_QTY)
        dps.write(document)
        dps("apply")
        document["features"].append(CART_QTY | {"name": "cart_qty_2"})
        dps.write(document)
        dps("plan")  # in the draft, not deployed
        out = dps("rollback", "1")
        assert "Rolled back to version 1: it is live again as version 3." in out
        assert "The draft was reset to version 1." in out
        assert "+ feature cart_qty_2: created" in out  # listed among the discarded edits
        history = dps("deployments")
        assert history.splitlines()[0].startswith("v3")

    def test_a_derived_feature_in_yaml_is_planned_then_dropped_with_its_input(self, dps: Dps):
        dps("init", "storefront")
        document = dps.definitions()
        rate = next(f for f in document["features"] if f["name"] == "cart_rate_24h")
        assert (rate["pipeline"], rate["expression"]) == (
            "storefront",
            "cart_adds_24h / page_views_24h",
        )
        assert "source_event" not in rate
        document["features"] += [
            CART_QTY,
            {"name": "qty_per_add", "pipeline": "storefront", "expression": "cart_qty_1h / 2"},
        ]
        dps.write(document)
        plan = dps("plan")
        assert "created feature qty_per_add" in plan
        assert "+ feature qty_per_add: created (derived cart_qty_1h / 2)" in plan
        dps("apply")
        assert "Draft already matches" in dps("plan")
        # Both go in one push: the derived feature is deleted before the one it reads.
        document["features"] = [
            f for f in document["features"] if f["name"] not in ("cart_qty", "qty_per_add")
        ]
        dps.write(document)
        plan = dps("plan")
        assert plan.index("deleted feature qty_per_add") < plan.index("deleted feature cart_qty")

    def test_export_writes_a_file_that_plans_to_no_change(self, dps: Dps):
        dps("init", "storefront")
        dps("apply")
        exported = dps("export")
        (dps.folder / "storefront.yaml").write_text(exported)
        assert "Draft already matches" in dps("plan")


class TestGet:
    def test_get_prints_a_users_features_as_json(self, dps: Dps):
        dps("init", "storefront")
        dps("apply")
        out = dps("get", "nobody", "--features", "cart_adds_5m,page_views_1h")
        assert '"cart_adds_5m": 0' in out
        assert '"user_id": "nobody"' in out


class TestRefusals:
    def test_a_feature_on_an_undefined_pipeline_exits_2_before_any_request(self, dps: Dps):
        dps.folder.mkdir()
        dps.write({"features": [CART_QTY]})
        assert "pipeline 'storefront' is not defined" in dps("plan", code=2)

    def test_no_definitions_folder_exits_2(self, dps: Dps):
        assert "dps init" in dps("plan", code=2)

    def test_an_invalid_feature_exits_1_with_the_apis_field_errors(self, dps: Dps):
        dps("init", "storefront")
        document = dps.definitions()
        document["features"].append(CART_QTY | {"field": "product_id"})  # SUM of a string
        dps.write(document)
        out = dps("plan", code=1)
        assert "422" in out

    def test_rollback_to_an_unknown_version_exits_1(self, dps: Dps):
        dps("init", "storefront")
        dps("apply")
        assert "No deployment with version 7" in dps("rollback", "7", code=1)

    def test_a_missing_project_exits_2(self, capsys, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.delenv("DPS_PROJECT", raising=False)
        assert main(["plan"]) == 2
        assert "DPS_PROJECT" in capsys.readouterr().err


def test_the_installed_console_script_runs_with_settings_from_the_environment(
    platform: RunningStandalone, project: str, tmp_path: Path
):
    dps = Path(sys.executable).with_name("dps")
    env = {
        **os.environ,
        "DPS_URL": platform.base_url,
        "DPS_TOKEN": platform.token,
        "DPS_PROJECT": project,
    }
    for argv in (["init", "shop"], ["apply"]):
        subprocess.run([dps, *argv], cwd=tmp_path, env=env, check=True, capture_output=True)
    done = subprocess.run(
        [dps, "deployments"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("v1")
