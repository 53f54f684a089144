"""Checksums and receipt handles of _messages.py against published vectors."""

from __future__ import annotations

import hashlib

import pytest

from ferrymq._core._errors import SqsError
from ferrymq._core._messages import (
    content_dedup_id,
    decode_receipt_handle,
    encode_receipt_handle,
    md5_of_attributes,
    md5_of_body,
)
from ferrymq._core._records import AttributeValue


def test_body_md5_matches_recorded_hello() -> None:
    assert md5_of_body("hello") == "5d41402abc4b2a76b9719d911017c592"


def test_body_md5_is_of_utf8_bytes() -> None:
    assert md5_of_body("é\r\n") == hashlib.md5("é\r\n".encode()).hexdigest()


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        (
            [("attribName1", AttributeValue("String", string_value="attribValue 1"))],
            "19e27d4e946b072f3f58da80d94fd778",
        ),
        (
            [("binaryAttribute", AttributeValue("Binary", binary_value=b"Hello binary world!"))],
            "31a92b15d92f8db860eda32aceb656c3",
        ),
        (
            [("Foo", AttributeValue("String", string_value="Bar"))],
            "ae7155c6026991b6d54b11589678bf9c",
        ),
        ([("a", AttributeValue("String", string_value="v"))], "a18cbb58171ebf4ce88d9fb787f9210b"),
    ],
)
def test_attribute_md5_published_vectors(
    attributes: list[tuple[str, AttributeValue]], expected: str
) -> None:
    assert md5_of_attributes(attributes) == expected


def test_attribute_md5_layout_sorted_with_transport_bytes() -> None:
    attributes = [
        ("zeta", AttributeValue("Number.int", string_value="12")),
        ("alpha", AttributeValue("Binary.png", binary_value=b"\x00\x01")),
    ]
    expected = hashlib.md5(
        b"\x00\x00\x00\x05alpha\x00\x00\x00\x0aBinary.png\x02\x00\x00\x00\x02\x00\x01"
        b"\x00\x00\x00\x04zeta\x00\x00\x00\x0aNumber.int\x01\x00\x00\x00\x0212"
    ).hexdigest()
    assert md5_of_attributes(attributes) == expected
    assert md5_of_attributes(list(reversed(attributes))) == expected


def test_content_dedup_id_is_sha256_hex() -> None:
    assert content_dedup_id("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_receipt_handle_round_trip() -> None:
    handle = encode_receipt_handle("0f8fad5b-d9cb-469f-a165-70867728950e", "tok_EN-123456789ab")
    assert "=" not in handle and "/" not in handle and "+" not in handle
    assert decode_receipt_handle(handle) == (
        "0f8fad5b-d9cb-469f-a165-70867728950e", "tok_EN-123456789ab"
    )


@pytest.mark.parametrize("garbage", ["garbage", "a b", "!!!!", "x" * 600, "Zm9v", 12])
def test_garbage_handles_are_invalid(garbage: object) -> None:
    with pytest.raises(SqsError) as info:
        decode_receipt_handle(garbage)
    assert info.value.shape == "ReceiptHandleIsInvalid"
    assert info.value.message == (
        f'The input receipt handle "{garbage}" is not a valid receipt handle.'
    )
