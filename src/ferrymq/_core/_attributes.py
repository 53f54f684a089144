"""Queue attributes: defaults, validation with SQS's errors, and decoding into
``QueueSettings``. Pure functions of their inputs."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ferrymq._core._errors import SqsError, invalid_parameter
from ferrymq._core._settings import QueueSettings

__all__ = [
    "DEFAULTS",
    "READ_ONLY",
    "ALL_NAMES",
    "FIFO_ONLY",
    "check_policy",
    "defaults_for",
    "json_object",
    "normalize",
    "settings_from",
    "queue_name_from_arn",
]

# Attributes every queue reports with these values until they are set.
DEFAULTS: dict[str, str] = {
    "DelaySeconds": "0",
    "MaximumMessageSize": "1048576",
    "MessageRetentionPeriod": "345600",
    "ReceiveMessageWaitTimeSeconds": "0",
    "VisibilityTimeout": "30",
    "SqsManagedSseEnabled": "true",
}
FIFO_DEFAULTS: dict[str, str] = {
    "FifoQueue": "true",
    "ContentBasedDeduplication": "false",
    "DeduplicationScope": "queue",
    "FifoThroughputLimit": "perQueue",
}
FIFO_ONLY = frozenset(FIFO_DEFAULTS)

# Computed on read; SQS refuses them in Create/SetQueueAttributes.
READ_ONLY = frozenset(
    {
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
        "CreatedTimestamp",
        "LastModifiedTimestamp",
        "QueueArn",
    }
)

_INT_RANGES: dict[str, tuple[int, int]] = {
    "DelaySeconds": (0, 900),
    "MaximumMessageSize": (1024, 1_048_576),
    "MessageRetentionPeriod": (60, 1_209_600),
    "ReceiveMessageWaitTimeSeconds": (0, 20),
    "VisibilityTimeout": (0, 43_200),
    "KmsDataKeyReusePeriodSeconds": (60, 86_400),
}
_BOOLS = frozenset({"FifoQueue", "ContentBasedDeduplication", "SqsManagedSseEnabled"})
_ENUMS: dict[str, frozenset[str]] = {
    "DeduplicationScope": frozenset({"messageGroup", "queue"}),
    "FifoThroughputLimit": frozenset({"perQueue", "perMessageGroupId"}),
}
_FREE_TEXT = frozenset({"Policy", "RedrivePolicy", "RedriveAllowPolicy", "KmsMasterKeyId"})
SETTABLE = frozenset(_INT_RANGES) | _BOOLS | frozenset(_ENUMS) | _FREE_TEXT
ALL_NAMES = SETTABLE | READ_ONLY

# SQS limits a byQueue RedriveAllowPolicy to this many source ARNs.
_REDRIVE_ALLOW_SOURCES_MAX = 10
# SQS's documented policy quotas (SQSDeveloperGuide/quotas-policies.html).
_POLICY_STATEMENTS_MAX = 20
_POLICY_ACTIONS_PER_STATEMENT_MAX = 7
# The policy quota is 8,192 bytes. Redrive policies (two fields; at most 10 ARNs) are
# far smaller, so the same bound holds for them: every JSON attribute is checked
# against it before it is scanned or parsed.
POLICY_BYTES_MAX = 8192
# Nesting accepted in these documents: an IAM policy nests about 6 levels (Statement,
# a statement, Condition, an operator, a key, its values). Deeper documents are invalid
# before json.loads sees them: its C parser recurses once per level.
_JSON_DEPTH_MAX = 32
_MAX_RECEIVE_COUNT_RANGE = (1, 1000)
_ARN = re.compile(r"^arn:aws:sqs:([a-z0-9-]*):(\d+):([A-Za-z0-9_-]{1,80}(?:\.fifo)?)$")


def queue_name_from_arn(arn: str) -> str | None:
    match = _ARN.match(arn)
    return match.group(3) if match else None


def _bad_value(name: str, reason: str | None = None) -> SqsError:
    text = f"Invalid value for the parameter {name}."
    if reason:
        text = f"Invalid value for the parameter {name}. Reason: {reason}"
    return SqsError("InvalidAttributeValue", text)


def _unknown(name: str) -> SqsError:
    return SqsError("InvalidAttributeName", f"Unknown Attribute {name}.")


def normalize(
    given: Mapping[str, Any],
    *,
    fifo: bool,
    creating: bool,
    current: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Validate attributes a client wants to set and return them in canonical
    string form. Cross-queue checks (does the DLQ exist) are the broker's."""
    if not isinstance(given, Mapping):
        raise invalid_parameter("Attributes must be a map of attribute names to values.")
    out: dict[str, str] = {}
    for name, raw in given.items():
        if not isinstance(name, str) or name not in SETTABLE:
            raise _unknown(str(name))
        if not isinstance(raw, str):
            raise _bad_value(name)
        value = raw
        if name in FIFO_ONLY and not fifo:
            # Recorded on SQS: even FifoQueue=false is an unknown attribute for a
            # standard queue, in CreateQueue as in SetQueueAttributes.
            if name == "DeduplicationScope":
                raise SqsError(
                    "InvalidAttributeName",
                    "You can specify the DeduplicationScope only when FifoQueue is set to true.",
                )
            if name == "FifoThroughputLimit":
                raise SqsError(
                    "InvalidAttributeName",
                    "You can specify the FifoThroughputLimit only when FifoQueue is set to true.",
                )
            raise _unknown(name)
        if name in _INT_RANGES:
            low, high = _INT_RANGES[name]
            if not re.fullmatch(r"\d{1,10}", value) or not low <= int(value) <= high:
                raise _bad_value(name)
            value = str(int(value))
        elif name in _BOOLS:
            if value.lower() not in ("true", "false"):
                raise _bad_value(name)
            value = value.lower()
            if name == "FifoQueue" and not creating:
                current_fifo = "true" if fifo else "false"
                if value != current_fifo:
                    raise _bad_value("FifoQueue", "Modifying queue type is not supported.")
        elif name in _ENUMS:
            if value not in _ENUMS[name]:
                raise _bad_value(name)
        elif name == "Policy":
            if value:
                check_policy(value)
        elif name == "RedrivePolicy":
            if value:
                value = _redrive_policy(value)
        elif name == "RedriveAllowPolicy":
            if value:
                value = _redrive_allow_policy(value)
        out[name] = value
    # Asking for both kinds of encryption in one request is refused; enabling one
    # later simply replaces the other (the broker switches SqsManagedSseEnabled off).
    if out.get("KmsMasterKeyId") and out.get("SqsManagedSseEnabled") == "true":
        raise SqsError(
            "InvalidAttributeName",
            "You can use one type of server-side encryption (SSE) at one time. You can either "
            "enable KMS SSE or SQS SSE.",
        )
    merged = dict(current or {})
    merged.update(out)
    if (
        merged.get("FifoThroughputLimit") == "perMessageGroupId"
        and merged.get("DeduplicationScope", "queue") != "messageGroup"
    ):
        raise _bad_value(
            "FifoThroughputLimit",
            "The perMessageGroupId value is allowed only when the value for DeduplicationScope "
            "is messageGroup",
        )
    return out


def check_policy(value: str) -> None:
    """The checks SQS makes of a Policy that need no IAM: size, JSON, and the quotas on
    statements and actions, with the OverLimit texts AWS returns for them."""
    if _utf8_bytes_exceed(value, POLICY_BYTES_MAX):
        raise SqsError("OverLimit", "Submitted policy is over max allowed size.")
    doc = json_object(value)
    if doc is None:
        raise _bad_value("Policy")
    statements = doc.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        return
    if len(statements) > _POLICY_STATEMENTS_MAX:
        raise SqsError(
            "OverLimit",
            f"{len(statements)} statements were found in the submitted policy, max allowed "
            f"is {_POLICY_STATEMENTS_MAX}",
        )
    for statement in statements:
        actions = statement.get("Action") if isinstance(statement, dict) else None
        count = 1 if isinstance(actions, str) else len(actions) if isinstance(actions, list) else 0
        if count > _POLICY_ACTIONS_PER_STATEMENT_MAX:
            raise SqsError(
                "OverLimit",
                f"{count} actions were found in a statement from the submitted policy, max "
                f"allowed is {_POLICY_ACTIONS_PER_STATEMENT_MAX}",
            )


def _utf8_bytes_exceed(text: str, bytes_max: int) -> bool:
    if len(text) > bytes_max:  # a character is at least one byte: no need to encode
        return True
    return len(text.encode("utf-8", "surrogatepass")) > bytes_max


def _within_policy_bounds(text: str) -> bool:
    """At most POLICY_BYTES_MAX bytes of UTF-8 and _JSON_DEPTH_MAX levels of nesting
    (counted outside strings), checked without parsing."""
    if _utf8_bytes_exceed(text, POLICY_BYTES_MAX):
        return False
    depth = 0
    in_string = escaped = False
    for char in text:  # at most POLICY_BYTES_MAX characters
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > _JSON_DEPTH_MAX:
                return False
        elif char in "]}":
            depth -= 1
    return True


def json_object(text: str) -> dict[str, Any] | None:
    """The JSON object ``text`` holds, or None if it is not one, is longer than
    POLICY_BYTES_MAX or nests deeper than _JSON_DEPTH_MAX (refused before parsing, so
    no depth of nesting can exhaust the parser's recursion)."""
    if not _within_policy_bounds(text):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _invalid_policy(name: str, value: str, reason: str) -> SqsError:
    # SQS echoes the value; one beyond the policy bound is left out rather than
    # copied into the error (it could be most of a 6 MiB request).
    shown = f"Value {value} for" if len(value) <= POLICY_BYTES_MAX else "Value for"
    return invalid_parameter(f"{shown} parameter {name} is invalid. Reason: {reason}")


def _redrive_policy(value: str) -> str:
    def bad(reason: str) -> SqsError:
        return _invalid_policy("RedrivePolicy", value, reason)

    doc = json_object(value)
    if doc is None:
        raise bad("Redrive policy is not a valid JSON map.")
    if "deadLetterTargetArn" not in doc:
        raise bad("Redrive policy does not contain mandatory attribute: deadLetterTargetArn.")
    if "maxReceiveCount" not in doc:
        raise bad("Redrive policy does not contain mandatory attribute: maxReceiveCount.")
    unknown = set(doc) - {"deadLetterTargetArn", "maxReceiveCount"}
    if unknown:
        raise bad(
            f"Only following attributes are supported: [deadLetterTargetArn, "
            f"maxReceiveCount]. Found: {sorted(unknown)[0]}."
        )
    arn = doc["deadLetterTargetArn"]
    if not isinstance(arn, str) or queue_name_from_arn(arn) is None:
        raise bad("Invalid value for deadLetterTargetArn.")
    count = doc["maxReceiveCount"]
    if isinstance(count, bool) or not isinstance(count, int | str):
        raise bad("Invalid value for maxReceiveCount.")
    if isinstance(count, str):
        if not re.fullmatch(r"\d{1,10}", count):
            raise bad("Invalid value for maxReceiveCount.")
        count = int(count)
    low, high = _MAX_RECEIVE_COUNT_RANGE
    if not low <= count <= high:
        raise bad(
            f"Invalid value for maxReceiveCount: {count}, valid values are from "
            f"{low} to {high} both inclusive."
        )
    # SQS echoes the policy back with a numeric maxReceiveCount.
    return json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": count}, separators=(",", ":"))


def _redrive_allow_policy(value: str) -> str:
    def bad(reason: str) -> SqsError:
        return _invalid_policy("RedriveAllowPolicy", value, reason)

    doc = json_object(value)
    if doc is None:
        raise bad("Redrive allow policy is not a valid JSON map.")
    if "redrivePermission" not in doc:
        raise bad("Redrive allow policy does not contain mandatory attribute: redrivePermission.")
    permission = doc["redrivePermission"]
    if permission not in ("allowAll", "denyAll", "byQueue"):
        raise bad("Invalid value for redrivePermission.")
    sources = doc.get("sourceQueueArns")
    if permission == "byQueue":
        if not isinstance(sources, list) or not sources:
            raise bad("sourceQueueArns must be specified when redrivePermission is byQueue.")
        if len(sources) > _REDRIVE_ALLOW_SOURCES_MAX:
            raise bad(
                f"The maximum number of source queue ARNs you can specify is "
                f"{_REDRIVE_ALLOW_SOURCES_MAX}."
            )
        if not all(isinstance(s, str) and queue_name_from_arn(s) for s in sources):
            raise bad("Invalid value for sourceQueueArns.")
    elif sources is not None:
        raise bad("sourceQueueArns can be specified only when redrivePermission is byQueue.")
    return json.dumps(doc, separators=(",", ":"))


def defaults_for(fifo: bool) -> dict[str, str]:
    out = dict(DEFAULTS)
    if fifo:
        out.update(FIFO_DEFAULTS)
    return out


def settings_from(attributes: Mapping[str, str]) -> QueueSettings:
    """Decode stored (already validated) attribute strings into typed settings."""
    fifo = attributes.get("FifoQueue") == "true"
    dead_letter_queue: str | None = None
    max_receive_count = 10
    redrive = attributes.get("RedrivePolicy")
    if redrive:
        doc = json.loads(redrive)
        dead_letter_queue = queue_name_from_arn(doc["deadLetterTargetArn"])
        max_receive_count = int(doc["maxReceiveCount"])
    return QueueSettings(
        fifo=fifo,
        visibility_timeout_ms=int(attributes.get("VisibilityTimeout", "30")) * 1000,
        delay_ms=int(attributes.get("DelaySeconds", "0")) * 1000,
        retention_ms=int(attributes.get("MessageRetentionPeriod", "345600")) * 1000,
        message_size_bytes_max=int(attributes.get("MaximumMessageSize", "1048576")),
        receive_wait_ms=int(attributes.get("ReceiveMessageWaitTimeSeconds", "0")) * 1000,
        content_based_dedup=attributes.get("ContentBasedDeduplication") == "true",
        dedup_scope_group=attributes.get("DeduplicationScope") == "messageGroup",
        dead_letter_queue=dead_letter_queue,
        max_receive_count=max_receive_count,
    )
