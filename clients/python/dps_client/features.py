"""Reading features, for recommender services: one entity, or many in batches.

    with FeaturesClient("http://serving:8002", token, "shop_1") as features:
        user = features.get("user-1")                       # GET /features/shop_1/users/user-1
        users = features.get_many(["user-2", "user-3"], features=["cart_adds_5m"])
        product = features.get("sku-9", entity="product")   # GET /features/shop_1/product/sku-9

One client holds one connection pool: build it once per process and reuse it. Reads
are retried (connection errors, timeouts, 503, 429 honouring Retry-After); 404/422
(unknown project, unknown feature key) are raised at once as ApiError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx

from dps_client._http import LIMITS, acall, bearer, call
from dps_client.retry import RetryPolicy

USERS = "users"
# The serving default (SERVING_MAX_BATCH_USERS); longer id lists are split.
MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """One entity's features: `{feature}_{window}` → value. `version` is the deployment
    the values were computed for and `as_of` the server time the windows were read at;
    `last_event_at` (the newest event counted) and `updated_at` (compute's last write)
    tell a 0 of "nothing happened" (recent `updated_at`) from one of "compute is behind"
    (both None: compute has not seen the entity). `raw` keeps the whole answer for fields
    newer than this client."""

    entity_id: str
    features: dict[str, Any]
    version: int | None = None
    as_of: str | None = None
    last_event_at: str | None = None
    updated_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def _one_path(project: str, entity: str, entity_id: str) -> str:
    # quote(safe=""): an id with "/" or "?" must stay one path segment.
    parts = (project, entity, entity_id)
    return "/features/" + "/".join(quote(part, safe="") for part in parts)


def _batch_path(project: str, entity: str) -> str:
    return f"/features/{quote(project, safe='')}/{quote(entity, safe='')}/batch"


def _params(features: Sequence[str] | None) -> dict[str, str]:
    return {"features": ",".join(features)} if features else {}


def _batch_body(entity: str, ids: Sequence[str], features: Sequence[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"user_ids" if entity == USERS else "ids": list(ids)}
    if features:
        body["features"] = list(features)
    return body


def _vector(item: dict[str, Any], body: dict[str, Any]) -> FeatureVector:
    entity_id = item.get("user_id", item.get("entity_id", item.get("id", "")))
    return FeatureVector(
        entity_id=str(entity_id),
        features=dict(item.get("features", {})),
        version=body.get("version"),
        as_of=body.get("as_of"),
        last_event_at=item.get("last_event_at"),
        updated_at=item.get("updated_at"),
        raw=item,
    )


def _vectors(body: dict[str, Any]) -> list[FeatureVector]:
    items: list[dict[str, Any]] = next(
        (v for k, v in body.items() if k in ("users", "entities", "items")), []
    )
    return [_vector(item, body) for item in items]


def _chunks(ids: Sequence[str], size: int) -> list[Sequence[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


class FeaturesClient:
    """Synchronous reads. `base_url` is the serving process (or the standalone one)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        project: str,
        *,
        timeout: float = 2.0,
        retry: RetryPolicy = RetryPolicy(),
        batch_size: int = MAX_BATCH,
        http: httpx.Client | None = None,
    ) -> None:
        self.project = project
        self.retry = retry
        self.batch_size = batch_size
        self._http = http or httpx.Client(
            base_url=base_url, headers=bearer(token), timeout=timeout, limits=LIMITS
        )

    def get(
        self, entity_id: str, *, entity: str = USERS, features: Sequence[str] | None = None
    ) -> FeatureVector:
        """Returns one entity's features (all of them, or the `features` keys)."""
        path, params = _one_path(self.project, entity, entity_id), _params(features)
        response = call(lambda: self._http.get(path, params=params), self.retry)
        body = response.json()
        return _vector(body, body)

    def get_many(
        self, ids: Sequence[str], *, entity: str = USERS, features: Sequence[str] | None = None
    ) -> list[FeatureVector]:
        """Returns the features of every id, in order (duplicates included), in as few
        requests as the batch limit allows."""
        out: list[FeatureVector] = []
        path = _batch_path(self.project, entity)
        for chunk in _chunks(ids, self.batch_size):
            body = _batch_body(entity, chunk, features)
            response = call(partial(self._http.post, path, json=body), self.retry)
            out.extend(_vectors(response.json()))
        return out

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FeaturesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFeaturesClient:
    """`FeaturesClient` for asyncio; `get_many` sends its chunks concurrently."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        project: str,
        *,
        timeout: float = 2.0,
        retry: RetryPolicy = RetryPolicy(),
        batch_size: int = MAX_BATCH,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.project = project
        self.retry = retry
        self.batch_size = batch_size
        self._http = http or httpx.AsyncClient(
            base_url=base_url, headers=bearer(token), timeout=timeout, limits=LIMITS
        )

    async def get(
        self, entity_id: str, *, entity: str = USERS, features: Sequence[str] | None = None
    ) -> FeatureVector:
        path, params = _one_path(self.project, entity, entity_id), _params(features)
        response = await acall(lambda: self._http.get(path, params=params), self.retry)
        body = response.json()
        return _vector(body, body)

    async def get_many(
        self, ids: Sequence[str], *, entity: str = USERS, features: Sequence[str] | None = None
    ) -> list[FeatureVector]:
        path = _batch_path(self.project, entity)

        async def one(chunk: Sequence[str]) -> list[FeatureVector]:
            body = _batch_body(entity, chunk, features)
            response = await acall(lambda: self._http.post(path, json=body), self.retry)
            return _vectors(response.json())

        parts = await asyncio.gather(*(one(c) for c in _chunks(ids, self.batch_size)))
        return [vector for part in parts for vector in part]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncFeaturesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
