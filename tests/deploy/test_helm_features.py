"""What issue 13 asks of the chart, one test per behaviour, each failing if the behaviour is removed:
sizing from the pod's resources, GPU backend + device, drain/grace derived and checked, proxy limits from
`config`, routing by X-Image-Id without pinning clients, load-metric HPA and KEDA, replicas/PDB/spread defaults,
optional Redis (in-chart or external Secret), alert rules and dashboard on the service's real metric names,
and the bundle URL from a Secret with a required sha256.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("yaml")

from tests.deploy.chart import (  # noqa: E402
    HELM,
    by_kind,
    config_data,
    container,
    deployment,
    env_of,
    metric_names_in,
    named,
    pod_spec,
    render,
    render_error,
    selects,
    service_metric_names,
    sets,
)

pytestmark = pytest.mark.skipif(HELM is None, reason="helm not installed (deploy/tools/install_ci_tools.sh)")
NGINX = "nginx.ingress.kubernetes.io/"


def field_ref(entry: dict) -> dict:
    return entry["valueFrom"]["resourceFieldRef"]


def test_threads_and_cache_sized_from_the_pod_resources() -> None:
    docs = render("default")
    env = env_of(container(docs))
    assert field_ref(env["SAMCLIP_CPUS"]) == {
        "containerName": "samclip",
        "resource": "requests.cpu",
        "divisor": "1",
    }
    assert field_ref(env["SAMCLIP_MEMORY_LIMIT_BYTES"]) == {
        "containerName": "samclip",
        "resource": "limits.memory",
        "divisor": "1",
    }
    data = config_data(docs)
    # Nothing sized for the node: no all-cores thread count, no fixed cache independent of the limit.
    assert "SAMCLIP_INTRA_OP_THREADS" not in data and "SAMCLIP_CACHE_BYTES" not in data
    assert "memory" in container(docs)["resources"]["limits"]
    explicit = render(None, *sets("config.cpus=3"))
    assert config_data(explicit)["SAMCLIP_CPUS"] == "3" and "SAMCLIP_CPUS" not in env_of(container(explicit))
    assert "resources.limits.memory is required" in render_error(*sets("resources.limits=null"))
    message = render_error(*sets("config.cache_bytes=6000000000"))
    assert "more than 75% of resources.limits.memory (6Gi)" in message


def test_gpu_enabled_selects_a_gpu_backend_on_cuda() -> None:
    gpu = config_data(render("gpu"))
    assert (gpu["SAMCLIP_BACKEND"], gpu["SAMCLIP_DEVICE"]) == ("onnxruntime", "cuda")
    assert json.loads(gpu["SAMCLIP_PROVIDERS"])[0] == "CUDAExecutionProvider"
    trt = config_data(render("all-options"))
    assert (trt["SAMCLIP_BACKEND"], trt["SAMCLIP_DEVICE"]) == (
        "tensorrt",
        "cuda",
    ) and "SAMCLIP_PROVIDERS" not in trt
    cpu = config_data(render("default"))
    assert (cpu["SAMCLIP_BACKEND"], cpu["SAMCLIP_DEVICE"]) == ("auto", "cpu")
    assert container(render("gpu"))["image"] == "registry.example.com/samclip-serve:0.1.0-gpu"
    assert container(render("all-options"))["image"].startswith("registry.example.com/samclip-serve@sha256:")
    resources = container(render("gpu"))["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
    assert "remove config.device=cpu" in render_error(*sets("gpu.enabled=true", "config.device=cpu"))
    # A GPU pod that finds no GPU stays live (startup/liveness on /healthz) but fails readiness (/readyz).
    probes = container(render("gpu"))
    assert probes["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize(
    ("extra", "drain", "grace"),
    [
        ([], 60 + 20, 5 + 80 + 10),  # request timeout + one batch; preStop + drain + margin
        (sets("config.request_timeout_s=120", "lifecycle.batchSeconds=30"), 150, 5 + 150 + 10),
        (["--set-json", "config.request_timeout_s=12.5"], 33, 5 + 33 + 10),  # ceil(12.5 + 20)
        (sets("lifecycle.terminationGracePeriodSeconds=85"), 80, 85),
    ],
)
def test_drain_and_grace_derived_from_request_timeout(extra: list[str], drain: int, grace: int) -> None:
    docs = render(None, *extra)
    assert config_data(docs)["SAMCLIP_DRAIN_TIMEOUT_S"] == str(drain)
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == grace
    assert container(docs)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


READ_TIMEOUT_30 = [
    "--set-string",
    "ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/proxy-read-timeout=30",
]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (sets("lifecycle.terminationGracePeriodSeconds=60"), "raise it to at least 85"),
        (
            sets("config.drain_timeout_s=25"),
            "config.drain_timeout_s (25) is shorter than config.request_timeout_s",
        ),
        (sets("config.drain_timeout_s=100", "lifecycle.terminationGracePeriodSeconds=100"), "at least 105"),
        (
            [*sets("ingress.enabled=true"), *READ_TIMEOUT_30],
            "proxy-read-timeout (30 s) is shorter than config.request_timeout_s (60 s)",
        ),
    ],
)
def test_inconsistent_timeouts_fail_with_a_clear_message(extra: list[str], message: str) -> None:
    assert message in render_error(*extra)


def test_ingress_limits_follow_config() -> None:
    main = named(render(None, *sets("ingress.enabled=true")), "Ingress", "rel-samclip")["metadata"][
        "annotations"
    ]
    assert main[NGINX + "proxy-body-size"] == "32m"  # config.max_body_bytes 32 MiB (nginx default: 1m)
    assert (
        main[NGINX + "proxy-read-timeout"] == main[NGINX + "proxy-send-timeout"] == "70"
    )  # 60 s + 10 s margin
    custom = render(
        None, *sets("ingress.enabled=true", "config.max_body_bytes=20000000", "config.request_timeout_s=30")
    )
    annotations = named(custom, "Ingress", "rel-samclip")["metadata"]["annotations"]
    size_kib = int(annotations[NGINX + "proxy-body-size"].removesuffix("k"))
    assert 20000000 <= size_kib * 1024 < 20000000 + 1024 and annotations[NGINX + "proxy-read-timeout"] == "40"


def test_ingress_routes_by_image_id_and_spreads_the_rest() -> None:
    docs = render(None, *sets("ingress.enabled=true"))
    main, hashed = named(docs, "Ingress", "rel-samclip"), named(docs, "Ingress", "rel-samclip-by-image")
    annotations = hashed["metadata"]["annotations"]
    assert annotations[NGINX + "canary"] == "true"
    assert annotations[NGINX + "canary-by-header"] == "X-Image-Id"
    assert annotations[NGINX + "canary-by-header-pattern"] == "^[0-9a-f]{64}$"
    assert annotations[NGINX + "upstream-hash-by"] == "$http_x_image_id"
    # Requests without the header take the main Ingress: no hashing (an empty key would pin one pod) and no
    # client affinity at all (no cookie, no persistent mode).
    for ingress in (main, hashed):
        keys = set(ingress["metadata"]["annotations"])
        assert not {key for key in keys if "affinity" in key or "session-cookie" in key}
    assert NGINX + "upstream-hash-by" not in main["metadata"]["annotations"]

    def backend(ingress: dict) -> str:
        return ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]

    assert [rule["host"] for rule in main["spec"]["rules"]] == [
        rule["host"] for rule in hashed["spec"]["rules"]
    ]
    services = {service["metadata"]["name"]: service for service in by_kind(docs, "Service")}
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    for ingress in (main, hashed):  # both reach the same pods
        assert selects(services[backend(ingress)]["spec"]["selector"], pod_labels)
    assert backend(main) != backend(hashed)  # one upstream hashed, the other not


def test_other_routing_modes() -> None:
    hashed = render("keda")
    (ingress,) = by_kind(hashed, "Ingress")
    assert ingress["metadata"]["annotations"][NGINX + "upstream-hash-by"] == "$samclip_route_key"
    assert "hashBy" in render_error(*sets("ingress.enabled=true", "ingress.routing.mode=hash"))
    (plain,) = by_kind(render(None, *sets("ingress.enabled=true", "ingress.routing.mode=none")), "Ingress")
    assert not [key for key in plain["metadata"]["annotations"] if "hash" in key or "canary" in key]


def test_in_cluster_routing_objects() -> None:
    docs = render("all-options")
    headless = named(docs, "Service", "samclip-all-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], deployment(docs)["spec"]["template"]["metadata"]["labels"])
    (rule,) = by_kind(docs, "DestinationRule")
    assert rule["apiVersion"] == "networking.istio.io/v1"
    assert rule["spec"]["host"] == "samclip-all.ml.svc.cluster.local"
    assert rule["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"] == {"httpHeaderName": "X-Image-Id"}
    assert not by_kind(render("default"), "DestinationRule")


def test_servicemonitor_scrapes_each_pod_once() -> None:
    docs = render("all-options")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    matched = [
        svc["metadata"]["name"]
        for svc in by_kind(docs, "Service")
        if selects(selector, svc["metadata"]["labels"])
    ]
    assert (
        matched == ["samclip-all"] and len(by_kind(docs, "Service")) == 4
    )  # not by-image, headless or redis
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics" and endpoint["interval"] == "10s"


def metrics_of(hpa: dict) -> list[tuple[str, str]]:
    return [
        (m["type"], m["pods"]["metric"]["name"] if m["type"] == "Pods" else m["resource"]["name"])
        for m in hpa["spec"]["metrics"]
    ]


def test_hpa_scales_on_load_and_cpu_only_as_fallback() -> None:
    (default,) = by_kind(render("default"), "HorizontalPodAutoscaler")
    assert metrics_of(default) == [("Pods", "samclip_inflight_requests")]
    assert default["spec"]["metrics"][0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    (gpu,) = by_kind(render("gpu"), "HorizontalPodAutoscaler")
    assert metrics_of(gpu) == [("Pods", "samclip_queue_seconds_mean")]
    (cpu,) = by_kind(render("cpu"), "HorizontalPodAutoscaler")
    assert metrics_of(cpu) == [("Pods", "samclip_inflight_requests"), ("Resource", "cpu")]
    (fallback,) = by_kind(render(None, *sets("autoscaling.mode=cpu")), "HorizontalPodAutoscaler")
    assert metrics_of(fallback) == [("Resource", "cpu")]
    assert "not cpu" in render_error(*sets("gpu.enabled=true", "autoscaling.cpu.alongsideLoad=true"))
    assert "replicas" not in deployment(render("default"))["spec"]  # the HPA owns the replica count


def test_keda_scaled_object_replaces_the_hpa() -> None:
    docs = render("keda")
    assert not by_kind(docs, "HorizontalPodAutoscaler") and "replicas" not in deployment(docs)["spec"]
    (scaled,) = by_kind(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment(docs)["metadata"]["name"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (3, 12)
    assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 4}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    assert (
        metric_names_in(query) == {"samclip_inflight_requests"}
        and 'namespace="ml", job="rel-samclip"' in query
    )
    assert trigger["metadata"]["threshold"] == "3"


def test_replicas_disruption_budget_and_spread_defaults() -> None:
    docs = render("default")
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 2
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert "maxUnavailable" not in pdb["spec"]
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in pod_spec(docs)["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    for constraint in spread.values():
        assert selects(constraint["labelSelector"]["matchLabels"], pod_labels)
        assert (
            constraint["matchLabelKeys"] == ["pod-template-hash"]
            and constraint["nodeTaintsPolicy"] == "Honor"
        )
    custom = pod_spec(render("all-options"))["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in custom] == ["topology.kubernetes.io/zone"]  # used verbatim
    assert "must be below the replica count (2)" in render_error(*sets("podDisruptionBudget.minAvailable=2"))
    assert "must be below the replica count (1)" in render_error(
        *sets("autoscaling.enabled=false", "replicaCount=1")
    )


def test_in_chart_redis_is_the_shared_tier() -> None:
    docs = render("all-options")
    env = env_of(container(docs))
    redis = deployment(docs, "samclip-all-redis")
    secret = named(docs, "Secret", "samclip-all-redis")
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "samclip-all-redis",
        "key": "redis-password",
    }
    assert env["SAMCLIP_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@samclip-all-redis:6379/0"
    assert list(env).index("REDIS_PASSWORD") < list(env).index("SAMCLIP_REDIS_URL")  # $(VAR) needs it first
    assert len(secret["data"]["redis-password"]) >= 40
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert options["--maxmemory"] == str(3 * 1024**3)  # 75% of the 4Gi limit
    assert options["--maxmemory-policy"] == "allkeys-lru"
    assert options["--save"] == "" and options["--appendonly"] == "no"  # a cache: nothing persisted
    assert options["--requirepass"] == "$(REDIS_PASSWORD)"
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    main_service = named(docs, "Service", "samclip-all")
    assert not selects(main_service["spec"]["selector"], redis_labels)  # never an inference endpoint
    assert selects(named(docs, "Service", "samclip-all-redis")["spec"]["selector"], redis_labels)
    policy = named(docs, "NetworkPolicy", "samclip-all-redis")
    (peer,) = policy["spec"]["ingress"][0]["from"]
    assert selects(
        peer["podSelector"]["matchLabels"], deployment(docs)["spec"]["template"]["metadata"]["labels"]
    )
    egress = named(docs, "NetworkPolicy", "samclip-all")["spec"]["egress"]
    assert any(port["port"] == 6379 for rule in egress for port in rule["ports"])


def test_external_redis_url_from_a_secret() -> None:
    docs = render("cpu")
    entry = env_of(container(docs))["SAMCLIP_REDIS_URL"]
    assert (
        entry["valueFrom"]["secretKeyRef"] == {"name": "samclip-redis", "key": "url"} and "value" not in entry
    )
    assert len(by_kind(docs, "Deployment")) == 1 and not by_kind(docs, "Secret")
    assert "SAMCLIP_REDIS_URL" not in env_of(container(render("default")))  # off unless asked for
    assert "not both" in render_error(*sets("redis.enabled=true", "redis.external.existingSecret=x"))


def test_alert_rules_use_the_service_metrics() -> None:
    docs = render("all-options")
    (rules,) = by_kind(docs, "PrometheusRule")
    alerts = {rule["alert"]: rule for group in rules["spec"]["groups"] for rule in group["rules"]}
    assert set(alerts) == {
        "SamclipPodNotReady",
        "SamclipNoReadyReplica",
        "SamclipQueueSaturated",
        "SamclipHigh5xxRatio",
        "SamclipHighP95Latency",
    }
    known = service_metric_names()
    for name, rule in alerts.items():
        used = metric_names_in(rule["expr"])
        assert used and used <= known, f"{name}: {used - known}"
        assert 'namespace="ml", job="samclip-all"' in rule["expr"]
    assert "> 51.2" in alerts["SamclipQueueSaturated"]["expr"]  # 80% of queue_size 64
    assert 'status=~"5.."' in alerts["SamclipHigh5xxRatio"]["expr"]
    assert "histogram_quantile(0.95" in alerts["SamclipHighP95Latency"]["expr"]
    assert alerts["SamclipHighP95Latency"]["expr"].rstrip().endswith("> 5")
    assert rules["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_grafana_dashboard_uses_the_service_metrics() -> None:
    docs = render("all-options")
    board = named(docs, "ConfigMap", "samclip-all-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(board["data"]["samclip.json"])
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = set().union(*(metric_names_in(expr) for expr in exprs))
    assert used <= service_metric_names(), used - service_metric_names()
    for needed in (
        "samclip_inflight_requests",
        "samclip_queue_seconds_bucket",
        "samclip_embedding_lookups_total",
    ):
        assert needed in used
    assert (
        not by_kind(render("default"), "PrometheusRule") and len(by_kind(render("default"), "ConfigMap")) == 1
    )


def test_bundle_url_from_a_secret_with_required_sha256() -> None:
    docs = render("keda")
    (init,) = pod_spec(docs)["initContainers"]
    env = env_of(init)
    assert env["BUNDLE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "samclip-bundle-url",
        "key": "presigned-url",
    }
    assert "value" not in env["BUNDLE_URL"]
    assert env["BUNDLE_AUTHORIZATION"]["valueFrom"]["secretKeyRef"]["name"] == "samclip-bundle-auth"
    assert len(env["BUNDLE_SHA256"]["value"]) == 64
    plain = env_of(pod_spec(render("cpu"))["initContainers"][0])
    assert plain["BUNDLE_URL"]["value"].startswith("https://")
    assert "sha256 is required" in render_error(*sets("bundle.source=url", "bundle.url.uri=https://h/b.tgz"))
    assert "bundle.url.uri or bundle.url.existingSecret" in render_error(*sets("bundle.source=url"))
    baked = pod_spec(render(None, *sets("bundle.source=image")))
    assert "bundle" not in {volume["name"] for volume in baked["volumes"]}
