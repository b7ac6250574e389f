"""Kubernetes' own OpenAPI schemas for the core/v1 types that ``spec.jobTemplate`` passes to the Jobs' pods.

Why: without them the CRD lets through an ``env`` entry without a name or ``cpu: lots``, and the API server only
refuses them when the operator creates a Job, long after ``kubectl apply`` said yes. With them the API server refuses
such a spec at apply time, naming the field, and :mod:`alembic_operator.api` refuses the same values (one schema, two
validators: the API server's and :func:`validate`).

``core-v1.json`` is generated from what the API server publishes at ``/openapi/v3/api/v1``, never edited by hand;
a bed test checks it is exactly what :func:`generate` makes of the live document. To upgrade Kubernetes, regenerate:

    KUBECONFIG=<a cluster of the new version> python -m alembic_operator.k8s_openapi    # or: make k8s-openapi
    make crd

What :func:`generate` does to make the published schemas CRD schemas (which are structural and cannot use ``$ref``):
``$ref`` inlined (the referring node's own keys win); ``default`` dropped (Go zero values for client generators: an
``env`` entry's ``name: ""`` default would fill in, and so pass, the required name); patch-strategy and union
annotations dropped (they mean nothing in a CRD); ``IntOrString`` as ``x-kubernetes-int-or-string``; ``Quantity``
(string or number) as int-or-string with the grammar of ``resource.ParseQuantity`` as a pattern, as controller-gen
writes it (so a fractional quantity must be quoted: ``cpu: "0.5"``). Any other keyword raises, so that an upgrade
that publishes something new is looked at rather than silently passed on. Enums are kept as the live API server
publishes them (the source tree's copy of the document has none, hence generating from a running server).

Why a pattern and not CEL's ``isQuantity(self)``: the function exists in 1.36 CRDs, but in Kubernetes' maps, which
have no ``maxProperties``, its estimated cost exceeds the CRD budget more than 100 times and the CRD is refused; a
pattern costs nothing, and a number-or-string node cannot be typed for CEL at all. Bounds are never added to
Kubernetes' schemas: they would refuse what a Pod accepts.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib.resources import files
from typing import TypedDict

from pydantic import JsonValue

__all__ = [
    "QUANTITY_PATTERN",
    "ROOTS",
    "VENDORED",
    "K8sSchemaError",
    "definition",
    "generate",
    "render",
    "validate",
]

VENDORED = "core-v1.json"
SOURCE = "/openapi/v3/api/v1"
CORE = "io.k8s.api.core.v1."
ROOTS = (
    "Affinity",
    "EnvVar",
    "PodSecurityContext",
    "ResourceRequirements",
    "SecurityContext",
    "Toleration",
)
"""The core/v1 definitions ``spec.jobTemplate`` uses (the vendored file holds each one, fully inlined)."""

QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "int-or-string"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Schema = dict[str, JsonValue]  # a JSON Schema node: arbitrary JSON by nature, its keywords checked where read


class Vendored(TypedDict):
    """The vendored file: where it came from, and the structural schema of each of ROOTS."""

    generatedBy: str
    source: str
    kubernetesVersion: str
    definitions: dict[str, Schema]


QUANTITY_SCHEMA: Schema = {
    "description": (
        'A quantity: a number with an optional suffix, e.g. 100m, "0.5" (quote fractions), 2, 512Mi, 1Gi, 500M.'
    ),
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": QUANTITY_PATTERN,
}

_KEPT = {
    "type",
    "format",
    "description",
    "enum",
    "pattern",
    "required",
    "items",
    "additionalProperties",
    "properties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}
_DROPPED = {"default", "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key", "x-kubernetes-unions"}


class GenerateError(ValueError):
    """The published OpenAPI holds something the generator does not know how to turn into a CRD schema."""


def schema(value: JsonValue | None, path: str) -> Schema:
    """`value`, a schema node (a JSON object), or ValueError naming where it is not one."""
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON Schema object: {value!r}")
    return value


def _strings(value: JsonValue | None) -> list[str]:
    return [str(x) for x in value] if isinstance(value, list) else []


def _inline(node: Schema, schemas: Schema, path: str, stack: tuple[str, ...]) -> Schema:
    """One published schema node as a self-contained structural CRD schema node."""
    node = dict(node)
    if "allOf" in node:  # how v3 attaches a description to a $ref
        parts = node.pop("allOf")
        if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict) or set(parts[0]) != {
                "$ref"}:
            raise GenerateError(f"{path}: allOf {parts!r} is not a single $ref")
        node = {**parts[0], **node}
    if "$ref" in node:
        name = str(node.pop("$ref")).rsplit("/", 1)[-1]
        if name in stack:
            raise GenerateError(f"{path}: recursive $ref {name}")
        if name == QUANTITY:
            target = dict(QUANTITY_SCHEMA)
        else:
            if name not in schemas:
                raise GenerateError(f"{path}: unresolvable $ref {name}")
            target = _inline(schema(schemas[name], name), schemas, path, (*stack, name))
        return {**target, **{k: v for k, v in node.items() if k not in _DROPPED}}
    if node.get("format") == INT_OR_STRING:
        if node.pop("oneOf", None) != [{"type": "integer"}, {"type": "string"}]:
            raise GenerateError(f"{path}: unexpected int-or-string schema")
        del node["format"]
        node["x-kubernetes-int-or-string"] = True
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {n: _inline(schema(sub, f"{path}.{n}"), schemas, f"{path}.{n}", stack)
                        for n, sub in schema(value, path).items()}
        elif key in ("items", "additionalProperties"):
            if not isinstance(value, dict):
                raise GenerateError(f"{path}: {key} {value!r}")
            out[key] = _inline(value, schemas, f"{path}[]" if key == "items" else f"{path}{{}}", stack)
        elif key in _KEPT or key in ("x-kubernetes-int-or-string", "anyOf"):
            out[key] = value
        else:
            raise GenerateError(f"{path}: unsupported keyword {key!r}")
    if out.get("x-kubernetes-list-type") == "map":  # the API server needs every map key required (or defaulted)
        required = set(_strings(schema(out["items"], path).get("required")))
        if missing := set(_strings(out["x-kubernetes-list-map-keys"])) - required:
            raise GenerateError(f"{path}: list-map keys {sorted(missing)} are not required")
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise GenerateError(f"{path}: no type")
    return out


def generate(openapi: Schema, version: str) -> Vendored:
    """The vendored document made from the API server's ``/openapi/v3/api/v1`` (and its ``gitVersion``)."""
    schemas = schema(schema(openapi.get("components"), "components").get("schemas"), "components.schemas")
    return {
        "generatedBy": "python -m alembic_operator.k8s_openapi: do not edit",
        "source": f"{SOURCE} of kube-apiserver {version}",
        "kubernetesVersion": version,
        "definitions": {name: _inline(schema(schemas.get(CORE + name), name), schemas, name, (CORE + name,))
                        for name in ROOTS},
    }


def render(document: Vendored) -> str:
    """The vendored file's exact text (so that the test can compare strings, not only values)."""
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=True) + "\n"


@cache
def vendored() -> Vendored:
    doc: Vendored = json.loads(files(__package__).joinpath(VENDORED).read_text(encoding="utf-8"))  # generate()'s
    return doc


def definition(name: str) -> Schema:
    """The CRD schema of one core/v1 type, e.g. ``definition("EnvVar")`` (a fresh copy: callers may change it)."""
    return schema(json.loads(json.dumps(vendored()["definitions"][name])), name)


# --- the same schema, checked in Python ---------------------------------------------------------------------------


class K8sSchemaError(ValueError):
    """Values a core/v1 schema refuses; ``problems`` are ``"<path relative to the field>: <what>"``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def _type_ok(node: Schema, value: JsonValue) -> bool:
    if node.get("x-kubernetes-int-or-string"):
        return isinstance(value, str | int) and not isinstance(value, bool)
    kinds = _TYPES[str(node["type"])]
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def validate(node: Schema, value: JsonValue, path: str = "") -> list[str]:
    """What the API server refuses in ``value`` under a vendored (structural) schema, with kubectl's strict field
    validation: types, required and unknown fields, patterns, enums, duplicate keys of list-maps and sets. A ``null``
    property counts as absent, as the API server prunes it."""
    if not _type_ok(node, value):
        expected = "integer or string" if node.get("x-kubernetes-int-or-string") else node["type"]
        return [f"{path}: Invalid value: {json.dumps(value)}: must be of type {expected}"]
    problems: list[str] = []
    if isinstance(enum := node.get("enum"), list) and value not in enum:
        problems.append(f"{path}: Unsupported value: {json.dumps(value)}: must be one of {enum}")
    if isinstance(value, str) and isinstance(pattern := node.get("pattern"), str) and not re.search(pattern, value):
        what = "a quantity, e.g. 100m or 1Gi" if pattern == QUANTITY_PATTERN else f"match {pattern}"
        problems.append(f"{path}: Invalid value: {json.dumps(value)}: must be {what}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            problems += validate(schema(node["items"], path), item, f"{path}[{i}]")
        problems += _duplicates(node, value, path)
    if isinstance(value, dict):
        present = {k: v for k, v in value.items() if v is not None}
        for name in _strings(node.get("required")):
            if name not in present:
                problems.append(f"{path}.{name}: Required value")
        props = schema(node.get("properties", {}), path)
        for name, sub in present.items():
            if name in props:
                problems += validate(schema(props[name], path), sub, f"{path}.{name}")
            elif "additionalProperties" in node:
                problems += validate(schema(node["additionalProperties"], path), sub, f"{path}.{name}")
            else:
                problems.append(f"{path}.{name}: unknown field")
    return problems


def _duplicates(node: Schema, items: list[JsonValue], path: str) -> list[str]:
    kind = node.get("x-kubernetes-list-type")
    if kind == "set":
        keys = [json.dumps(item, sort_keys=True) for item in items]
    elif kind == "map":
        names = _strings(node["x-kubernetes-list-map-keys"])
        keys = [json.dumps([item.get(n) for n in names]) if isinstance(item, dict) else "" for item in items]
    else:
        return []
    seen: set[str] = set()
    problems = []
    for i, key in enumerate(keys):
        if key in seen:
            problems.append(f"{path}[{i}]: Duplicate value: {key}")
        seen.add(key)
    return problems
