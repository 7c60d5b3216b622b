"""Each business's share of the API: a token bucket per business, in this API process."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RequestLimiter:
    """`rate` requests a second per business, with bursts of up to `burst`. Buckets are kept per
    process: behind N replicas a business gets up to N times the rate."""

    rate: float
    burst: float
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def wait_for(self, business_id: str) -> float:
        """0 if the business may make a request now (and it is counted), else the seconds until
        it may."""
        now = time.monotonic()
        bucket = self._buckets.get(business_id)
        if bucket is None:
            bucket = self._buckets[business_id] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A Retry-After header's whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))
