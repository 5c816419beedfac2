"""Client of the Data Platform Service: read features (recommenders), send signed events
(storefront back-ends), manage the config (scripts and the `dps` CLI).

Sync and async flavours share one retry policy: connection errors, timeouts, 503 and
429 are retried with jittered exponential backoff, honouring Retry-After.
"""

from dps_client.config_api import ConfigClient
from dps_client.errors import ApiError, ConnectionFailed, DPSError
from dps_client.events import (
    AsyncEventsClient,
    BatchResult,
    Event,
    EventsClient,
    Rejection,
    SendResult,
)
from dps_client.features import AsyncFeaturesClient, FeaturesClient, FeatureVector
from dps_client.retry import NO_RETRY, RetryPolicy
from dps_client.signing import new_event_id, sign, signed_headers

__all__ = [
    "NO_RETRY",
    "ApiError",
    "AsyncEventsClient",
    "AsyncFeaturesClient",
    "BatchResult",
    "ConfigClient",
    "ConnectionFailed",
    "DPSError",
    "Event",
    "EventsClient",
    "FeatureVector",
    "FeaturesClient",
    "Rejection",
    "RetryPolicy",
    "SendResult",
    "new_event_id",
    "sign",
    "signed_headers",
]
