"""Typed errors of the core: client errors carry their SQS identity; bugs say so.

A ``SqsError`` is the caller's fault and is rendered on the wire in the protocol the
request used. ``InternalError`` is never the caller's fault: it means Ferry broke an
invariant and is rendered as a 500 after being logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._effects import Effect

__all__ = ["ERRORS", "InternalError", "SqsError", "invalid_parameter", "missing_parameter"]


class InternalError(AssertionError):
    """An invariant of Ferry was broken: a bug, never the client's fault."""


# shape name -> (legacy Query code, HTTP status, fault type).
# The shape name is the JSON ``__type`` suffix and the botocore exception class; the
# legacy code is what Query responses and the ``x-amzn-query-error`` header carry.
ERRORS: dict[str, tuple[str, int, str]] = {
    "QueueDoesNotExist": ("AWS.SimpleQueueService.NonExistentQueue", 400, "Sender"),
    "QueueNameExists": ("QueueAlreadyExists", 400, "Sender"),
    "QueueDeletedRecently": ("AWS.SimpleQueueService.QueueDeletedRecently", 400, "Sender"),
    "PurgeQueueInProgress": ("AWS.SimpleQueueService.PurgeQueueInProgress", 403, "Sender"),
    "OverLimit": ("OverLimit", 403, "Sender"),
    "MessageNotInflight": ("AWS.SimpleQueueService.MessageNotInflight", 400, "Sender"),
    "BatchEntryIdsNotDistinct": (
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct", 400, "Sender"),
    "BatchRequestTooLong": ("AWS.SimpleQueueService.BatchRequestTooLong", 400, "Sender"),
    "EmptyBatchRequest": ("AWS.SimpleQueueService.EmptyBatchRequest", 400, "Sender"),
    "InvalidBatchEntryId": ("AWS.SimpleQueueService.InvalidBatchEntryId", 400, "Sender"),
    "TooManyEntriesInBatchRequest": (
        "AWS.SimpleQueueService.TooManyEntriesInBatchRequest", 400, "Sender"),
    "UnsupportedOperation": ("AWS.SimpleQueueService.UnsupportedOperation", 400, "Sender"),
    "ResourceNotFoundException": ("ResourceNotFoundException", 404, "Sender"),
    "InvalidAttributeName": ("InvalidAttributeName", 400, "Sender"),
    "InvalidAttributeValue": ("InvalidAttributeValue", 400, "Sender"),
    "ReceiptHandleIsInvalid": ("ReceiptHandleIsInvalid", 400, "Sender"),
    "InvalidMessageContents": ("InvalidMessageContents", 400, "Sender"),
    "InvalidIdFormat": ("InvalidIdFormat", 400, "Sender"),
    # Not in the service model, but what SQS returns for these cases.
    "InvalidParameterValueException": ("InvalidParameterValue", 400, "Sender"),
    "MissingRequiredParameterException": ("MissingParameter", 400, "Sender"),
    "InvalidAction": ("InvalidAction", 400, "Sender"),
    "UnknownOperationException": ("UnknownOperationException", 400, "Sender"),
    "MalformedQueryString": ("MalformedQueryString", 400, "Sender"),
    "SerializationException": ("SerializationException", 400, "Sender"),
    "InvalidAddress": ("InvalidAddress", 404, "Sender"),
    "RequestThrottled": ("RequestThrottled", 400, "Sender"),
    "InternalFailure": ("InternalFailure", 500, "Receiver"),
    # AWS's common error for a temporary failure; SDKs retry 503s with back-off.
    "ServiceUnavailable": ("ServiceUnavailable", 503, "Receiver"),
}


class SqsError(Exception):
    """A client error with its SQS identity.

    ``shape`` is the service-model name (``QueueDoesNotExist``); ``code`` the legacy
    Query code (``AWS.SimpleQueueService.NonExistentQueue``); ``status`` the HTTP
    status; ``sender_fault`` whether the client is to blame.

    ``effects``: what the core applied while executing the request before it failed
    (``Broker.execute`` sets it: retention the request ran into, which is due whether
    the request succeeds or not). The caller must commit them before it answers, as it
    commits a successful request's, or the core holds state its log does not.
    """

    effects: tuple[Effect, ...]

    def __init__(self, shape: str, message: str) -> None:
        if shape not in ERRORS:
            raise InternalError(f"unknown SQS error shape {shape!r}")
        super().__init__(message)
        self.shape = shape
        self.message = message
        self.code, self.status, fault = ERRORS[shape]
        self.sender_fault = fault == "Sender"
        self.effects = ()

    def __repr__(self) -> str:
        return f"SqsError({self.shape!r}, {self.message!r})"


def invalid_parameter(message: str) -> SqsError:
    """``InvalidParameterValue``, the generic 400 SQS uses for bad parameters."""
    return SqsError("InvalidParameterValueException", message)


def missing_parameter(name: str) -> SqsError:
    return SqsError(
        "MissingRequiredParameterException",
        f"The request must contain the parameter {name}.",
    )
