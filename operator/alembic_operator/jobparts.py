"""Kubernetes objects as typed models (the kubernetes client's ``V1*`` pydantic models), and the one place they
become JSON for the API server.

The operator builds its Jobs from these models (``jobs.py``), as CloudNativePG builds its Jobs from the Go types in
``pkg/specs``: a misspelt field or a wrong type fails where the object is built, not at the API server. What the user
passes through to the Jobs (``spec.jobTemplate``'s core/v1 objects, ``spec.backup.volume``) is already valid
core/v1 JSON (the CRD and :mod:`alembic_operator.api` check it): :func:`typed` reads it into the same models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, JsonValue, ValidationError

M = TypeVar("M", bound=BaseModel)


def typed(model: type[M], data: Mapping[str, JsonValue]) -> M:
    """`data` (core/v1 JSON, camelCase) as `model`.

    A Quantity (``cpu: 1``, an emptyDir's ``sizeLimit: 1``) may be a JSON number in a spec; the client types every
    Quantity as a string, so a number where a string is expected is read as its decimal string: the same Quantity
    for the API server. Anything else the model refuses raises.
    """
    try:
        return model.model_validate(data)
    except ValidationError as err:
        numbers = [e["loc"] for e in err.errors() if e["type"] == "string_type"
                   and isinstance(e["input"], int | float) and not isinstance(e["input"], bool)]
        if not numbers:
            raise
    fixed: JsonValue = dict(data)
    for loc in numbers:
        fixed = _as_string(fixed, tuple(loc))
    return model.model_validate(fixed)


def _as_string(node: JsonValue, loc: tuple[int | str, ...]) -> JsonValue:
    """`node` with the number at `loc` replaced by its decimal string (copied along the path, never in place)."""
    if not loc:
        return str(node)
    key, rest = loc[0], loc[1:]
    if isinstance(node, dict) and isinstance(key, str) and key in node:
        return {**node, key: _as_string(node[key], rest)}
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return [*node[:key], _as_string(node[key], rest), *node[key + 1:]]
    return node


def manifest(obj: BaseModel) -> dict[str, JsonValue]:
    """The JSON body the API server receives: wire names, and no field that was never set."""
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True)
