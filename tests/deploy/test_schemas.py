"""Every object in deploy/ is one the API server would accept: core objects against the
Kubernetes schemas (kubernetes-validate, strict: no unknown field), KServe's against the KServe
SDK's models, field by field (tests/deploy/schemas.py). An object of any other kind fails: there
is no schema here to check it with."""

from __future__ import annotations

import copy
import importlib.metadata

import pytest

from tests.deploy import manifests, schemas

KSERVE_MODELS = {("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
                 ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}
DOCUMENTS = manifests.documents()


def errors(doc: dict, version: str) -> list[str]:
    model = KSERVE_MODELS.get((doc["apiVersion"], doc["kind"]))
    if model is not None:
        return schemas.kserve_errors(doc, model, version)
    return schemas.kubernetes_errors(doc, version)  # SchemaNotFoundError for any other kind


@pytest.mark.parametrize("version", schemas.KUBERNETES)
@pytest.mark.parametrize("path, doc", DOCUMENTS,
                         ids=[f"{p}:{d['kind']}:{d['metadata']['name']}" for p, d in DOCUMENTS])
def test_every_object_is_valid(path, doc, version):
    assert errors(doc, version) == []


def test_deploy_has_the_objects_it_promises():
    kinds = sorted(f"{doc['apiVersion']} {doc['kind']}" for _, doc in DOCUMENTS)
    assert kinds == ["apps/v1 Deployment", "autoscaling/v2 HorizontalPodAutoscaler",
                     "serving.kserve.io/v1alpha1 ServingRuntime",
                     "serving.kserve.io/v1beta1 InferenceService", "v1 ConfigMap", "v1 Service",
                     "v1 Service"]


def test_the_kserve_models_read_are_the_pinned_sdks():
    pinned = [line.split("==")[1].split()[0] for line in
              (manifests.REPO / "requirements" / "no-deps.txt").read_text().splitlines()
              if line.startswith("kserve==")]
    assert pinned == [importlib.metadata.version("kserve")]
    assert {"V1alpha1ServingRuntime", "V1beta1InferenceService", "V1beta1PredictorSpec",
            "V1beta1ModelSpec"} <= set(schemas.sdk_models())


def _set(doc: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    doc[last] = value


def _rename(doc: dict, path: str, new_name: str) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    doc[new_name] = doc.pop(last)


# (kind, what is planted, path of the field) -> the error must name that path
PLANTED = [
    ("ServingRuntime", "rename", "spec.supportedModelFormats", "supportedModelFormat"),
    ("ServingRuntime", "set", "spec.multiModel", "false"),
    ("ServingRuntime", "set", "spec.protocolVersions", "v2"),
    ("ServingRuntime", "set", "spec.containers.0.readinessProbe.grpc.port", "50051"),
    ("ServingRuntime", "rename", "spec.containers.0.livenessProbe", "livenessprobe"),
    ("InferenceService", "set", "spec.predictor.minReplicas", True),
    ("InferenceService", "rename", "spec.predictor.autoScaling.metrics.0.external.metric.query",
     "querry"),
    ("InferenceService", "rename", "metadata.annotations", "annotation"),
    ("Deployment", "rename", "spec.template.spec.containers.0.resources", "resource"),
    ("Deployment", "set", "spec.template.spec.terminationGracePeriodSeconds", "30"),
    ("HorizontalPodAutoscaler", "set", "spec.metrics.0.pods.target.averageValue", [0.8]),
    ("Service", "rename", "spec.clusterIP", "clusterIp"),
]


@pytest.mark.parametrize("kind, plant, path, value", PLANTED,
                         ids=[f"{k}:{p}:{path}" for k, p, path, _ in PLANTED])
def test_a_planted_mistake_is_reported_where_it_is(kind, plant, path, value):
    """The checks are not vacuous: one misspelled or mistyped field is one error, at its path."""
    (doc,) = [d for _, d in DOCUMENTS if d["kind"] == kind][:1]
    doc = copy.deepcopy(doc)
    (_set if plant == "set" else _rename)(doc, path, value)
    found = errors(doc, schemas.KUBERNETES[-1])
    assert len(found) == 1, found
    parent = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split(".")[:-1])
    assert found[0].startswith(parent), found


def test_the_walker_checks_lists_mappings_and_scalars():
    assert schemas.kserve_errors({"supportedModelFormats": {"name": "x"}},
                                 "V1alpha1ServingRuntimeSpec", "1.37") == [
        ".supportedModelFormats: dict {'name': 'x'}, expected a list"]
    assert schemas.kserve_errors({"nodeSelector": ["a"]}, "V1alpha1ServingRuntimeSpec",
                                 "1.37") == [".nodeSelector: list ['a'], expected a mapping"]
    assert schemas.kserve_errors({"replicas": True}, "V1alpha1ServingRuntimeSpec", "1.37") == [
        ".replicas: bool True, expected int"]
    assert schemas.kserve_errors({"volumes": [{"name": "v", "emptyDir": {}}]},
                                 "V1alpha1ServingRuntimeSpec", "1.37") == []
