"""The API model and the generated CRD agree with each other, with API.md, and with the committed files (no cluster).

The CRD's schema is checked offline with a small validator that does what the API server does with a structural
schema (defaulting, types, enums, patterns, bounds, required and unknown fields); the CEL rules, which need the API
server, are checked in test_crd_apiserver.py against the same cases.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from alembic_operator import api, cli, constants, crdgen, k8s_openapi
from api_cases import (
    EXAMPLE,
    INVALID,
    MINIMAL_SPEC,
    REPO,
    RICH_JOB_TEMPLATE,
    STATUS_SAMPLE,
    UNKNOWN_FIELDS,
    Invalid,
    _with,
    apply_defaults,
    example_manifests,
    example_spec,
)

API_MD = REPO.parent / "shared" / "API.md"


# --- a small structural-schema validator, as the API server applies it ------------------------------------------

PRESERVE = "x-kubernetes-preserve-unknown-fields"


def schema_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Errors of ``value`` against a structural schema (unknown fields count as errors: kubectl's strict mode)."""
    t = schema.get("type")
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool}
    if schema.get("x-kubernetes-int-or-string"):
        assert schema["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        if not isinstance(value, int | str) or isinstance(value, bool):
            return [f"{path}: must be an integer or a string"]
    elif t == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            return [f"{path}: must be a number"]
    elif t == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: must be an integer"]
    elif t in kinds and not isinstance(value, kinds[t]):
        return [f"{path}: must be of type {t}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: must match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            errors.append(f"{path}: bad length")
    if isinstance(value, int) and not isinstance(value, bool):
        low = schema.get("minimum")
        if low is not None and (value < low or (schema.get("exclusiveMinimum") and value == low)):
            errors.append(f"{path}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above maximum")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", 1 << 30):
            errors.append(f"{path}: too many items")
        for i, item in enumerate(value):
            errors += schema_errors(schema["items"], item, f"{path}[{i}]")
    if isinstance(value, dict):
        if not schema.get("minProperties", 0) <= len(value) <= schema.get("maxProperties", 1 << 30):
            errors.append(f"{path}: wrong number of properties")
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: Required value")
        props = schema.get("properties", {})
        for name, sub_value in value.items():
            if name in props:
                errors += schema_errors(props[name], sub_value, f"{path}.{name}")
            elif "additionalProperties" in schema:
                errors += schema_errors(schema["additionalProperties"], sub_value, f"{path}.{name}")
            elif not schema.get(PRESERVE):
                errors.append(f"{path}.{name}: unknown field")
    return errors


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.crd()


@pytest.fixture(scope="module")
def spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, sub in node.get("properties", {}).items():
        out.append((f"{path}.{name}", sub))
        out += _walk(sub, f"{path}.{name}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


# --- the generated files ----------------------------------------------------------------------------------------


def test_committed_files_are_up_to_date() -> None:
    for rel, content in crdgen.outputs().items():
        committed = REPO / rel
        assert committed.is_file(), f"{rel} is missing: run make crd"
        assert committed.read_text(encoding="utf-8") == content, f"{rel} is out of date: run make crd"
    assert cli.main(["crd", "--check", "--root", str(REPO)]) == 0


def test_check_reports_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd", "--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert cli.main(["crd", "--write", "--root", str(tmp_path)]) == 0
    assert cli.main(["crd", "--check", "--root", str(tmp_path)]) == 0
    (tmp_path / crdgen.CRD_PATH).write_text("edited", encoding="utf-8")
    assert cli.main(["crd", "--check", "--root", str(tmp_path)]) == 1


def test_output_is_deterministic() -> None:
    assert crdgen.crd_yaml() == crdgen.crd_yaml()
    assert crdgen.reference_markdown() == crdgen.reference_markdown()
    assert yaml.safe_load(crdgen.crd_yaml()) == crdgen.crd()


def test_stdout_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == crdgen.crd()


# --- the CRD's shape --------------------------------------------------------------------------------------------


def test_names_come_from_the_contract(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{constants.PLURAL}.{constants.GROUP}"
    assert spec["group"] == constants.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": constants.KIND,
        "listKind": f"{constants.KIND}List",
        "plural": constants.PLURAL,
        "singular": constants.SINGULAR,
        "shortNames": [constants.SHORT_NAME],
        "categories": [constants.CATEGORY],
    }
    (version,) = spec["versions"]
    assert version["name"] == constants.VERSION
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any]) -> None:
    columns = {c["name"].upper(): c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["PHASE"]["jsonPath"] == ".status.phase"
    assert columns["CURRENT"]["jsonPath"] == ".status.currentRevision"
    assert columns["TARGET"]["jsonPath"] == ".status.targetRevision"
    assert columns["READY"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["AGE"]["jsonPath"] == ".metadata.creationTimestamp"
    for name in ("PHASE", "CURRENT", "TARGET", "READY", "AGE"):
        assert "priority" not in columns[name], f"{name} must show without -o wide"
    assert columns["MESSAGE"]["priority"] == 1
    assert columns["REASON"]["priority"] == 1


def test_status_defaults_to_observed_generation_minus_one(crd: dict[str, Any]) -> None:
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["default"] == {"observedGeneration": -1}
    assert api.parse_status(None).observed_generation == -1
    assert api.parse_status({}).observed_generation == -1


def test_every_property_has_a_description(crd: dict[str, Any]) -> None:
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [
        path
        for path, node in _walk(root, "")
        if path != ".metadata" and not path.endswith("[]") and not node.get("description", "").strip()
    ]
    assert not missing, f"properties without a description: {missing}"
    # and every model field declares one itself (not only inherited from a model docstring)
    for model in (api.DatabaseMigrationSpec, api.DatabaseMigrationStatus):
        stack: list[type[Any]] = [model]
        while stack:
            current = stack.pop()
            for name, field in current.model_fields.items():
                assert field.description, f"{current.__name__}.{name} has no description"
                for arg in (field.annotation, *get_args(field.annotation)):
                    for inner in (arg, *get_args(arg)):
                        if isinstance(inner, type) and issubclass(inner, BaseModel):
                            stack.append(inner)


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in [("", root), *_walk(root, "")]:
        assert node.get("type") or node.get(PRESERVE) or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        for key in ("$ref", "allOf", "oneOf", "title", "nullable", "default" if ".jobTemplate." in path else ""):
            assert key not in node, f"{path}: {key}"
        if "anyOf" in node:  # only as int-or-string (quantities), the one union a structural schema allows
            assert node["x-kubernetes-int-or-string"] is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node:
            assert node["default"] is not None, path


def test_strings_and_lists_in_the_spec_are_bounded(spec_schema: dict[str, Any]) -> None:
    """CEL's cost estimate needs bounds on what a rule could iterate; keep every string and list in the spec bounded.

    Kubernetes' own schemas (core/v1 fields) have no bounds, and adding some would refuse what Kubernetes accepts:
    no CEL rule may sit inside them (a pattern costs nothing, which is why quantities use one)."""
    core = tuple(crdgen.core_v1_fields())
    for path, node in _walk(spec_schema, "spec"):
        if path.startswith(core) and path not in core:
            assert "x-kubernetes-validations" not in node, path
            continue
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: string without maxLength"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: list without maxItems"


def test_cel_rules_name_the_field(spec_schema: dict[str, Any]) -> None:
    rules = spec_schema["x-kubernetes-validations"]
    assert [r["rule"] for r in rules] == [r.rule for r in api.SPEC_RULES]
    for rule in rules:
        assert rule["message"].startswith("spec" + rule["fieldPath"]), rule
        assert rule["reason"] in ("FieldValueInvalid", "FieldValueRequired", "FieldValueForbidden")


def test_phase_enum_matches_constants(crd: dict[str, Any]) -> None:
    assert get_args(api.Phase) == constants.PHASES
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert tuple(status["properties"]["phase"]["enum"]) == constants.PHASES


def test_conditions_are_a_list_map_keyed_by_type(crd: dict[str, Any]) -> None:
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"


def test_reference_lists_every_field(crd: dict[str, Any]) -> None:
    text = crdgen.reference_markdown()
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    core = crdgen.core_v1_fields()
    for name in ("spec", "status"):
        for path, _node in _walk(root["properties"][name], name):
            if path.startswith(tuple(core)) and path not in core:
                assert f"| `{path}` |" not in text, path  # Kubernetes documents its own types
            elif not path.endswith("[]") and "{}" not in path:
                assert f"| `{path}` |" in text, path
    for path, type_name in core.items():
        assert f"| `{path}` | `{type_name}` |" in text
    assert "`spec.backup.retain` | `integer` |  | `5` |" in text


# --- pydantic and the schema agree ------------------------------------------------------------------------------


def test_api_md_example_parses() -> None:
    spec = api.parse_spec(example_spec())
    assert spec.database.url_secret_ref.name == "shop-db"
    assert spec.migrations.config == "/app/alembic.ini"
    assert spec.backup.volume == {"persistentVolumeClaim": {"claimName": "shop-backups"}}
    assert spec.job_template.active_deadline_seconds == 900
    assert spec.target_revision == "head"


@pytest.mark.skipif(not API_MD.is_file(), reason="shared/API.md is not beside the repository")
def test_example_is_the_one_in_api_md() -> None:
    text = API_MD.read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(apiVersion: .*?)```", text, re.S)
    assert block, "no example in API.md"
    assert yaml.safe_load(block.group(1)) == EXAMPLE


def test_empty_sections_get_their_defaults(spec_schema: dict[str, Any]) -> None:
    raw = {**MINIMAL_SPEC, "backup": {"volume": {"emptyDir": {}}}}
    spec = api.parse_spec(raw)
    assert spec.backup.enabled is True
    assert spec.backup.retain == 5
    assert spec.rollback.strategy == "Auto"
    assert spec.approval.allow_destructive is False
    assert spec.suspend is False
    assert spec.migrations.config == "alembic.ini"
    assert spec.migrations.working_dir is None
    assert spec.job_template == api.JobTemplateSpec()

    # The API server fills in the same values.
    defaulted = apply_defaults(spec_schema, raw)
    assert defaulted["backup"] == {"volume": {"emptyDir": {}}, "enabled": True, "retain": 5}
    assert defaulted["rollback"] == {"strategy": "Auto"}
    assert defaulted["approval"] == {"allowDestructive": False, "requireForLocking": False,
                                     "requireRehearsal": False}
    assert defaulted["jobTemplate"] == {}
    assert defaulted["suspend"] is False
    assert defaulted["migrations"]["config"] == "alembic.ini"


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(MINIMAL_SPEC, id="minimal"),
        pytest.param(example_spec(), id="api-md"),
        pytest.param({**MINIMAL_SPEC, "backup": {"enabled": False}, "rollback": {"strategy": "None"}}, id="no-backup"),
    ],
)
def test_crd_defaults_equal_model_defaults(spec_schema: dict[str, Any], raw: dict[str, Any]) -> None:
    """What the API server stores (its defaults applied) is what the model makes of the user's input."""
    defaulted = apply_defaults(spec_schema, raw)
    assert schema_errors(spec_schema, defaulted, "spec") == []
    assert api.parse_spec(defaulted) == api.parse_spec(raw)
    # every default the model has (other than "unset") is written by the API server too
    assert _drop_empty(api.dump(api.parse_spec(raw))) == _drop_empty(defaulted)


def test_model_round_trips() -> None:
    spec = api.parse_spec(example_spec())
    assert api.parse_spec(api.dump(spec)) == spec
    assert api.parse_spec(spec.model_dump(mode="json")) == spec  # snake_case names are accepted too


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_specs_are_refused_naming_the_field(spec_schema: dict[str, Any], case: Invalid) -> None:
    with pytest.raises(api.SpecError) as caught:
        api.parse_spec(case.spec)
    assert case.field in str(caught.value)
    assert all(p.startswith("spec") for p in caught.value.problems)

    # The API server refuses it too: its OpenAPI schema, or (for cross-field rules) its CEL rule.
    errors = schema_errors(spec_schema, apply_defaults(spec_schema, case.spec), "spec")
    if case.by == "schema":
        assert any(case.field in e for e in errors), errors
    else:
        assert errors == [], "a CEL case must pass the OpenAPI schema, or the CEL rule is never reached"
        rules = [r for r in api.SPEC_RULES if r.message in caught.value.problems]
        assert [f"spec{r.field_path}" for r in rules] == [case.field]


@pytest.mark.parametrize("case", UNKNOWN_FIELDS, ids=lambda c: c.id)
def test_unknown_fields_are_refused(spec_schema: dict[str, Any], case: Invalid) -> None:
    with pytest.raises(api.SpecError, match=re.escape(case.field) + ": unknown field"):
        api.parse_spec(case.spec)
    assert f"{case.field}: unknown field" in schema_errors(spec_schema, case.spec, "spec")


def test_spec_error_lists_every_problem() -> None:
    with pytest.raises(api.SpecError) as caught:
        api.parse_spec({"migrations": {"image": "x"}, "backup": {"retain": 0}})
    text = str(caught.value)
    for path in ("spec.database", "spec.targetRevision", "spec.backup.retain"):
        assert path in text
    with pytest.raises(api.SpecError, match="spec: must be an object"):
        api.parse_spec(None)


def test_revision_ids() -> None:
    for ok in ("head", "9d81aa02c4f5", "0001_initial", "A" * 32):
        assert api.parse_spec(_with("targetRevision", ok)).target_revision == ok
    for bad in ("", "head-1", "+2", "base", "heads", "branch@head", "abc:def", "a b", "a" * 33):
        with pytest.raises(api.SpecError, match=r"spec\.targetRevision"):
            api.parse_spec(_with("targetRevision", bad))


def test_status_round_trips() -> None:
    raw = copy.deepcopy(STATUS_SAMPLE)
    status = api.parse_status(raw)
    assert status.history[0].from_ == "3f2a9c1d0b7e"
    assert status.run is not None and status.run.jobs == {"migrate": "shop-migrate-4"}
    assert api.dump(status) == raw  # times stay RFC 3339 with Z, "from" keeps its name, run keeps unknown keys

    status_schema = crdgen.openapi_schema()["properties"]["status"]
    assert schema_errors(status_schema, raw, "status") == []
    assert api.parse_status({"observedGeneration": 1, "futureField": True}).observed_generation == 1


def test_times_are_written_as_metav1_time() -> None:
    status = api.parse_status(
        {"backup": {"completedAt": "2025-01-02T05:04:05.123456+02:00"}, "run": {"startedAt": "2025-01-02T03:04:05Z"}}
    )
    assert api.dump(status)["backup"] == {"completedAt": "2025-01-02T03:04:05Z"}
    assert api.dump(status)["run"] == {"startedAt": "2025-01-02T03:04:05Z", "jobs": {}}
    naive = api.Condition(
        type="Ready", status="True", last_transition_time=datetime(2025, 1, 2, 3, 4, 5), reason="Succeeded", message=""
    )
    assert api.dump(naive)["lastTransitionTime"] == "2025-01-02T03:04:05Z"


def test_parse_accepts_mappings_as_kopf_hands_them_over() -> None:
    spec = api.parse_spec(MappingProxyType(example_spec()))
    assert spec == api.parse_spec(example_spec())
    assert api.parse_status(MappingProxyType({"observedGeneration": 2})).observed_generation == 2


@pytest.mark.parametrize("manifest", example_manifests())
def test_examples_are_valid(spec_schema: dict[str, Any], manifest: dict[str, Any]) -> None:
    assert manifest["apiVersion"] == constants.API_VERSION
    api.parse_spec(manifest["spec"])
    assert schema_errors(spec_schema, apply_defaults(spec_schema, manifest["spec"]), "spec") == []


# --- Kubernetes' own schemas in spec.jobTemplate (issue 9) --------------------------------------------------------


def test_rich_job_template_is_accepted_and_kept_as_written(spec_schema: dict[str, Any]) -> None:
    raw = _with("jobTemplate", copy.deepcopy(RICH_JOB_TEMPLATE))
    spec = api.parse_spec(raw)
    assert api.dump(spec)["jobTemplate"] == {**RICH_JOB_TEMPLATE, "imagePullSecrets": []}  # passed on untouched
    assert schema_errors(spec_schema, apply_defaults(spec_schema, raw), "spec") == []


def test_core_v1_fields_carry_the_vendored_schema(spec_schema: dict[str, Any]) -> None:
    fields = crdgen.core_v1_fields()
    assert set(fields.values()) == {
        ("[]" if name in ("EnvVar", "Toleration") else "") + f"core/v1 {name}" for name in k8s_openapi.ROOTS
    }
    job_template = spec_schema["properties"]["jobTemplate"]["properties"]
    for path, type_name in fields.items():
        node = job_template[path.rsplit(".", 1)[1]]
        if type_name.startswith("[]"):
            assert "maxItems" in node, path  # our bound on the list; Kubernetes' schema is the items'
            node = node["items"]
        vendored = k8s_openapi.definition(type_name.rsplit(" ", 1)[1])
        assert {k: v for k, v in node.items() if k != "description"} == {
            k: v for k, v in vendored.items() if k != "description"
        }, path


def test_vendored_file_is_what_the_generator_writes() -> None:
    path = Path(k8s_openapi.__file__).with_name(k8s_openapi.VENDORED)
    text = path.read_text(encoding="utf-8")
    document = json.loads(text)
    assert k8s_openapi.render(document) == text
    assert set(document["definitions"]) == set(k8s_openapi.ROOTS)
    assert re.fullmatch(r"v1\.\d+\.\d+", document["kubernetesVersion"]), document["kubernetesVersion"]
    assert "$ref" not in text and '"default"' not in text and "x-kubernetes-patch" not in text


def _openapi(**schemas: Any) -> dict[str, Any]:
    return {"components": {"schemas": {f"io.k8s.api.core.v1.{k}": v for k, v in schemas.items()}}}


def _ref(name: str, **extra: Any) -> dict[str, Any]:
    return {"allOf": [{"$ref": f"#/components/schemas/io.k8s.api.core.v1.{name}"}], **extra}


def test_generate_makes_structural_crd_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s_openapi, "ROOTS", ("Root",))
    doc = _openapi(
        Root={
            "type": "object",
            "description": "root",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "default": ""},
                "child": _ref("Child", description="the child"),
                "port": {"format": "int-or-string", "oneOf": [{"type": "integer"}, {"type": "string"}]},
                "limits": {
                    "type": "object",
                    "additionalProperties": {"$ref": f"#/components/schemas/{k8s_openapi.QUANTITY}"},
                },
                "items": {
                    "type": "array",
                    "items": _ref("Child", default={}),
                    "x-kubernetes-patch-strategy": "merge",
                    "x-kubernetes-patch-merge-key": "key",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["key"],
                },
            },
            "x-kubernetes-unions": [{}],
        },
        Child={
            "type": "object",
            "description": "a child",
            "required": ["key"],
            "properties": {"key": {"type": "string"}},
        },
    )
    root = k8s_openapi.generate(doc, "v1.99.0")["definitions"]["Root"]
    assert root["properties"]["name"] == {"type": "string"}  # the Go zero-value default would satisfy "required"
    assert root["properties"]["child"]["description"] == "the child"  # the referring node's keys win
    assert root["properties"]["child"]["properties"] == {"key": {"type": "string"}}
    assert root["properties"]["port"] == {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    }
    assert root["properties"]["limits"]["additionalProperties"] == k8s_openapi.QUANTITY_SCHEMA
    items = root["properties"]["items"]
    assert set(items) == {"type", "items", "x-kubernetes-list-type", "x-kubernetes-list-map-keys"}
    assert "x-kubernetes-unions" not in root

    bad_cases: list[dict[str, Any]] = [
        {"type": "object", "not": {}},  # a keyword the generator does not know
        {"type": "object", "properties": {"x": _ref("Root")}},  # recursion cannot be inlined
        {"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "boolean"}]}}},
        {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["key"],
            "items": {"type": "object", "properties": {"key": {"type": "string"}}},
        },  # a list-map key the API server would need required
    ]
    for bad in bad_cases:
        with pytest.raises(k8s_openapi.GenerateError):
            k8s_openapi.generate(_openapi(Root=bad), "v1.99.0")


def test_core_v1_check_is_the_api_servers() -> None:
    """What :func:`k8s_openapi.validate` refuses beyond the cases above, as the API server does."""

    def problems(job_template: dict[str, Any]) -> list[str]:
        with pytest.raises(api.SpecError) as caught:
            api.parse_spec(_with("jobTemplate", job_template))
        return caught.value.problems

    # null is pruned by the API server, so a null required field is a missing one
    assert problems({"env": [{"name": None, "value": "x"}]}) == ["spec.jobTemplate.env[0].name: Required value"]
    assert problems({"resources": {"claims": [{"name": "a"}, {"name": "a"}]}}) == [
        'spec.jobTemplate.resources.claims[1]: Duplicate value: ["a"]'
    ]
    assert problems({"securityContext": {"runAsUser": 0, "privileged": "yes", "sudo": True}}) == [
        'spec.jobTemplate.securityContext.privileged: Invalid value: "yes": must be of type boolean',
        "spec.jobTemplate.securityContext.sudo: unknown field",
    ]
    assert problems({"env": "A=1"}) == ["spec.jobTemplate.env: Input should be a valid list"]
    for ok in ("1", 2, "100m", "0.5", ".5", "1e3", "1Gi", "512Mi", "2G", "-1", "+1k"):
        api.parse_spec(_with("jobTemplate.resources", {"limits": {"cpu": ok}}))
    for bad in ("lots", "1 Gi", "1GB", "1.5.0", "", "Gi", True):
        with pytest.raises(api.SpecError, match=r"spec\.jobTemplate\.resources\.limits\.cpu: Invalid value"):
            api.parse_spec(_with("jobTemplate.resources", {"limits": {"cpu": bad}}))


def test_label_values() -> None:
    for ok in ("", "a", "shop", "a.b-c_d", "A1", "x" * 63):
        api.parse_spec(_with("jobTemplate.podLabels", {"k": ok}))
        api.parse_spec(_with("jobTemplate.nodeSelector", {"k": ok}))
    for bad in ("a b", "-a", "a-", "_a", "a/b", "x" * 64):
        for field in ("podLabels", "nodeSelector"):
            with pytest.raises(api.SpecError, match=rf"spec\.jobTemplate\.{field}\.k"):
                api.parse_spec(_with(f"jobTemplate.{field}", {"k": bad}))


def test_name_rule(crd: dict[str, Any]) -> None:
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert root["x-kubernetes-validations"] == [api.NAME_RULE.cel()]
    assert root["properties"]["metadata"]["properties"]["name"]["type"] == "string"
    assert api.NAME_RULE.message.startswith("metadata.name must be at most 63 characters")
    assert constants.WAIT_FOR_LABEL in api.NAME_RULE.message
    assert api.MAX_NAME_LENGTH == 63
    assert api.name_problem("a" * 63) is None
    problem = api.name_problem("a" * 120)
    assert problem is not None and problem.startswith(api.NAME_RULE.message) and "120 characters" in problem


def test_drift_interval_minimum_has_one_source() -> None:
    from alembic_operator.reconcile import idle

    assert idle.MIN_DRIFT_INTERVAL is api.MIN_DRIFT_INTERVAL
    rule = next(r for r in api.SPEC_RULES if r.field_path == ".driftCheck.interval")
    assert f"duration('{api.MIN_DRIFT_INTERVAL}s')" in rule.rule
    assert f"at least {api.MIN_DRIFT_INTERVAL}s" in rule.message
    for ok in ("10s", "1m", "1h30m", "999999h", ""):
        assert api.parse_spec(_with("driftCheck.interval", ok)).drift_check.interval == ok
    assert api.parse_spec(_with("driftCheck", {})).drift_check.interval is None
    for bad in ("9s", "0s", "0h0m9s", "1000000h", "10", "1d"):
        with pytest.raises(api.SpecError, match=r"spec\.driftCheck\.interval"):
            api.parse_spec(_with("driftCheck.interval", bad))
