"""The config API (pipelines, features, deployments) for the CLI and for scripts.

Synchronous: it is called by people and CI jobs, one request at a time. Reads are
retried like feature reads; writes are sent once (a retried POST /deployments could
deploy twice), except on 429/503, which the platform answers before doing anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from dps_client._http import LIMITS, bearer, call
from dps_client.errors import ApiError, ConnectionFailed
from dps_client.retry import RetryPolicy

PAGE = 200  # the API's largest page

Json = dict[str, Any]


class ConfigClient:
    """One project's config. `base_url` is the config API (or the standalone process)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        project: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        http: httpx.Client | None = None,
    ) -> None:
        self.project = project
        self.retry = retry
        self._http = http or httpx.Client(
            base_url=base_url, headers=bearer(token), timeout=timeout, limits=LIMITS
        )
        self._root = f"/api/v1/projects/{quote(project, safe='')}"

    # -- plumbing --------------------------------------------------------------------------
    def _get(self, path: str, **params: Any) -> Any:
        response = call(lambda: self._http.get(self._root + path, params=params), self.retry)
        return response.json()

    def _write(self, method: str, path: str, body: Json | None = None) -> Any:
        def send() -> httpx.Response:
            try:
                response = self._http.request(method, self._root + path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                raise  # never reached the server: safe to retry
            except httpx.TransportError as exc:  # may have been applied: do not repeat it
                raise ConnectionFailed(f"{method} {path}: {type(exc).__name__}") from exc
            # Only answers given before any effect are worth a retry of a write.
            if response.status_code in (429, 503) and path != "/deployments":
                return response
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            return response

        response = call(send, self.retry)
        return response.json() if response.content else None

    def _all(self, path: str) -> Iterator[Json]:
        offset = 0
        while True:
            page = self._get(path, limit=PAGE, offset=offset)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    # -- pipelines ---------------------------------------------------------------------------
    def pipelines(self) -> list[Json]:
        """Every pipeline of the draft."""
        return list(self._all("/pipelines"))

    def create_pipeline(self, body: Json) -> Json:
        result: Json = self._write("POST", "/pipelines", body)
        return result

    def update_pipeline(self, pipeline_id: str, body: Json) -> Json:
        """Full replacement; `body` carries the `revision` it was based on."""
        result: Json = self._write("PUT", f"/pipelines/{pipeline_id}", body)
        return result

    def delete_pipeline(self, pipeline_id: str) -> None:
        self._write("DELETE", f"/pipelines/{pipeline_id}")

    def set_pipeline_active(self, pipeline_id: str, active: bool) -> Json:
        verb = "activate" if active else "deactivate"
        result: Json = self._write("POST", f"/pipelines/{pipeline_id}/{verb}")
        return result

    def webhook(self, pipeline_id: str) -> Json:
        """Ingest URLs, signing scheme and the current secret of a pipeline."""
        result: Json = self._get(f"/pipelines/{pipeline_id}/webhook")
        return result

    # -- features ----------------------------------------------------------------------------
    def features(self) -> list[Json]:
        """Every feature of the draft."""
        return list(self._all("/features"))

    def create_feature(self, body: Json) -> Json:
        result: Json = self._write("POST", "/features", body)
        return result

    def update_feature(self, feature_id: str, body: Json) -> Json:
        result: Json = self._write("PUT", f"/features/{feature_id}", body)
        return result

    def delete_feature(self, feature_id: str) -> None:
        self._write("DELETE", f"/features/{feature_id}")

    # -- deployments -------------------------------------------------------------------------
    def pending(self) -> Json:
        """The draft against the live version: `{"base_version", "changes"}`."""
        result: Json = self._get("/deployments/pending")
        return result

    def deploy(self, description: str = "") -> Json:
        result: Json = self._write("POST", "/deployments", {"description": description})
        return result

    def deployments(self) -> list[Json]:
        """The whole history, newest first."""
        return list(self._all("/deployments"))

    def rollback(self, deployment_id: str) -> Json:
        """Returns the new deployment, with `draft_reset` and `discarded_changes`."""
        result: Json = self._write("POST", f"/deployments/{deployment_id}/rollback")
        return result

    # -- training sets -----------------------------------------------------------------------
    def training_set(
        self,
        rows: Sequence[tuple[str, int]],
        features: Sequence[str] | None = None,
        *,
        format: str = "csv",
        job: bool | None = None,
        poll_s: float = 1.0,
        wait_s: float = 3600.0,
        on_progress: Callable[[Json], None] | None = None,
    ) -> bytes:
        """Returns the training set of `(user_id, epoch ms)` rows: CSV (or Parquet with
        `format="parquet"`) bytes. Up to the platform's synchronous limit (10,000 rows)
        it is answered at once; larger sets (or `job=True`) run as a job, which this
        polls every `poll_s` (`on_progress` gets each status) until it is done, then
        downloads. Raises ApiError (413 `TrainingJobTooLarge` above the job limit, the
        job's failure as `TrainingJobFailed`), TimeoutError after `wait_s`."""
        started = self.submit_training_set(rows, features, format=format, job=job)
        if isinstance(started, bytes):
            return started
        deadline = time.monotonic() + wait_s
        status = started
        while status["state"] not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"training-set job {status['job_id']} still {status['state']}")
            time.sleep(poll_s)
            status = self.training_job(status["job_id"])
            if on_progress is not None:
                on_progress(status)
        if status["state"] == "failed":
            raise ApiError(500, "TrainingJobFailed", str(status.get("error")))
        return self.training_job_result(status["job_id"])

    def submit_training_set(
        self,
        rows: Sequence[tuple[str, int]],
        features: Sequence[str] | None = None,
        *,
        format: str = "csv",
        job: bool | None = None,
    ) -> bytes | Json:
        """Sends the rows once (as CSV). Returns the answer's bytes when it came at once,
        else the started job (`job_id`, `state`, `status_url`)."""
        body = "user_id,timestamp\n" + "".join(f"{u},{int(t)}\n" for u, t in rows)
        params: dict[str, str] = {"format": format}
        if features is not None:
            params["features"] = ",".join(features)
        if job:
            params["job"] = "true"
        response = self._http.post(
            self._root + "/training-sets",
            params=params,
            content=body.encode(),
            headers={"content-type": "text/csv"},
        )
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        if response.status_code == 202:
            started: Json = response.json()
            return started
        return response.content

    def training_job(self, job_id: str) -> Json:
        """A training-set job: `state`, `rows_done`, `rows_total`, `result_url`..."""
        result: Json = self._get(f"/training-sets/jobs/{quote(job_id, safe='')}")
        return result

    def training_job_result(self, job_id: str) -> bytes:
        """A succeeded job's answer (CSV or Parquet bytes)."""
        path = f"{self._root}/training-sets/jobs/{quote(job_id, safe='')}/result"
        return call(lambda: self._http.get(path), self.retry).content

    def template(self, name: str) -> Json:
        response = call(
            lambda: self._http.get(f"/api/v1/pipeline-templates/{quote(name, safe='')}"),
            self.retry,
        )
        result: Json = response.json()
        return result

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ConfigClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
