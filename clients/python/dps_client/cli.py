"""`dps`: plan and apply feature definitions kept as YAML in your repository.

    dps init storefront --template behavioral   # writes dps/storefront.yaml
    dps plan                                     # pushes dps/*.yaml into the draft, shows the diff
    dps apply                                    # ... and deploys it
    dps deployments                              # history
    dps rollback 1                               # re-activates version 1
    dps get user-1                               # a user's features
    dps export > dps/all.yaml                    # the current draft as a definitions file

Settings come from flags or the environment: DPS_URL (config API; default
http://127.0.0.1:8000), DPS_TOKEN, DPS_PROJECT, DPS_DIR (default `dps`), DPS_SERVING_URL
(for `get`; default DPS_URL). It talks to the config API only, the same API the dashboard
uses, so the two never disagree: the YAML goes into the draft, the draft is deployed.
Exit codes: 0 done, 1 refused by the platform, 2 bad usage or bad YAML.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dps_client.config_api import ConfigClient, Json
from dps_client.definitions import DefinitionError, from_draft, from_template, load, push
from dps_client.errors import ApiError, DPSError
from dps_client.features import FeaturesClient

_SIGN = {"create": "+", "update": "~", "delete": "-"}


def _out(text: str = "") -> None:
    print(text, flush=True)


def _changes(changes: list[Json]) -> None:
    for change in changes:
        _out(f"  {_SIGN.get(change['type'], '?')} {change['description']}")


def _pending(config: ConfigClient) -> Json:
    pending = config.pending()
    base = pending["base_version"]
    against = f"version {base}" if base is not None else "nothing deployed yet"
    if pending["changes"]:
        _out(f"Pending changes against {against}:")
        _changes(pending["changes"])
    else:
        _out(f"No changes: the draft equals {against}.")
    return pending


def _push(args: argparse.Namespace, config: ConfigClient) -> None:
    edits = push(config, load(Path(args.dir)))
    if edits:
        _out(f"Draft updated from {args.dir}/: " + ", ".join(edits) + ".")
    else:
        _out(f"Draft already matches {args.dir}/.")


# -- commands -----------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace, config: ConfigClient) -> int:
    _push(args, config)
    pending = _pending(config)
    if pending["changes"]:
        _out(f"{len(pending['changes'])} change(s). Run `dps apply` to deploy them.")
    return 0


def cmd_apply(args: argparse.Namespace, config: ConfigClient) -> int:
    _push(args, config)
    try:
        deployed = config.deploy(args.message)
    except ApiError as exc:
        if exc.error != "NothingToDeploy":
            raise
        _out(f"Nothing to deploy: {exc.detail}.")
        return 0
    _out(f"Deployed version {deployed['version']} ({len(deployed['changes'])} change(s)):")
    _changes(deployed["changes"])
    if deployed.get("status") != "backfilling" or args.no_wait:
        return 0
    return _wait_for_backfill(config, deployed, args.poll)


def _wait_for_backfill(config: ConfigClient, deployed: Json, poll_s: float) -> int:
    """Waits while the new version fills its features from the archive (the previous
    version serves meanwhile), printing each change of progress; returns 1 if it failed.
    Interrupting stops the wait only: the backfill goes on in the platform."""
    version = deployed["version"]
    _out(f"Version {version} is backfilling; the previous version serves until it is live.")
    shown: list[str] = []
    while True:
        current = next((d for d in config.deployments() if d["id"] == deployed["id"]), None)
        if current is None:  # a deployment is never deleted; guard all the same
            _err(f"Deployment version {version} is no longer listed")
            return 1
        if current["status"] != "backfilling":
            break
        lines = deployment_lines(current)[1:]
        if lines and lines != shown:
            shown = lines
            for line in lines:
                _out(line.strip())
        time.sleep(poll_s)
    if current["status"] == "success":
        _out(f"Version {version} is live.")
        return 0
    _err(f"Version {version} is {current['status']}: {current.get('error') or 'no reason given'}")
    return 1


def cmd_deployments(args: argparse.Namespace, config: ConfigClient) -> int:
    history = config.deployments()
    if args.json:
        _out(json.dumps(history, indent=2))
        return 0
    for d in history:
        for line in deployment_lines(d):
            _out(line)
    return 0


def deployment_lines(d: Json) -> list[str]:
    """Returns how `dps deployments` prints one deployment: its line, then the backfill's
    progress while it is `backfilling`, or the reason it `failed`."""
    when = d.get("deployed_at") or d["created_at"]
    what = d.get("description") or f"{len(d['changes'])} change(s)"
    lines = [f"v{d['version']:<4} {d['status']:<12} {when[:19]}  {d['deployed_by']}  {what}"]
    fill = d.get("backfill")
    if d["status"] == "backfilling" and fill:
        total = fill.get("users_total")
        done = f"{fill.get('users_done', 0)}/{total if total is not None else '?'} users"
        lines.append(f"      backfilling {', '.join(fill['features'])}: {fill['phase']}, {done}")
    elif d["status"] == "failed" and d.get("error"):
        lines.append(f"      {d['error']}")
    return lines


def cmd_rollback(args: argparse.Namespace, config: ConfigClient) -> int:
    target = next((d for d in config.deployments() if d["version"] == args.version), None)
    if target is None:
        _err(f"No deployment with version {args.version} (see `dps deployments`)")
        return 1
    done = config.rollback(target["id"])
    _out(f"Rolled back to version {args.version}: it is live again as version {done['version']}.")
    _changes(done["changes"])
    if done.get("draft_reset"):
        _out(f"The draft was reset to version {args.version}.")
        if done.get("discarded_changes"):
            _out("Draft edits that were not deployed and are now discarded:")
            _changes(done["discarded_changes"])
    _out(
        f"Your {args.dir}/ files may still describe the newer config: the next `dps plan` "
        "would bring it back. Edit them (or `dps export`) to match."
    )
    return 0


def cmd_get(args: argparse.Namespace, config: ConfigClient) -> int:
    url = args.serving_url or args.url
    features = [f for f in (args.features or "").split(",") if f] or None
    with FeaturesClient(url, args.token, args.project, timeout=args.timeout) as client:
        vector = client.get(args.id, entity=args.entity, features=features)
    _out(json.dumps(vector.raw, indent=2, sort_keys=False))
    return 0


def cmd_init(args: argparse.Namespace, config: ConfigClient) -> int:
    folder = Path(args.dir)
    path = folder / f"{args.name}.yaml"
    if path.exists() and not args.force:
        _err(f"{path} exists (use --force to overwrite)")
        return 2
    text = from_template(config.template(args.template), args.name)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Pipeline {args.name} from the {args.template!r} template.\n{text}")
    _out(f"Wrote {path}. Edit it, then `dps plan` and `dps apply`.")
    return 0


def cmd_export(args: argparse.Namespace, config: ConfigClient) -> int:
    sys.stdout.write(from_draft(config.pipelines(), config.features()))
    return 0


# -- wiring -----------------------------------------------------------------------------------
def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=_env("DPS_URL", "http://127.0.0.1:8000"),
        help="config API base URL (DPS_URL)",
    )
    common.add_argument("--token", default=_env("DPS_TOKEN"), help="bearer token (DPS_TOKEN)")
    common.add_argument("--project", default=_env("DPS_PROJECT"), help="project id (DPS_PROJECT)")
    common.add_argument(
        "--dir",
        default=_env("DPS_DIR", "dps"),
        help="folder of the YAML definitions (DPS_DIR, default dps)",
    )
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per request")

    top = argparse.ArgumentParser(
        prog="dps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_, description=help_)

    add("plan", "push the YAML into the draft and show what a deploy would change")
    apply = add("apply", "push the YAML into the draft and deploy it")
    apply.add_argument("-m", "--message", default="", help="deployment description")
    apply.add_argument(
        "--no-wait",
        action="store_true",
        help="return at once when the version backfills (default: wait until it is live)",
    )
    apply.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    history = add("deployments", "list the deployment history, newest first")
    history.add_argument("--json", action="store_true", help="print the raw JSON")
    rollback = add("rollback", "re-activate a deployed version (resets the draft to it)")
    rollback.add_argument("version", type=int)
    get = add("get", "read one user's (or entity's) features")
    get.add_argument("id", help="user id (or entity id with --entity)")
    get.add_argument(
        "--entity", default="users", help="entity in the URL, e.g. product (default: users)"
    )
    get.add_argument("--features", help="comma-separated keys, e.g. cart_adds_5m,page_views_1h")
    get.add_argument(
        "--serving-url",
        default=_env("DPS_SERVING_URL"),
        help="serving base URL (DPS_SERVING_URL; default --url)",
    )
    init = add("init", "write a definitions file for a new pipeline from a template")
    init.add_argument("name", help="pipeline name")
    init.add_argument("--template", default="behavioral", help="template name (default behavioral)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    add("export", "print the current draft as a definitions file")
    return top


COMMANDS: dict[str, Any] = {
    "plan": cmd_plan,
    "apply": cmd_apply,
    "deployments": cmd_deployments,
    "rollback": cmd_rollback,
    "get": cmd_get,
    "init": cmd_init,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.project:
        _err("dps: no project: pass --project or set DPS_PROJECT")
        return 2
    try:
        with ConfigClient(args.url, args.token, args.project, timeout=args.timeout) as config:
            code: int = COMMANDS[args.command](args, config)
            return code
    except DefinitionError as exc:
        _err(f"dps: {exc}")
        return 2
    except ApiError as exc:
        _err(f"dps: {exc.status_code} {exc.error}: {exc.detail}")
        for problem in exc.fields:
            loc = ".".join(str(p) for p in problem.get("loc", []))
            _err(f"  {loc}: {problem.get('msg', '')}")
        return 1
    except DPSError as exc:
        _err(f"dps: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
