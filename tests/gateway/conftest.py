"""Gateway test helpers: the two botocore models (current JSON and the last Query one)
and the derivation of the wire table shipped in ``ferrymq._gateway._wire_model``.

The derivation lives here, not in the package, because the package must not depend
on botocore's 1.34.89 model being present; the test suite checks that the shipped
table still equals what this derivation produces from the real models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import botocore.loaders
import botocore.model
import pytest

__all__ = ["derive_wire_model", "json_model", "json_service_model", "query_model",
           "query_service_model", "derived_wire_model"]

_REPO_ROOT = Path(__file__).resolve().parents[2]

# Members the JSON model gained after the Query model was frozen: their Query wire
# names, as AWS documents them (``MessageSystemAttributeName.N``).
_QUERY_NAME_OVERRIDES = {
    ("ReceiveMessageRequest", "MessageSystemAttributeNames"): "MessageSystemAttributeName",
}


def _query_data_path() -> Path:
    env = os.environ.get("FERRY_QUERY_DATA")
    return Path(env) if env else _REPO_ROOT / ".venv" / "query-data"


def json_service_model() -> botocore.model.ServiceModel:
    loader = botocore.loaders.Loader()
    return botocore.model.ServiceModel(
        loader.load_service_model("sqs", "service-2", "2012-11-05"), "sqs")


def query_service_model() -> botocore.model.ServiceModel:
    path = _query_data_path()
    if not (path / "sqs" / "2012-11-05" / "service-2.json").exists():
        pytest.skip(f"botocore 1.34.89 SQS model not found under {path}")
    loader = botocore.loaders.Loader(
        extra_search_paths=[str(path)], include_default_search_paths=False)
    model = loader.load_service_model("sqs", "service-2", "2012-11-05")
    assert model["metadata"]["protocol"] == "query"
    return botocore.model.ServiceModel(model, "sqs")


_SCALARS = {"string": "s", "integer": "i", "long": "i", "boolean": "b", "blob": "B"}


def _describe(jshape: Any, qshape: Any, owner: str | None, member: str | None) -> Any:
    kind = jshape.type_name
    if kind in _SCALARS:
        return _SCALARS[kind]
    # Query traits come from the Query model when it knows the shape, else from the
    # JSON model (which carries the same flattened traits, only no locationNames).
    traits = (qshape if qshape is not None else jshape).serialization
    if kind == "structure":
        members = []
        for name, jm in jshape.members.items():
            qm = qshape.members.get(name) if qshape is not None else None
            desc = _describe(jm, qm, jshape.name, name)
            mtraits = (qm if qm is not None else jm).serialization
            serial = mtraits.get("name", name)
            wire = serial
            if jm.type_name == "list" and mtraits.get("flattened"):
                item_name = (qm.member if qm is not None else jm.member).serialization.get("name")
                item_name = _QUERY_NAME_OVERRIDES.get((jshape.name, name), item_name)
                if item_name:
                    wire = item_name
            members.append((name, wire, serial, desc))
        return ("S", tuple(members))
    if kind == "list":
        item = _describe(jshape.member, qshape.member if qshape is not None else None, None, None)
        if traits.get("flattened"):
            return ("L", None, item)
        src = qshape.member if qshape is not None else jshape.member
        return ("L", src.serialization.get("name", "member"), item)
    if kind == "map":
        key = _describe(jshape.key, None, None, None)
        value = _describe(jshape.value, qshape.value if qshape is not None else None, None, None)
        src = qshape if qshape is not None else jshape
        key_name = src.key.serialization.get("name", "key")
        value_name = src.value.serialization.get("name", "value")
        inner = None if traits.get("flattened") else "entry"
        return ("M", inner, key_name, value_name, key, value)
    raise AssertionError(f"unexpected shape type {kind} at {owner}.{member}")


def derive_wire_model(jm: botocore.model.ServiceModel, qm: botocore.model.ServiceModel,
                      ) -> dict[str, tuple[Any, Any]]:
    """action -> (input descriptor, output descriptor or None)."""
    out: dict[str, tuple[Any, Any]] = {}
    for action in sorted(jm.operation_names):
        jop, qop = jm.operation_model(action), qm.operation_model(action)
        inp = _describe(jop.input_shape, qop.input_shape, None, None)
        outp = None
        if jop.output_shape is not None:
            outp = _describe(jop.output_shape, qop.output_shape, None, None)
        out[action] = (inp, outp)
    return out


@pytest.fixture(scope="session")
def json_model() -> botocore.model.ServiceModel:
    return json_service_model()


@pytest.fixture(scope="session")
def query_model() -> botocore.model.ServiceModel:
    return query_service_model()


@pytest.fixture(scope="session")
def derived_wire_model(json_model: botocore.model.ServiceModel,
                       query_model: botocore.model.ServiceModel) -> dict[str, tuple[Any, Any]]:
    return derive_wire_model(json_model, query_model)
