"""What a cluster's API server would check of deploy/'s objects, without a cluster.

Core Kubernetes objects: kubernetes-validate in strict mode (the API's JSON schemas with no
unknown field allowed), at each version in KUBERNETES.

KServe's objects (CRDs, which kubernetes-validate has no schema for): the KServe Python SDK's
published models, walked key by key. Each model class (V1alpha1ServingRuntime,
V1beta1InferenceService, ...) declares its fields' JSON names (attribute_map) and types
(openapi_types: 'str', 'list[V1Container]', 'dict(str, str)', another model's name). The walker
reports every key a model does not declare and every value whose type does not match; where a
model names a Kubernetes type (V1Container, V1ObjectMeta), that part is checked against the same
strict Kubernetes schema as above. The models are read from the installed package's source
(`kserve/models/*.py`) rather than imported: importing `kserve` starts with its model server
(fastapi, uvicorn, pandas, ...), which requirements/no-deps.txt leaves out.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

# Kubernetes 1.32: the oldest KServe 0.21 supports (the manifests need 1.30: the preStop sleep
# action); 1.37: the newest kubernetes-validate 1.37.0 knows.
KUBERNETES = ("1.32", "1.37")

_PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
               "datetime": (str,), "date": (str,)}
_QUANTITIES = {"ResourceQuantity", "V1beta1MetricQuantity"}  # "2", "500m", 0.8
_SCHEMAS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"


def kubernetes_errors(obj: dict, version: str) -> list[str]:
    """What strict kubernetes-validate says of a core object ([] when valid)."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{_path(e.absolute_path)}: {e.message}"]
    return []


def kserve_errors(obj: dict, model: str, version: str) -> list[str]:
    """Every key of `obj` the KServe SDK's `model` (e.g. "V1beta1InferenceService") does not
    declare, and every value of the wrong type, as 'path: what'."""
    return _walk(obj, model, "", version)


def _walk(value, kind: str, path: str, version: str) -> list[str]:
    if m := re.fullmatch(r"list\[(.+)\]", kind):
        if not isinstance(value, list):
            return [f"{path}: {_name(value)}, expected a list"]
        return [e for i, item in enumerate(value) for e in _walk(item, m[1], f"{path}[{i}]",
                                                                 version)]
    if m := re.fullmatch(r"dict\(str, (.+)\)", kind):
        if not isinstance(value, dict):
            return [f"{path}: {_name(value)}, expected a mapping"]
        return [e for k, v in value.items() for e in _walk(v, m[1], f"{path}.{k}", version)]
    if kind in _PRIMITIVES or kind in _QUANTITIES:
        allowed = _PRIMITIVES.get(kind, (str, int, float))
        ok = isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))
        return [] if ok else [f"{path}: {_name(value)}, expected {kind}"]
    if kind == "object":  # free-form
        return []
    if kind in sdk_models():
        return _walk_model(value, kind, path, version)
    return [f"{path}{where}: {what}" for where, what in _kubernetes_part(value, kind, version)]


def _walk_model(value, kind: str, path: str, version: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: {_name(value)}, expected {kind}"]
    types, names = sdk_models()[kind]
    fields = {json_name: attr for attr, json_name in names.items()}
    errors = []
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: {kind} has no such field"
                          f" (it has {', '.join(sorted(fields))})")
        else:
            errors += _walk(item, types[fields[key]], f"{path}.{key}", version)
    return errors


@functools.cache
def sdk_models() -> dict[str, tuple[dict, dict]]:
    """{class name: (openapi_types, attribute_map)} of every model of the installed kserve."""
    (package,) = importlib.util.find_spec("kserve").submodule_search_locations
    models = {}
    for source in sorted((Path(package) / "models").glob("*.py")):
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.ClassDef):
                declared = {t.id: ast.literal_eval(s.value) for s in node.body
                            if isinstance(s, ast.Assign) for t in s.targets
                            if isinstance(t, ast.Name)
                            and t.id in ("openapi_types", "attribute_map")}
                if len(declared) == 2:
                    models[node.name] = (declared["openapi_types"], declared["attribute_map"])
    return models


def _kubernetes_part(value, kind: str, version: str) -> list[tuple[str, str]]:
    """A Kubernetes type the SDK names (V1Container, K8sIoApiAppsV1DeploymentStrategy) checked
    against the strict schema of its definition: (path below it, what) for each error."""
    definitions, registry = _definitions(version)
    key = _definition(kind, definitions)
    if key is None:
        return [("", f"no KServe model or Kubernetes schema for type {kind}")]
    schema = {"$ref": f"{definitions['$id']}#/$defs/{key}"}
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [(_path(e.absolute_path), e.message) for e in validator.iter_errors(value)]


@functools.cache
def _definitions(version: str) -> tuple[dict, Registry]:
    definitions = json.loads(
        (_SCHEMAS / f"v{version}.0-local-strict" / "_definitions.json").read_text())
    return definitions, Resource.from_contents(definitions) @ Registry()


def _definition(kind: str, definitions: dict) -> str | None:
    """'V1Container' -> 'io.k8s.api.core.v1.Container';
    'K8sIoApiAppsV1DeploymentStrategy' -> 'io.k8s.api.apps.v1.DeploymentStrategy'."""
    if m := re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d+(?:(?:alpha|beta)\d+)?)([A-Z]\w*)", kind):
        key = f"io.k8s.api.{m[1].lower()}.{m[2].lower()}.{m[3]}"
        return key if key in definitions["$defs"] else None
    m = re.fullmatch(r"(V\d+(?:(?:alpha|beta)\d+)?)([A-Z]\w*)", kind)
    if not m:
        return None
    for group in ("io.k8s.api.core", "io.k8s.apimachinery.pkg.apis.meta"):
        key = f"{group}.{m[1].lower()}.{m[2]}"
        if key in definitions["$defs"]:
            return key
    return None


def _path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _name(value) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
