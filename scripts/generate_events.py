"""Send signed storefront events to a pipeline, so its features fill up while you watch.

Sends page_view / add_to_cart / purchase events for a handful of users at a steady rate,
each signed Standard Webhooks style, and prints a progress line every second:

    .venv/bin/python scripts/generate_events.py \\
        --base-url http://127.0.0.1:8000 --project shop_1 --pipeline <pipeline id> \\
        --token "$TOKEN" --rate 5 --duration 60

With `--token` the script reads the pipeline (its events and their fields) and its
webhook secret from the config API; without it, pass `--secret whsec_...` and the
events are sent with the default properties below. `--api-url` is the config API when
it is not at `--base-url` (ingestion on :8001, config API on :8000). Only the standard
library and httpx are used.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import random
import sys
import time
import uuid
from collections import Counter
from typing import Any

import httpx

EVENTS = ("page_view", "add_to_cart", "purchase")
# How often each event is sent: browsing is common, buying is rare.
WEIGHTS = {"page_view": 6, "add_to_cart": 3, "purchase": 1}
PRODUCTS = [f"sku-{n:03d}" for n in range(1, 13)]
PAGE_TYPES = ["home", "category", "product", "cart", "search"]

# Fields of the default events (used without --token); a pipeline read from the config
# API replaces them with its own.
DEFAULT_FIELDS: dict[str, list[dict[str, Any]]] = {
    "page_view": [
        {"name": "page_type", "type": "string", "required": True},
        {"name": "url", "type": "string"},
    ],
    "add_to_cart": [
        {"name": "product_id", "type": "string", "required": True},
        {"name": "quantity", "type": "number"},
        {"name": "price", "type": "number"},
        {"name": "currency", "type": "string"},
    ],
    "purchase": [
        {"name": "order_id", "type": "string", "required": True},
        {"name": "revenue", "type": "number", "required": True},
        {"name": "items_count", "type": "number"},
        {"name": "currency", "type": "string"},
    ],
}


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Returns the `webhook-signature` header value for the body (Standard Webhooks v1)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def value_for(field: dict[str, Any], rng: random.Random) -> Any:
    """Returns a plausible value for one event field, by name first, then by type."""
    name, kind = field["name"], field["type"]
    if kind == "number":
        if name in ("quantity", "items_count"):
            return rng.randint(1, 4)
        return round(rng.uniform(5, 120), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "timestamp":
        return int(time.time() * 1000)
    if kind == "object":
        return {"source": "generate_events"}
    by_name = {
        "product_id": lambda: rng.choice(PRODUCTS),
        "page_type": lambda: rng.choice(PAGE_TYPES),
        "url": lambda: f"/p/{rng.choice(PRODUCTS)}",
        "currency": lambda: "EUR",
        "order_id": lambda: f"order-{uuid.uuid4().hex[:10]}",
    }
    return by_name.get(name, lambda: f"{name}-{rng.randint(1, 9)}")()


def properties(fields: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """Returns properties for every required field and most optional ones."""
    return {f["name"]: value_for(f, rng) for f in fields if f.get("required") or rng.random() < 0.8}


def fetch_pipeline(
    api: httpx.Client, project: str, pipeline: str
) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """Returns (webhook secret, {event name: fields}) of the pipeline's enabled events."""
    base = f"/api/v1/projects/{project}/pipelines/{pipeline}"
    webhook = api.get(f"{base}/webhook")
    webhook.raise_for_status()
    definition = api.get(base)
    definition.raise_for_status()
    events = {
        e["name"]: e.get("fields", [])
        for e in definition.json().get("events", [])
        if e.get("enabled", True)
    }
    return webhook.json()["secret"], events


def send(client: httpx.Client, path: str, secret: str, envelope: dict[str, Any]) -> tuple[int, str]:
    """Signs and POSTs one event; returns (status, error name or '')."""
    body = json.dumps(envelope, separators=(",", ":")).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    response = client.post(path, content=body, headers=headers)
    if response.status_code >= 400:
        try:
            return response.status_code, str(response.json().get("error", ""))
        except ValueError:
            return response.status_code, ""
    return response.status_code, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="ingestion URL")
    parser.add_argument("--api-url", help="config API URL (default: --base-url)")
    parser.add_argument("--project", required=True)
    parser.add_argument("--pipeline", required=True, help="pipeline id")
    parser.add_argument("--token", help="bearer token: read the secret and events from the API")
    parser.add_argument("--secret", help="webhook secret (whsec_...) when no --token is given")
    parser.add_argument("--users", type=int, default=5, help="distinct users (default 5)")
    parser.add_argument("--rate", type=float, default=5.0, help="events per second (default 5)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    args = parser.parse_args(argv)
    if not args.token and not args.secret:
        parser.error("pass --token (to read the secret from the config API) or --secret")

    rng = random.Random(args.seed)
    fields: dict[str, list[dict[str, Any]]] = DEFAULT_FIELDS
    secret = args.secret
    if args.token:
        auth = {"authorization": f"Bearer {args.token}"}
        with httpx.Client(base_url=args.api_url or args.base_url, headers=auth) as api:
            fetched_secret, fields = fetch_pipeline(api, args.project, args.pipeline)
        secret = secret or fetched_secret
    names = [e for e in EVENTS if e in fields] or sorted(fields)
    if not names:
        print("the pipeline has no enabled event to send", file=sys.stderr)
        return 1
    weights = [WEIGHTS.get(n, 1) for n in names]
    users = [f"user-{n}" for n in range(1, args.users + 1)]
    path = f"/ingest/{args.project}/{args.pipeline}"
    print(
        f"sending {', '.join(names)} for {len(users)} users at {args.rate}/s "
        f"for {args.duration:.0f}s to {args.base_url}{path}"
    )

    sent: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    interval = 1.0 / args.rate
    started = time.monotonic()
    next_report = started + 1.0
    with httpx.Client(base_url=args.base_url, timeout=10.0) as client:
        for n in itertools.count():
            due = started + n * interval
            now = time.monotonic()
            if due - started >= args.duration:
                break
            if due > now:
                time.sleep(due - now)
            event = rng.choices(names, weights)[0]
            envelope = {
                "event": event,
                "user_id": rng.choice(users),
                "event_id": f"evt_{uuid.uuid4().hex}",
                "properties": properties(fields[event], rng),
            }
            try:
                status, error = send(client, path, secret, envelope)
            except httpx.HTTPError as exc:
                status, error = 0, type(exc).__name__
            sent[event] += 1
            outcomes["accepted" if status in (200, 202) else f"{status} {error}".strip()] += 1
            if time.monotonic() >= next_report:
                next_report += 1.0
                elapsed = time.monotonic() - started
                print(
                    f"{elapsed:5.1f}s  sent {sum(sent.values()):5d}  "
                    + "  ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())),
                    flush=True,
                )
    print(
        "done: "
        + ", ".join(f"{k} {v}" for k, v in sorted(sent.items()))
        + " | "
        + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
    )
    return 0 if outcomes["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
