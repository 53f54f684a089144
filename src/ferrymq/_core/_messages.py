"""Per-message rules that need no queue state: parameter validation of message
bodies and attributes, the SQS checksums (MD5 of body and attributes, SHA-256
content-based deduplication ids), and the receipt-handle encoding.

Everything here is a pure function of its arguments; ``_queue.py`` holds the state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import SqsError, invalid_parameter, missing_parameter
from ._records import AttributeValue

__all__ = [
    "ATTRIBUTES_PER_MESSAGE_MAX",
    "NAMES_PER_LIST_MAX",
    "SYSTEM_ATTRIBUTE_NAMES",
    "AttributeFilter",
    "attribute_filter",
    "content_dedup_id",
    "decode_receipt_handle",
    "encode_receipt_handle",
    "int_param",
    "md5_of_attributes",
    "md5_of_body",
    "message_size_bytes",
    "parse_message_attributes",
    "parse_system_attributes",
    "reject_list_values",
    "select_system_attribute_names",
    "string_list",
    "validate_body",
    "validate_fifo_id",
]

# SQS's published limit on user message attributes per message.
ATTRIBUTES_PER_MESSAGE_MAX = 10
# SQS limits attribute names and data types to 256 characters.
_ATTRIBUTE_NAME_CHARS_MAX = 256
_DATA_TYPE_CHARS_MAX = 256
# Group and deduplication ids: 1..128 printable ASCII characters without space.
_FIFO_ID = re.compile(r"[!-~]{1,128}")
_ATTRIBUTE_NAME_ASCII = re.compile(r"[A-Za-z0-9_.\-]+")
# Number attributes, as SQS documents them: "up to 38 digits of precision, and it can
# be between 10^-128 and 10^+126" (the range of DynamoDB's numbers).
_NUMBER = re.compile(r"[+-]?(?:([0-9]+)(?:\.([0-9]*))?|\.([0-9]+))(?:[eE]([+-]?)([0-9]+))?")
NUMBER_DIGITS_MAX = 38
NUMBER_EXPONENT_MIN = -128
NUMBER_EXPONENT_MAX = 126
# An exponent with more digits than this is out of range whatever the mantissa (the
# mantissa's own length is bounded by the message size): it is never converted.
_NUMBER_EXPONENT_DIGITS_MAX = 9
# Bound on lists of names in one request (MessageAttributeNames, AttributeNames,
# MessageSystemAttributeNames, TagKeys). SQS documents none; a message has at most 10
# attributes and a queue about 20 attributes and 50 tags, so no useful request comes
# near it, and a request that does is refused before any per-name work.
NAMES_PER_LIST_MAX = 1000
# Characters SQS rejects in bodies and string values: outside #x9 | #xA | #xD |
# #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF (lone surrogates included).
_INVALID_CHARS = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# SQS's text names the first such character, in upper-case hex without leading zeros
# (AWS answered '#x7', '#x1' and '#xFFFF' for bodies holding those).
_ALLOWED_CHARS_TEXT = (
    "the set of allowed characters is #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | "
    "[#x10000-#x10FFFF]."
)
SYSTEM_ATTRIBUTE_NAMES = (
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageGroupId",
    "MessageDeduplicationId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
)
# Receipt handles are "<message id>:<token>" in unpadded urlsafe base64; both parts
# are restricted so that arbitrary client text rarely decodes into a handle.
_HANDLE_TEXT = re.compile(r"([A-Za-z0-9_.\-]{1,128}):([A-Za-z0-9_\-]{1,128})")
_HANDLE_CHARS = re.compile(r"[A-Za-z0-9_\-]+")
_HANDLE_CHARS_MAX = 512  # well above any handle we issue; bounds the decode work


def int_param(
    params: Mapping[str, Any],
    name: str,
    default: int | None,
    low: int,
    high: int,
    reason: str,
) -> int | None:
    """An optional integer parameter within [low, high]; ``reason`` completes the
    SQS text "Value N for parameter NAME is invalid. Reason: ...".

    Bools and strings are rejected explicitly: a client that sends ``"5"`` or
    ``true`` gets an SQS error rather than a silent conversion or a crash.
    """
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_parameter(
            f"Value {value} for parameter {name} is invalid. Reason: must be an integer."
        )
    if not low <= value <= high:
        raise invalid_parameter(f"Value {value} for parameter {name} is invalid. Reason: {reason}")
    return value


def validate_body(body: object) -> str:
    if body is None or body == "":
        raise missing_parameter("MessageBody")
    if not isinstance(body, str):
        raise invalid_parameter(
            "Value for parameter MessageBody is invalid. Reason: must be a string."
        )
    # Printable ASCII is the common case and is checked in C without the regex.
    if not (body.isascii() and body.isprintable()):
        bad = _INVALID_CHARS.search(body)
        if bad is not None:
            raise SqsError(
                "InvalidMessageContents",
                f"Invalid binary character '{_char_code(bad.group())}' was found in the message "
                f"body, {_ALLOWED_CHARS_TEXT}",
            )
    return body


def _char_code(char: str) -> str:
    """A character as SQS names it in its texts: ``#x`` and upper-case hex."""
    return f"#x{ord(char):X}"


def validate_fifo_id(value: object, name: str) -> str:
    """A MessageGroupId / MessageDeduplicationId / ReceiveRequestAttemptId."""
    if not isinstance(value, str) or _FIFO_ID.fullmatch(value) is None:
        raise invalid_parameter(
            f"Value {value} for parameter {name} is invalid. Reason: {name} can only include "
            "alphanumeric and punctuation characters. 1 to 128 in length."
        )
    return value


def _attribute_name_chars_ok(name: str) -> bool:
    """A-Z, a-z, 0-9, underscore, hyphen and period, as documented, and also letters and
    digits beyond ASCII: SQS accepts ``attr.1øßä`` (recorded on AWS) while refusing
    ``§``, ``!``, ``"``, ``(`` and ``?``, i.e. it checks for letters or digits
    (Unicode categories L* and Nd, Java's ``Character.isLetterOrDigit``)."""
    if name.isascii():
        return _ATTRIBUTE_NAME_ASCII.fullmatch(name) is not None
    return all(
        _ATTRIBUTE_NAME_ASCII.fullmatch(c) is not None if c.isascii()
        else c.isalpha() or c.isdecimal()
        for c in name  # at most _ATTRIBUTE_NAME_CHARS_MAX, checked before
    )


def _validate_attribute_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise invalid_parameter("The request must contain non-empty message attribute name.")
    if len(name) > _ATTRIBUTE_NAME_CHARS_MAX:
        raise invalid_parameter(
            f"Message (user) attribute name '{name}' is invalid. Reason: must be at most "
            f"{_ATTRIBUTE_NAME_CHARS_MAX} characters long."
        )
    if not _attribute_name_chars_ok(name):
        raise invalid_parameter(
            f"Message (user) attribute name '{name}' can only contain alphanumeric "
            "characters, hyphens, underscores and periods."
        )
    lowered = name.lower()
    if lowered.startswith(("aws.", "amazon.")):
        raise invalid_parameter(
            f"Message (user) attribute name '{name}' is invalid. Reason: names starting "
            "with 'AWS.' or 'Amazon.' are reserved."
        )
    if name.startswith(".") or name.endswith(".") or ".." in name:
        raise invalid_parameter(
            f"Message (user) attribute name '{name}' is invalid. Reason: must not start or "
            "end with a period or contain two consecutive periods."
        )
    return name


_LIST_VALUE_MEMBERS = ("StringListValues", "BinaryListValues")


def _list_values_refused(action: str) -> SqsError:
    return SqsError(
        "UnsupportedOperation",
        f"Message attribute list values in {action} operation are not supported.",
    )


def reject_list_values(attributes: object, action: str) -> None:
    """SQS refuses list values (StringListValues/BinaryListValues, even empty lists:
    their presence is enough, as AWS answered) for the whole request; a batch fails as
    a whole, not per entry, so ``send_message_batch`` runs this over every entry
    before it plans any. ``action`` is the request's action, named in the text."""
    if not isinstance(attributes, Mapping):
        return  # not attributes at all: parse_message_attributes says so
    for value in attributes.values():
        if isinstance(value, Mapping) and any(m in value for m in _LIST_VALUE_MEMBERS):
            raise _list_values_refused(action)


def _parse_attribute_value(name: str, raw: object, kind: str, action: str) -> AttributeValue:
    """One MessageAttributeValue; ``kind`` is "user" or "system" for the error text,
    ``action`` the request's action (SendMessage or SendMessageBatch)."""
    if not isinstance(raw, Mapping):
        raise invalid_parameter(f"Message ({kind}) attribute '{name}' must be a structure.")
    if any(member in raw for member in _LIST_VALUE_MEMBERS):
        raise _list_values_refused(action)
    data_type = raw.get("DataType")
    if not isinstance(data_type, str) or not data_type:
        raise invalid_parameter(
            f"The message attribute '{name}' must contain non-empty message attribute type."
        )
    if len(data_type) > _DATA_TYPE_CHARS_MAX:
        raise invalid_parameter(
            f"Message ({kind}) attribute '{name}' type must be at most "
            f"{_DATA_TYPE_CHARS_MAX} characters long."
        )
    base = data_type.split(".", 1)[0]
    if base not in ("String", "Number", "Binary"):
        raise invalid_parameter(
            f"The type of message ({kind}) attribute '{name}' is invalid. You must use only "
            "the following supported type prefixes: Binary, Number, String."
        )
    string_value = raw.get("StringValue")
    binary_value = raw.get("BinaryValue")
    if base == "Binary":
        if string_value is not None or not isinstance(binary_value, bytes) or not binary_value:
            raise invalid_parameter(
                f"Message ({kind}) attribute '{name}' must contain a non-empty value of type "
                "'Binary'."
            )
        return AttributeValue(data_type, binary_value=binary_value)
    if binary_value is not None or not isinstance(string_value, str) or not string_value:
        raise invalid_parameter(
            f"Message ({kind}) attribute '{name}' must contain a non-empty value of type "
            f"'{base}'."
        )
    bad = _INVALID_CHARS.search(string_value)
    if bad is not None:
        # SQS answers InvalidParameterValue for attribute values (compared with SQS),
        # not the body's InvalidMessageContents. The text is not recorded: it is the
        # body's recorded text, naming the attribute instead of the body.
        raise invalid_parameter(
            f"Invalid binary character '{_char_code(bad.group())}' was found in the message "
            f"attribute '{name}' value, {_ALLOWED_CHARS_TEXT}"
        )
    if base == "Number" and not _is_sqs_number(string_value):
        raise invalid_parameter(
            f"Can't cast the value of message ({kind}) attribute '{name}' to a number."
        )
    return AttributeValue(data_type, string_value=string_value)


def _is_sqs_number(text: str) -> bool:
    """Whether ``text`` is a number SQS stores: decimal or scientific notation, at most
    NUMBER_DIGITS_MAX significant digits, magnitude 0 or within 10^-128..10^+126.
    Linear in ``text`` and converts only a bounded exponent: no ``int``/``Decimal`` of
    client text of unbounded length."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        return False
    whole, fraction, bare_fraction, exp_sign, exp_digits = match.groups()
    whole = whole or ""
    fraction = fraction or bare_fraction or ""
    digits = whole + fraction
    significant = digits.lstrip("0")
    if not significant:
        return True  # zero, however written
    leading_zeros = len(digits) - len(significant)
    significant = significant.rstrip("0")
    if len(significant) > NUMBER_DIGITS_MAX:
        return False
    exponent = 0
    if exp_digits is not None:
        exp_digits = exp_digits.lstrip("0") or "0"
        if len(exp_digits) > _NUMBER_EXPONENT_DIGITS_MAX:
            return False
        exponent = int(exp_digits) * (-1 if exp_sign == "-" else 1)
    # The power of ten of the most significant digit: the value is in [10^e, 10^(e+1)).
    magnitude = len(whole) - leading_zeros - 1 + exponent
    if magnitude == NUMBER_EXPONENT_MAX:
        return significant == "1"  # exactly 10^+126
    return NUMBER_EXPONENT_MIN <= magnitude < NUMBER_EXPONENT_MAX


def parse_message_attributes(
    raw: object, action: str
) -> tuple[tuple[str, AttributeValue], ...]:
    """MessageAttributes in canonical JSON shape -> sorted (name, value) pairs;
    ``action`` is the request's, for the texts that name it."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise invalid_parameter("Value for parameter MessageAttributes is invalid.")
    if len(raw) > ATTRIBUTES_PER_MESSAGE_MAX:
        raise invalid_parameter(
            f"Number of message attributes [{len(raw)}] exceeds the allowed maximum "
            f"[{ATTRIBUTES_PER_MESSAGE_MAX}]."
        )
    parsed = [
        (_validate_attribute_name(name), _parse_attribute_value(name, value, "user", action))
        for name, value in raw.items()
    ]
    parsed.sort(key=lambda item: item[0])
    return tuple(parsed)


def parse_system_attributes(raw: object, action: str) -> str | None:
    """MessageSystemAttributes: only AWSTraceHeader (String) exists; returns it."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise invalid_parameter("Value for parameter MessageSystemAttributes is invalid.")
    trace: str | None = None
    for name, value in raw.items():
        if name != "AWSTraceHeader":
            raise invalid_parameter(f"Message system attribute name '{name}' is invalid.")
        parsed = _parse_attribute_value(name, value, "system", action)
        if parsed.data_type != "String":
            raise invalid_parameter(
                "Message system attribute 'AWSTraceHeader' must be of type 'String'."
            )
        trace = parsed.string_value
    return trace


def message_size_bytes(body: str, attributes: Iterable[tuple[str, AttributeValue]]) -> int:
    """SQS's message size: UTF-8 body plus every attribute's name, type and value."""
    # An ASCII string's length is its UTF-8 size; no need to encode a copy (this
    # was 7 % of the CPU for 256 KiB bodies).
    size = len(body) if body.isascii() else len(body.encode("utf-8", "surrogatepass"))
    for name, value in attributes:
        size += len(name.encode()) + len(value.data_type.encode())
        if value.binary_value is not None:
            size += len(value.binary_value)
        else:
            assert value.string_value is not None
            size += len(value.string_value.encode())
    return size


def md5_of_body(body: str) -> str:
    return hashlib.md5(body.encode("utf-8")).hexdigest()


def md5_of_attributes(attributes: Iterable[tuple[str, AttributeValue]]) -> str:
    """The SDK-verified layout: per attribute sorted by name, length-prefixed name,
    length-prefixed data type, transport byte (1 string/number, 2 binary),
    length-prefixed value; lengths are 4-byte big-endian."""
    digest = hashlib.md5()
    for name, value in sorted(attributes, key=lambda item: item[0]):
        for part in (name.encode(), value.data_type.encode()):
            digest.update(struct.pack(">I", len(part)))
            digest.update(part)
        if value.binary_value is not None:
            payload = value.binary_value
            digest.update(b"\x02")
        else:
            assert value.string_value is not None
            payload = value.string_value.encode()
            digest.update(b"\x01")
        digest.update(struct.pack(">I", len(payload)))
        digest.update(payload)
    return digest.hexdigest()


def content_dedup_id(body: str) -> str:
    """ContentBasedDeduplication: hex SHA-256 of the UTF-8 body."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def encode_receipt_handle(message_id: str, token: str) -> str:
    text = f"{message_id}:{token}".encode()
    return base64.urlsafe_b64encode(text).decode("ascii").rstrip("=")


def decode_receipt_handle(handle: object, parameter: str = "ReceiptHandle") -> tuple[str, str]:
    """(message id, token) of a handle we issued; ReceiptHandleIsInvalid otherwise.
    ``parameter``: the name a missing handle is reported under (SQS says MessageHandle
    for DeleteMessage)."""
    if handle is None or handle == "":
        raise missing_parameter(parameter)
    if (
        not isinstance(handle, str)
        or len(handle) > _HANDLE_CHARS_MAX
        or _HANDLE_CHARS.fullmatch(handle) is None
    ):
        raise _invalid_handle(handle)
    try:
        text = base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise _invalid_handle(handle) from exc
    match = _HANDLE_TEXT.fullmatch(text)
    if match is None:
        raise _invalid_handle(handle)
    return match.group(1), match.group(2)


def _invalid_handle(handle: object) -> SqsError:
    # Made only when needed: every delete and visibility change decodes a handle.
    return SqsError(
        "ReceiptHandleIsInvalid",
        f'The input receipt handle "{handle}" is not a valid receipt handle.',
    )


def string_list(raw: object, name: str) -> list[str]:
    """An optional list of strings (names, keys), bounded by NAMES_PER_LIST_MAX before
    any per-item work."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid_parameter(
            f"Value for parameter {name} is invalid. Reason: must be a list of strings."
        )
    if len(raw) > NAMES_PER_LIST_MAX:
        raise invalid_parameter(
            f"Value for parameter {name} is invalid. Reason: at most {NAMES_PER_LIST_MAX} "
            f"values are allowed, {len(raw)} were given."
        )
    if not all(isinstance(item, str) for item in raw):
        raise invalid_parameter(
            f"Value for parameter {name} is invalid. Reason: must be a list of strings."
        )
    return raw


@dataclass(frozen=True, slots=True)
class AttributeFilter:
    """A ReceiveMessage MessageAttributeNames filter, compiled once per request."""

    everything: bool
    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def select(
        self, attributes: tuple[tuple[str, AttributeValue], ...]
    ) -> tuple[tuple[str, AttributeValue], ...]:
        if self.everything or not attributes:
            return attributes
        exact, prefixes = self.exact, self.prefixes
        return tuple(
            (name, value) for name, value in attributes
            if name in exact or name.startswith(prefixes)
        )


def attribute_filter(names: object) -> AttributeFilter | None:
    """The filter of MessageAttributeNames; None when it selects nothing.

    As recorded on SQS: ``All``, ``*`` and ``.*`` select every attribute, and
    ``Hel.*`` selects the names starting with ``Hel`` (``Hello`` and ``Help.Me``: the
    ``.*`` is the wildcard, the dot is not part of the prefix). Any other name selects
    itself; names that cannot exist (``AWS.``, ``..foo``) simply match nothing.
    """
    wanted = string_list(names, "MessageAttributeNames")
    if not wanted:
        return None
    exact: set[str] = set()
    prefixes: list[str] = []
    for name in wanted:
        if name in ("All", "*", ".*"):
            return AttributeFilter(True, frozenset(), ())
        if name.endswith(".*"):
            prefixes.append(name[:-2])
        else:
            exact.add(name)
    return AttributeFilter(False, frozenset(exact), tuple(prefixes))


def select_system_attribute_names(attribute_names: object, system_names: object) -> frozenset[str]:
    """The system attributes asked for by AttributeNames (deprecated) and
    MessageSystemAttributeNames together; unknown names are ignored like SQS does."""
    wanted = string_list(attribute_names, "AttributeNames") + string_list(
        system_names, "MessageSystemAttributeNames"
    )
    if "All" in wanted:
        return frozenset(SYSTEM_ATTRIBUTE_NAMES)
    return frozenset(name for name in wanted if name in SYSTEM_ATTRIBUTE_NAMES)
