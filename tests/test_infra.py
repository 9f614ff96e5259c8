"""Deployment manifests under infra/: schema-checked with the Kubernetes client's own models and
cross-checked against the image definition and the TorchServe config the local server uses."""

import re
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"
ROOT = INFRA.parent


def _properties(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def _dockerfile(image: str) -> str:
    """The image definition's text, after checking that everything it COPYs exists in the repo."""
    text = (INFRA / image / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY\s+(.+)\s+\S+$", text, re.M):
        for src in sources.split():
            assert (ROOT / src).exists(), f"infra/{image}/Dockerfile copies missing {src}"
    return text


def _k8s_objects(path: Path) -> list:
    """Deserialize each document into its kubernetes.client model: required fields and types checked."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    return [api._ApiClient__deserialize(doc, f"V1{doc['kind']}") for doc in yaml.safe_load_all(path.read_text())]


@pytest.fixture(scope="module")
def objects():
    objs = _k8s_objects(INFRA / "k8s" / "torchserve.yaml")
    return {type(o).__name__: o for o in objs}


@pytest.fixture(scope="module")
def props():
    return _properties(INFRA / "torchserve" / "config.properties")


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_container_config_keeps_secure_defaults_and_the_local_settings(props, tmp_path):
    from serving.server import LocalTorchServe

    assert props.get("disable_token_authorization", "false") == "false"
    assert props["metrics_mode"] == "prometheus"
    local = LocalTorchServe(tmp_path)
    local.write_config()
    local_props = _properties(local.config_file)
    same = set(local_props) - {"model_store", "metrics_config"}
    assert {k: props[k] for k in same if "address" not in k and "port" not in k} == {
        k: local_props[k] for k in same if "address" not in k and "port" not in k
    }  # one TorchServe configuration, locally and in the image


def test_dockerfile_copies_what_exists_and_exposes_the_configured_ports(props):
    dockerfile = _dockerfile("torchserve")
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()}
    ports = {_port(props[k]) for k in ("inference_address", "management_address", "metrics_address")}
    ports |= {int(props["grpc_inference_port"]), int(props["grpc_management_port"])}
    assert exposed == ports
    assert "COPY serving/metrics.yaml " + props["metrics_config"] in dockerfile
    assert "-r requirements.lock" in dockerfile and "USER model-server" in dockerfile
    entry = (INFRA / "torchserve" / "entrypoint.sh").read_text()
    assert "--disable-token-auth" not in entry and "--dt" not in entry.split()
    assert "--enable-model-api" not in entry


def test_container_renews_its_keys_and_logs_like_the_local_server(props):
    from serving.server import LOG_CONFIG

    entry = (INFRA / "torchserve" / "entrypoint.sh").read_text()
    assert "python -m serving.keys" in entry  # the key keeper runs beside TorchServe
    lifetime_s = float(re.search(r"--lifetime-s (\S+)", entry).group(1))
    assert lifetime_s == float(props["token_expiration_min"]) * 60
    target = re.search(r"--log-config (\S+)", entry).group(1)
    assert f"COPY serving/{LOG_CONFIG.name} {target}" in _dockerfile("torchserve")


def test_deployment_and_service_are_consistent(objects, props):
    deploy, svc = objects["V1Deployment"], objects["V1Service"]
    labels = deploy.spec.template.metadata.labels
    assert deploy.spec.selector.match_labels.items() <= labels.items()
    assert svc.spec.selector.items() <= labels.items()
    (container,) = deploy.spec.template.spec.containers
    named = {p.name: p.container_port for p in container.ports}
    assert named["inference"] == _port(props["inference_address"])
    assert named["metrics"] == _port(props["metrics_address"])
    assert named["grpc-inference"] == int(props["grpc_inference_port"])
    assert all(p.target_port in named for p in svc.spec.ports)
    annotations = deploy.spec.template.metadata.annotations
    assert int(annotations["prometheus.io/port"]) == named["metrics"]
    assert container.resources.requests and container.resources.limits
    assert deploy.spec.template.spec.security_context.run_as_non_root
    probe = container.readiness_probe._exec.command
    assert probe[-1] in (INFRA / "torchserve" / "Dockerfile").read_text()  # the probe script is in the image
    assert deploy.spec.strategy.rolling_update.max_unavailable == 0  # a deploy never drops capacity
    env = objects["V1ConfigMap"].data
    assert re.fullmatch(r"\d{8}\.\d+", env["MODEL_VERSION"])


def test_probe_reads_the_key_file_where_torchserve_writes_it():
    dockerfile = (INFRA / "torchserve" / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR (.+)$", dockerfile, re.M)[-1]
    assert f"{workdir}/key_file.json" in (INFRA / "torchserve" / "probe.py").read_text()


def test_kserve_inference_service_uses_the_torchserve_runtime():
    (isvc,) = yaml.safe_load_all((INFRA / "kserve" / "inferenceservice.yaml").read_text())
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] == "v1"
    assert re.match(r"^(s3|gs|pvc)://", model["storageUri"])
    assert model["resources"]["limits"] and isvc["spec"]["predictor"]["minReplicas"] >= 2


def test_airflow_compose_uses_postgres_keeps_secrets_out_and_binds_loopback():
    compose = yaml.safe_load((INFRA / "airflow" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"} <= set(services)
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        env = services[name]["environment"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    text = (INFRA / "airflow" / "docker-compose.yaml").read_text()
    for secret in ("POSTGRES_PASSWORD", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_JWT_SECRET"):
        assert f"${{{secret}:?" in text  # required from the environment, no default in the file
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    dockerfile = _dockerfile("airflow")
    assert "-r requirements.lock" in dockerfile and "COPY dags ./dags" in dockerfile
    # the image installs the project (not editable): the gate policy and the DAGs are named where
    # they were copied, since the code's own default looks beside the installed package
    env = dict(re.findall(r"(HAP_\w+)=(\S+)", dockerfile))
    assert env["HAP_GATE_POLICY"] == "/opt/hap/configs/gate_policy.yaml" and "COPY configs ./configs" in dockerfile
    assert env["HAP_DAGS_FOLDER"] == "/opt/hap/dags"


def test_dashboard_and_alerts_query_only_series_the_server_exposes():
    """Every metric and label in the Grafana dashboard and the alert rules is declared in the
    metrics config TorchServe runs with, and every alert links a runbook section that exists."""
    import json

    config = yaml.safe_load((ROOT / "serving" / "metrics.yaml").read_text())
    declared = {}
    for group in ("ts_metrics", "model_metrics"):
        for metrics in config[group].values():
            for m in metrics:
                declared[m["name"]] = {str(d) for d in m["dimensions"]} | {"Hostname", "model_name", "model_version"}
    dashboard = json.loads((INFRA / "grafana" / "hap-serving.json").read_text())
    rules = yaml.safe_load((INFRA / "prometheus" / "hap-alerts.yaml").read_text())["groups"][0]["rules"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + [r["expr"] for r in rules]
    for expr in exprs:
        for name, selector in re.findall(r"\b((?:Hap|Requests|ts_)\w+)(?:\{([^}]*)\})?", expr):
            assert name in declared, (name, expr)
            labels = set(re.findall(r"(\w+)\s*!?=~?", selector))
            assert labels <= declared[name], (name, labels - declared[name])
        for label in re.findall(r"by \(([^)]*)\)", expr):
            assert {x.strip() for x in label.split(",")} <= {"le", "version", "ErrorKind", "model_version"}, expr
    runbook = (ROOT / "docs" / "runbook.md").read_text().lower()
    for rule in rules:
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert f"## {anchor.replace('-', ' ')}" in runbook, anchor


@pytest.mark.parametrize("image", ["training", "airflow", "torchserve"])
def test_every_image_copies_every_package_it_installs(image):
    """``pip install .`` in an image installs the project's packages: each must be copied in, or a
    module (e.g. ``hap_runtime``, which every layer builds on) is missing at run time only."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*").split(".")[0] for p in include}
    copied = set(re.findall(r"^COPY\s+(\w+)\s+\./\1$", _dockerfile(image), re.M))
    assert packages <= copied, f"{image} image misses {sorted(packages - copied)}"
