"""One SQS action run on a partition's leader for another node: the body of
``POST /_ferry/call`` and of its answer.

A queue of several partitions is served at the action level by the node a client talks
to (``_partitioned``): it calls each partition's replica set with canonical parameters
and merges the canonical results, then encodes them in the client's protocol itself.
So, unlike a forwarded request (``_proxy``), these calls carry decoded parameters and
results, in JSON. Bytes (a binary message attribute) are the one value JSON lacks:
they travel as ``{"\\u0000b": base64}``, a key no SQS name can hold (control
characters are refused in every name and key), so a user's map never decodes as one.

What belongs here: the codec, with its errors. Who calls whom is ``_node``'s business.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from ferrymq._core._errors import ERRORS, SqsError

__all__ = ["CALL_PATH", "WAIT_ACTION", "CallDecodeError", "PartitionCall", "decode_answer",
           "decode_call", "encode_answer", "encode_call"]

CALL_PATH = "/_ferry/call"
# Not an SQS action: wait until the partition's queue has a receivable message, without
# receiving it (a long poll over partitions; ``QueueService.wait_visible``).
WAIT_ACTION = "ferry:WaitForMessages"
_BYTES_KEY = "\u0000b"


class CallDecodeError(ValueError):
    """A body that is not a call or an answer of this codec (a bug, or not a node)."""


@dataclass(frozen=True, slots=True)
class PartitionCall:
    partition: str
    action: str
    params: dict[str, Any]
    base_url: str
    account_id: str
    access_key_id: str | None
    request_id: str


def _default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot encode {type(value).__name__} in a partition call")


def _hook(doc: dict[str, Any]) -> Any:
    if len(doc) == 1 and isinstance(doc.get(_BYTES_KEY), str):
        return base64.b64decode(doc[_BYTES_KEY])
    return doc


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, default=_default, separators=(",", ":")).encode()


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body, object_hook=_hook)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CallDecodeError(f"not JSON: {exc}") from exc


def encode_call(call: PartitionCall) -> bytes:
    return _dumps({"partition": call.partition, "action": call.action,
                   "params": call.params, "base_url": call.base_url,
                   "account_id": call.account_id, "access_key_id": call.access_key_id,
                   "request_id": call.request_id})


def decode_call(body: bytes) -> PartitionCall:
    doc = _loads(body)
    try:
        key = doc.get("access_key_id")
        call = PartitionCall(str(doc["partition"]), str(doc["action"]), doc["params"],
                             str(doc["base_url"]), str(doc["account_id"]),
                             None if key is None else str(key), str(doc["request_id"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise CallDecodeError(f"not a partition call: {exc!r}") from exc
    if not isinstance(call.params, dict):
        raise CallDecodeError("a partition call's params must be an object")
    return call


def encode_answer(result: dict[str, Any] | None = None, error: SqsError | None = None
                  ) -> bytes:
    if error is not None:
        return _dumps({"error": {"shape": error.shape, "message": error.message}})
    return _dumps({"result": result if result is not None else {}})


def decode_answer(body: bytes) -> dict[str, Any]:
    """The call's result; its SQS error raised as the very ``SqsError``."""
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise CallDecodeError("an answer must be an object")
    error = doc.get("error")
    if isinstance(error, dict):
        shape = error.get("shape")
        if shape not in ERRORS:
            raise CallDecodeError(f"unknown error shape {shape!r}")
        raise SqsError(str(shape), str(error.get("message", "")))
    result = doc.get("result")
    if not isinstance(result, dict):
        raise CallDecodeError("an answer holds a result or an error")
    return result
