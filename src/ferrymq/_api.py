"""The seam between the gateway (wire protocols) and the service (queues).

The gateway decodes either wire protocol into one canonical form, the AWS JSON 1.0
shape of botocore's SQS model (member names exactly as in the model, integers as
``int``, blobs as ``bytes``), calls ``Service.call`` and encodes the canonical
result back into the request's protocol. Nothing protocol-specific crosses here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["CallContext", "Service"]


@dataclass(frozen=True, slots=True)
class CallContext:
    request_id: str
    # "http://host:port" as queue URLs returned to this caller should start
    # (the request's Host header, or --public-url when given). No trailing slash.
    base_url: str
    account_id: str = "000000000000"
    region: str = "us-east-1"
    # Access key id of the caller if the request was signed; used as SenderId.
    access_key_id: str | None = None
    # "/<account>/<name>" when the request was sent to a queue path, else None.
    path_queue: str | None = None


class Service(Protocol):
    async def call(self, action: str, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Run one SQS action. Returns the canonical output (possibly ``{}``) or
        raises ``ferrymq._core._errors.SqsError``."""
        ...
