"""Pipeline and feature definitions kept as YAML files in the user's repository, and
pushing them into the config API's draft.

A definitions folder holds any number of `*.yaml`/`*.yml` files, each with optional
`pipelines:` and `features:` lists (`dps init` writes a first one from a template):

    pipelines:
      - name: storefront
        category: behavioral
        active: true                 # activate (true) or deactivate (false) it
        events:
          - name: add_to_cart
            fields:
              - {name: quantity, type: number, required: true}
    features:
      - name: cart_qty
        pipeline: storefront         # the pipeline's name, not its id
        source_event: add_to_cart
        aggregation: SUM
        field: quantity
        time_windows: [5m, 1h]
      - name: qty_per_add            # a derived feature: arithmetic of served keys
        pipeline: storefront
        expression: cart_qty_1h / cart_adds_1h

The files are the source of truth, as in Terraform: pushing makes the draft equal to them
(creates, updates, and deletes what the files no longer list). Things are matched by
name, so renaming a pipeline in a file makes a new pipeline (new id, new webhook secret).
Only the draft changes; deploying it is a separate, explicit step (`dps apply`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dps_client.config_api import ConfigClient, Json

PIPELINE_KEYS = {"name", "description", "category", "active", "events"}
FEATURE_KEYS = {
    "name",
    "kind",
    "expression",
    "description",
    "pipeline",
    "source_event",
    "aggregation",
    "field",
    "time_windows",
    "size",
    "filter",
    "entity",
    "enabled",
}
EVENT_DEFAULTS: dict[str, Any] = {"description": "", "enabled": True, "fields": []}
# `entity`: the entity this property is the key of (e.g. product), none by default.
FIELD_DEFAULTS: dict[str, Any] = {"required": False, "description": "", "entity": None}


class DefinitionError(ValueError):
    """The YAML files are unreadable or describe an impossible config."""


@dataclass
class Definitions:
    """What the files describe, by name."""

    pipelines: dict[str, Json] = field(default_factory=dict)
    features: dict[str, Json] = field(default_factory=dict)


def load(folder: Path) -> Definitions:
    """Reads every YAML file of `folder` (sorted, not recursive). Raises DefinitionError."""
    if not folder.is_dir():
        raise DefinitionError(f"{folder}/ does not exist: run `dps init` or pass --dir")
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise DefinitionError(f"{folder}/ holds no *.yaml file")
    out = Definitions()
    for path in files:
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DefinitionError(f"{path}: not YAML: {exc}") from exc
        if not isinstance(document, dict) or set(document) - {"pipelines", "features"}:
            raise DefinitionError(f"{path}: expected a mapping with `pipelines:` and `features:`")
        for item in document.get("pipelines") or []:
            _add(out.pipelines, _checked(item, PIPELINE_KEYS, path, "pipeline"), path)
        for item in document.get("features") or []:
            _add(out.features, _checked(item, FEATURE_KEYS, path, "feature"), path)
    for name, feature in out.features.items():
        if feature.get("pipeline") not in out.pipelines:
            raise DefinitionError(
                f"feature {name}: pipeline {feature.get('pipeline')!r} is not defined in {folder}/"
            )
    return out


def _checked(item: object, allowed: set[str], path: Path, what: str) -> Json:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise DefinitionError(f"{path}: every {what} needs a `name`")
    unknown = set(item) - allowed
    if unknown:
        raise DefinitionError(
            f"{path}: {what} {item['name']}: unknown key(s) {', '.join(sorted(unknown))}"
        )
    return dict(item)


def _add(into: dict[str, Json], item: Json, path: Path) -> None:
    if item["name"] in into:
        raise DefinitionError(f"{path}: {item['name']!r} is defined twice")
    into[item["name"]] = item


# -- comparing with the draft -------------------------------------------------------------------
def _events(events: list[Json]) -> list[Json]:
    """Events with every default filled in, so the files and the API compare equal."""
    out = []
    for event in events:
        fields = [FIELD_DEFAULTS | dict(f) for f in event.get("fields") or []]
        out.append(EVENT_DEFAULTS | dict(event) | {"fields": fields})
    return out


def pipeline_body(wanted: Json) -> Json:
    body: Json = {
        "name": wanted["name"],
        "description": wanted.get("description", ""),
        "events": _events(wanted.get("events") or []),
    }
    if wanted.get("category"):
        body["category"] = wanted["category"]
    return body


def is_derived(feature: Json) -> bool:
    """A derived feature says `kind: derived`, or just gives an `expression`."""
    return feature.get("kind") == "derived" or "expression" in feature


def feature_body(wanted: Json, pipeline_id: str) -> Json:
    if is_derived(wanted):
        return {
            "kind": "derived",
            "name": wanted["name"],
            "description": wanted.get("description", ""),
            "pipeline_id": pipeline_id,
            "expression": wanted.get("expression"),
            "enabled": wanted.get("enabled", True),
        }
    return {
        "name": wanted["name"],
        "description": wanted.get("description", ""),
        "pipeline_id": pipeline_id,
        "source_event": wanted.get("source_event"),
        "aggregation": wanted.get("aggregation"),
        "field": wanted.get("field"),
        "time_windows": list(wanted.get("time_windows") or []),
        "size": wanted.get("size"),
        "filter": wanted.get("filter"),
        "entity": wanted.get("entity", "user"),
        "enabled": wanted.get("enabled", True),
    }


def _pipeline_differs(current: Json, body: Json) -> bool:
    return any(
        current.get(key) != body[key]
        for key in ("name", "description", "events", "category")
        if key in body
    )


def _feature_differs(current: Json, body: Json) -> bool:
    # The API sorts and deduplicates windows on save: compare them as sets.
    if set(current.get("time_windows", [])) != set(body.get("time_windows", [])):
        return True
    return any(current.get(k) != v for k, v in body.items() if k != "time_windows")


def push(config: ConfigClient, wanted: Definitions) -> list[str]:
    """Makes the draft equal to `wanted`; returns one line per edit made.

    Order keeps every intermediate draft valid for the API: features the files dropped
    go first (a pipeline cannot be deleted while features point at it), pipelines are
    created or updated before the features that name them, and dropped pipelines go last.
    Raises ApiError when the API refuses an edit (the edits before it stay in the draft)."""
    edits: list[str] = []
    pipelines = {p["name"]: p for p in config.pipelines()}
    features = {f["name"]: f for f in config.features()}

    # Derived features first: a feature a derived one reads cannot be deleted before it.
    dropped = features.keys() - wanted.features.keys()
    for name in sorted(dropped, key=lambda n: (features[n].get("kind") != "derived", n)):
        config.delete_feature(features[name]["id"])
        edits.append(f"deleted feature {name}")

    ids: dict[str, str] = {}
    for name, spec in wanted.pipelines.items():
        body = pipeline_body(spec)
        current = pipelines.get(name)
        if current is None:
            current = config.create_pipeline(body)
            edits.append(f"created pipeline {name}")
        elif _pipeline_differs(current, body):
            body.setdefault("category", current["category"])
            current = config.update_pipeline(
                current["id"], body | {"revision": current["revision"]}
            )
            edits.append(f"updated pipeline {name}")
        ids[name] = current["id"]
        active = bool(spec.get("active", True))
        if (current["status"] == "active") != active:
            config.set_pipeline_active(current["id"], active)
            edits.append(f"{'activated' if active else 'deactivated'} pipeline {name}")

    # Aggregates first: a derived feature is checked against the keys they serve.
    for name, spec in sorted(wanted.features.items(), key=lambda item: is_derived(item[1])):
        body = feature_body(spec, ids[spec["pipeline"]])
        current = features.get(name)
        if current is None:
            config.create_feature(body)
            edits.append(f"created feature {name}")
        elif _feature_differs(current, body):
            config.update_feature(current["id"], body | {"revision": current["revision"]})
            edits.append(f"updated feature {name}")

    for name in sorted(pipelines.keys() - wanted.pipelines.keys()):
        config.delete_pipeline(pipelines[name]["id"])
        edits.append(f"deleted pipeline {name}")
    return edits


# -- writing files ---------------------------------------------------------------------------
def _clean_event(event: Json) -> Json:
    """Drops the defaults, so written files stay short."""
    out: Json = {"name": event["name"]}
    if event.get("description"):
        out["description"] = event["description"]
    if event.get("enabled") is False:
        out["enabled"] = False
    fields = []
    for f in event.get("fields") or []:
        item = {"name": f["name"], "type": f["type"]}
        if f.get("required"):
            item["required"] = True
        if f.get("description"):
            item["description"] = f["description"]
        if f.get("entity"):
            item["entity"] = f["entity"]
        fields.append(item)
    if fields:
        out["fields"] = fields
    return out


def _clean_feature(feature: Json, pipeline: str) -> Json:
    out: Json = {"name": feature["name"]}
    if feature.get("description"):
        out["description"] = feature["description"]
    if feature.get("kind") == "derived":
        out |= {"pipeline": pipeline, "expression": feature["expression"]}
        if feature.get("enabled") is False:
            out["enabled"] = False
        return out
    out |= {
        "pipeline": pipeline,
        "source_event": feature["source_event"],
        "aggregation": feature["aggregation"],
    }
    if feature.get("field"):
        out["field"] = feature["field"]
    out["time_windows"] = list(feature["time_windows"])
    if feature.get("size") is not None:
        out["size"] = feature["size"]
    if feature.get("filter"):
        out["filter"] = feature["filter"]
    if feature.get("entity", "user") != "user":
        out["entity"] = feature["entity"]
    if feature.get("enabled") is False:
        out["enabled"] = False
    return out


def from_template(template: Json, name: str) -> str:
    """Returns a definitions file for a new pipeline `name` built from a template."""
    pipeline: Json = {
        "name": name,
        "category": template["category"],
        "active": True,
        "events": [_clean_event(e) for e in template["events"]],
    }
    features = [_clean_feature(f, name) for f in template.get("suggested_features", [])]
    return dump({"pipelines": [pipeline], "features": features})


def from_draft(pipelines: list[Json], features: list[Json]) -> str:
    """Returns a definitions file describing the current draft (`dps export`)."""
    names = {p["id"]: p["name"] for p in pipelines}
    out_pipelines = []
    for p in pipelines:
        item: Json = {"name": p["name"]}
        if p.get("description"):
            item["description"] = p["description"]
        item |= {
            "category": p["category"],
            "active": p["status"] == "active",
            "events": [_clean_event(e) for e in p["events"]],
        }
        out_pipelines.append(item)
    out_features = [_clean_feature(f, names.get(f["pipeline_id"], "?")) for f in features]
    return dump({"pipelines": out_pipelines, "features": out_features})


def dump(document: Json) -> str:
    text: str = yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=100)
    return text
