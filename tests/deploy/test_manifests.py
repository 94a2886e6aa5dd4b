"""The manifests agree with the server and with each other: one command line for the image and
both deployments, ports and probes on the ports the server listens on, health names it serves,
Services that select the pods, CPU limits that --workers auto turns into the intended workers,
and autoscalers that read the series the Prometheus rule serves."""

from __future__ import annotations

import re

import pytest
import yaml

from server.workers.cores import Cores, plan, usable_cores
from tests.deploy.manifests import dockerfile_cmd, find, quantity, served

SERVED = served()


def test_the_image_and_both_deployments_run_one_command_line():
    """So running one of them (test_command_lines.py) shows all three."""
    assert {tuple(s.container["args"]) for s in SERVED.values()} == {tuple(dockerfile_cmd())}


@pytest.mark.parametrize("where", SERVED)
def test_the_container_serves_every_interface_from_the_models_mount(where):
    args = SERVED[where].args
    assert args.host == "0.0.0.0" and str(args.models_dir) == "/mnt/models"
    assert args.workers == "auto" and args.metrics_port and args.http_port
    declared = {p["containerPort"] for p in SERVED[where].container["ports"]}
    assert {args.port, args.http_port} <= declared


@pytest.mark.parametrize("where", SERVED)
def test_the_probes_ask_the_server_what_it_answers(where):
    """Readiness: the gRPC health service's server-wide name (NOT_SERVING while starting,
    without a model, while draining); liveness and startup: /v2/health/live on the HTTP port."""
    s = SERVED[where]
    c, args = s.container, s.args
    assert c["readinessProbe"]["grpc"] == {"port": args.port, "service": ""}
    for probe in (c["livenessProbe"], c["startupProbe"]):
        assert probe["httpGet"]["path"] == "/v2/health/live"
        assert s.port(probe["httpGet"]["port"]) == args.http_port
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # models load first


@pytest.mark.parametrize("where", SERVED)
def test_cpu_limits_make_workers_auto_start_one_worker_per_cpu(where, tmp_path):
    """The kubelet writes limits.cpu as the container's cgroup quota; --workers auto reads it
    (server/workers/cores.py). Whole CPUs, and requests = limits (a Guaranteed pod, which the
    static CPU manager pins to as many cores)."""
    s = SERVED[where]
    requests, limits = s.container["resources"]["requests"], s.container["resources"]["limits"]
    assert requests == limits
    cpus = quantity(limits["cpu"])
    assert cpus == int(cpus) >= 1, f"{limits['cpu']}: a fraction rounds up to a throttled worker"
    folder = tmp_path / "kubepods.slice" / "pod" / "container"
    folder.mkdir(parents=True)
    (folder / "cpu.max").write_text(f"{int(cpus * 100_000)} 100000\n")  # cgroup v2, as written
    (tmp_path / "membership").write_text("0::/kubepods.slice/pod/container\n")
    quota = usable_cores(tmp_path, tmp_path / "membership").quota
    on_a_big_node = plan(s.args, Cores(affinity=64, quota=quota))
    assert (on_a_big_node.workers, on_a_big_node.intra_op_threads) == (int(cpus), 1)
    pinned = plan(s.args, Cores(affinity=int(cpus), quota=quota))  # static CPU manager
    assert pinned.workers == int(cpus)


def test_the_services_reach_the_deployments_ports():
    deployment = find("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    s = SERVED["Deployment fmnist-serve"]
    grpc, http = find("Service", "fmnist-grpc-headless"), find("Service", "fmnist-http")
    for service in (grpc, http):
        assert service["spec"]["selector"].items() <= labels.items()
    assert grpc["spec"]["clusterIP"] == "None" and not grpc["spec"]["publishNotReadyAddresses"]
    (port,) = grpc["spec"]["ports"]
    # A headless Service's DNS answer is pod addresses: clients dial them at the port they name
    # (dns:///fmnist-grpc-headless.<ns>.svc.cluster.local:50051), so it must be the pods' own.
    assert port["port"] == s.port(port["targetPort"]) == s.args.port == 50051
    (port,) = http["spec"]["ports"]
    assert s.port(port["targetPort"]) == s.args.http_port


def test_prometheus_is_told_where_metrics_are():
    deployment = SERVED["Deployment fmnist-serve"]
    annotations = find("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == deployment.args.metrics_port
    runtime = find("ServingRuntime")["spec"]["annotations"]
    assert int(runtime["prometheus.kserve.io/port"]) == deployment.args.metrics_port
    isvc = find("InferenceService")["metadata"]["annotations"]
    assert isvc["serving.kserve.io/enable-prometheus-scraping"] == "true"


def adapter_rule() -> dict:
    config = yaml.safe_load(find("ConfigMap", "prometheus-adapter")["data"]["config.yaml"])
    (rule,) = config["rules"]
    return rule


def test_the_hpa_scales_the_deployment_on_the_rules_metric():
    hpa, rule = find("HorizontalPodAutoscaler")["spec"], adapter_rule()
    target = hpa["scaleTargetRef"]
    deployment = find("Deployment")
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    assert 0 < quantity(metric["pods"]["target"]["averageValue"]) == 0.8 < 1
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_the_adapter_rule_serves_the_server_wide_saturation_per_pod():
    rule = adapter_rule()
    assert rule["seriesQuery"].startswith("fmnist_saturation{")
    assert re.fullmatch(rule["name"]["matches"], "fmnist_saturation")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}
    query = rule["metricsQuery"]
    assert "<<.Series>>{<<.LabelMatchers>>,model=\"\"}" in query  # the series without a model
    assert query.startswith("max by (<<.GroupBy>>)")


def test_keda_scales_the_inferenceservice_on_the_same_saturation():
    isvc = find("InferenceService")
    annotations, predictor = isvc["metadata"]["annotations"], isvc["spec"]["predictor"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "keda"
    (metric,) = predictor["autoScaling"]["metrics"]
    external = metric["external"]
    assert metric["type"] == "External" and external["metric"]["backend"] == "prometheus"
    assert quantity(external["target"]["value"]) == 0.8
    # KEDA's default AverageValue divides the query by the target: so the query is a sum
    query = external["metric"]["query"]
    name, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    assert query.startswith("sum(") and "fmnist_saturation{" in query and 'model=""' in query
    assert f'namespace="{namespace}"' in query
    (pods,) = re.findall(r'pod=~"([^"]+)"', query)
    assert re.fullmatch(pods, f"{name}-predictor-7d9c8b6f5-x2x4q")  # KServe's Deployment's pods
    assert not re.fullmatch(pods, f"{name}-transformer-7d9c8b6f5-x2x4q")


def test_the_inferenceservice_asks_for_what_the_runtime_offers():
    runtime, model = find("ServingRuntime")["spec"], find("InferenceService")["spec"][
        "predictor"]["model"]
    wanted = model["modelFormat"]
    assert any((f["name"], f.get("version")) == (wanted["name"], wanted.get("version"))
               for f in runtime["supportedModelFormats"])
    assert model["protocolVersion"] in runtime["protocolVersions"]
    (container,) = runtime["containers"]
    names = [p["name"] for p in container["ports"]]
    assert names[0] == "http1" and "h2c" in names  # KServe: first port REST, h2c gRPC
