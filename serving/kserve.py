"""Serving on KServe: the published layout, the ServingRuntime and InferenceService objects, and the
cluster side of ``hap deploy`` (``serving.mode: kserve``).

- **Layout.** A version is published under ``<storage_uri>/<version>/`` as KServe's TorchServe
  runtime reads it: ``config/config.properties`` (with the ``model_snapshot`` that loads it as the
  default version of ``hap``) and ``model-store/hap-<version>.mar``. KServe's storage initializer
  copies it to ``/mnt/models``.
- **Container.** TorchServe itself answers KServe on port 8080 (``/v1/models/hap:predict`` or
  ``/v2/models/hap/infer``, through the envelope the runtime sets from ``protocolVersion``; see
  ``hap_runtime.kserve``); metrics on 8082; the management API only on the pod's loopback, with the
  model API off. Readiness is TorchServe's ``/ping``, which is Healthy only once the default
  version's workers are up.
- **Auth in the cluster.** TorchServe's token authorization is off inside the pod: its keys are
  random per process and expire, so nothing in front of several replicas (KServe's router, probes,
  the ingress) could hold a valid key for each. Requests are authenticated at the ingress, and a
  NetworkPolicy admits only the ingress/activator and Prometheus (``infra/kserve``, runbook's threat
  model). Local mode keeps loopback listeners and token authorization.
- **Deploy.** ``KServeTarget`` is the target ``serving.deploy.roll_out`` drives: publish, roll out
  as a canary taking ``canary_percent`` of the traffic, smoke the canary through the protocol
  against the offline scorer, then promote (the canary takes all traffic) or roll back (the
  InferenceService returns to the previous version's storage URI).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from hap.config import KServeConfig, ServingConfig
from hap_runtime.keyfile import HOME_ENV, MGMT_ENV
from hap_runtime.kserve import answers_of, call_body
from serving.archive import MODEL_NAME, mar_name
from serving.errors import DeployFailed
from serving.server import frontend_properties

log = logging.getLogger(__name__)

GROUP, API_VERSION = "serving.kserve.io", "v1beta1"
ISVC_PLURAL, RUNTIME_PLURAL = "inferenceservices", "servingruntimes"
MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storage URI's contents
HTTP_PORT, METRICS_PORT, MGMT_PORT = 8080, 8082, 8085
CONFIG_PATH, STORE_DIR = "config/config.properties", "model-store"
ENVELOPES = {"v1": "kserve", "v2": "kservev2"}  # TorchServe's envelope for each protocolVersion
TOKEN_ENV = "HAP_KSERVE_TOKEN"
"""Bearer token ``hap`` sends to the ingress when smoking a canary (from a Secret; never in config)."""
INFRA = Path(__file__).resolve().parents[1] / "infra" / "kserve"


def version_uri(k: KServeConfig, version: str) -> str:
    return f"{k.storage_uri.rstrip('/')}/{version}"


def container_properties(cfg: ServingConfig, version: str) -> dict[str, str]:
    """``config/config.properties`` of a published version, as the pod's TorchServe reads it."""
    model = {
        "defaultVersion": True,
        "marName": mar_name(version),
        "minWorkers": cfg.workers,
        "maxWorkers": cfg.workers,
        "batchSize": cfg.batch_size,
        "maxBatchDelay": cfg.max_batch_delay_ms,
        "responseTimeout": cfg.response_timeout_s,
    }
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {MODEL_NAME: {version: model}}}
    return {
        "inference_address": f"http://0.0.0.0:{HTTP_PORT}",  # the port KServe routes to
        "metrics_address": f"http://0.0.0.0:{METRICS_PORT}",  # Prometheus (prometheus.kserve.io/port)
        "management_address": f"http://127.0.0.1:{MGMT_PORT}",  # the pod's loopback only
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": "7070",
        "grpc_management_port": "7071",
        "model_store": f"{MOUNT}/{STORE_DIR}",
        "enable_envvars_config": "true",  # TS_SERVICE_ENVELOPE, set by the ServingRuntime per protocol
        "disable_token_authorization": "true",  # authenticated at the ingress (module docstring)
        "model_snapshot": json.dumps(snapshot, separators=(",", ":")),
        **frontend_properties(cfg),
        "metrics_config": "/home/model-server/metrics.yaml",
    }


def properties_text(props: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in props.items())


def publish(mar: Path, version: str, cfg: ServingConfig) -> str:
    """Upload the archive and its ``config.properties`` to the version's storage URI (fsspec);
    rerunning it rewrites the same two files. Returns the URI."""
    import fsspec

    uri = version_uri(cfg.kserve, version)
    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(f"{root}/{STORE_DIR}", exist_ok=True)
    fs.makedirs(f"{root}/config", exist_ok=True)
    fs.put_file(str(mar), f"{root}/{STORE_DIR}/{mar_name(version)}")
    fs.pipe_file(f"{root}/{CONFIG_PATH}", properties_text(container_properties(cfg, version)).encode())
    log.info("published %s to %s", version, uri)
    return uri


def serving_runtime(cfg: ServingConfig) -> dict[str, Any]:
    """The ServingRuntime running our image the way KServe's TorchServe runtime runs its own."""
    k = cfg.kserve
    container = {
        "name": "kserve-container",
        "image": k.image,
        "command": ["torchserve"],
        "args": [
            "--start",
            "--foreground",
            f"--ts-config={MOUNT}/{CONFIG_PATH}",
            f"--model-store={MOUNT}/{STORE_DIR}",
            "--ncs",
            "--log-config=/home/model-server/log4j2.xml",
        ],
        "env": [
            {"name": "TS_SERVICE_ENVELOPE", "value": "{{.Labels.serviceEnvelope}}"},
            {"name": "HAP_TORCH_THREADS", "value": str(cfg.torch_threads)},
            # the workers read their queue depth here to shed load (hap_runtime.admission); no key file: auth off
            {"name": MGMT_ENV, "value": f"http://127.0.0.1:{MGMT_PORT}"},
            {"name": HOME_ENV, "value": "/home/model-server/run"},
        ],
        "ports": [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/ping", "port": HTTP_PORT},
            "initialDelaySeconds": 10,
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "tcpSocket": {"port": HTTP_PORT},
            "initialDelaySeconds": 60,
            "periodSeconds": 20,
            "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "apiVersion": f"{GROUP}/{API_VERSION}",
        "kind": "ServingRuntime",
        "metadata": {"name": k.runtime, "namespace": k.namespace, "labels": {"app.kubernetes.io/part-of": "hap"}},
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(METRICS_PORT), "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{"name": "pytorch", "version": "1", "autoSelect": False}],
            "protocolVersions": ["v1", "v2"],
            "containers": [container],
        },
    }


def inference_service(cfg: ServingConfig, version: str, canary: bool = False) -> dict[str, Any]:
    """The InferenceService serving ``version``; ``canary`` sends it only ``canary_percent`` of the
    traffic (the rest stays on the last rolled-out revision)."""
    k = cfg.kserve
    model = {
        "modelFormat": {"name": "pytorch"},
        "runtime": k.runtime,
        "protocolVersion": k.protocol,
        "storageUri": version_uri(k, version),
        # requests = limits: a guaranteed CPU share (the two workers are CPU-bound; throttling shows as p99)
        "resources": {"requests": {"cpu": k.cpu, "memory": k.memory}, "limits": {"cpu": k.cpu, "memory": k.memory}},
    }
    predictor: dict[str, Any] = {
        "minReplicas": k.min_replicas,
        "maxReplicas": k.max_replicas,
        "scaleMetric": k.scale_metric,
        "scaleTarget": k.scale_target,
        "containerConcurrency": 0,
        "timeout": cfg.response_timeout_s,
        "model": model,
    }
    if canary:
        predictor["canaryTrafficPercent"] = k.canary_percent
    return {
        "apiVersion": f"{GROUP}/{API_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": k.name,
            "namespace": k.namespace,
            "labels": {"app.kubernetes.io/part-of": "hap", "hap.version": version},
            "annotations": {
                "serving.kserve.io/enable-tag-routing": "true",  # the canary answers at its own URL (tag "latest")
                "serving.kserve.io/enable-prometheus-scraping": "true",
                "serving.kserve.io/deploymentMode": "Serverless",  # canary rollouts need Knative revisions
            },
        },
        "spec": {"predictor": predictor},
    }


def network_policy(cfg: ServingConfig) -> dict[str, Any]:
    """Who may reach the predictor pods, whose TorchServe has no token authorization: Knative's
    activator and the ingress gateway (the only paths for requests, authenticated at the ingress),
    and Prometheus for metrics. Everything else in the cluster is refused."""
    k = cfg.kserve

    def namespace(name: str) -> dict[str, Any]:
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{k.name}-predictor",
            "namespace": k.namespace,
            "labels": {"app.kubernetes.io/part-of": "hap"},
        },
        "spec": {
            "podSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": k.name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [namespace("knative-serving"), namespace("istio-system")]},  # requests, probes, autoscaler
                {
                    "from": [namespace("monitoring")],  # Prometheus: TorchServe's metrics, KServe's aggregate
                    "ports": [{"port": METRICS_PORT, "protocol": "TCP"}, {"port": 9088, "protocol": "TCP"}],
                },
            ],
        },
    }


def render_examples(dest: Path = INFRA, cfg: ServingConfig | None = None) -> list[Path]:
    """The committed manifests (kept fresh by a test): ``python -m serving.kserve``."""
    import yaml

    cfg = cfg or ServingConfig()
    header = "# Generated by `python -m serving.kserve` from serving/kserve.py: do not edit.\n"
    docs = {
        "servingruntime.yaml": serving_runtime(cfg),
        "inferenceservice.yaml": inference_service(cfg, "20261122.1"),
        "networkpolicy.yaml": network_policy(cfg),
        "config.properties": None,
    }
    out = []
    for name, doc in docs.items():
        path = dest / name
        if doc is None:
            body = (
                "# The published config/config.properties of version 20261122.1 (serving.kserve.container_properties)\n"
            )
            path.write_text(header + body + properties_text(container_properties(cfg, "20261122.1")))
        else:
            path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
        out.append(path)
    return out


def _version_of(isvc: dict[str, Any] | None) -> str | None:
    if not isvc:
        return None
    return isvc["spec"]["predictor"]["model"]["storageUri"].rstrip("/").rsplit("/", 1)[-1]


def _custom_objects_api() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise DeployFailed(f"serving.mode is kserve but no Kubernetes credentials were found "
                               f"(in-cluster service account or $KUBECONFIG): {exc}") from None  # fmt: skip
    return client.CustomObjectsApi()


@dataclass
class Answer:
    """One smoke request's outcome: HTTP status, the plain answer (or the error text)."""

    status: int
    text: str


class KServeTarget:
    """The InferenceService as ``roll_out``'s target: stage = publish + canary rollout, ask = the
    canary through the protocol, promote = all traffic to the canary, withdraw = back to the
    previous version's storage URI."""

    kind = "kserve"

    def __init__(self, cfg: ServingConfig, api: Any = None, http: requests.Session | None = None) -> None:
        self.cfg, self.k = cfg, cfg.kserve
        self.api = api or _custom_objects_api()
        self.http = http or requests.Session()

    # ---- the cluster object ----

    def _get(self) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(GROUP, API_VERSION, self.k.namespace, ISVC_PLURAL, self.k.name)
        except Exception as exc:  # noqa: BLE001 - absent before the first deploy
            if getattr(exc, "status", None) == 404:
                return None
            raise

    def _apply(self, version: str, canary: bool) -> None:
        """Create the InferenceService or replace its spec (optimistic: a concurrent change fails)."""
        desired = inference_service(self.cfg, version, canary)
        current = self._get()
        if current is None:
            self.api.create_namespaced_custom_object(GROUP, API_VERSION, self.k.namespace, ISVC_PLURAL, desired)
            return
        if current["spec"] == desired["spec"]:
            return  # already what it should be: no new generation
        desired["metadata"] = {
            **current["metadata"],
            "labels": desired["metadata"]["labels"],
            "annotations": {**current["metadata"].get("annotations", {}), **desired["metadata"]["annotations"]},
        }
        self.api.replace_namespaced_custom_object(
            GROUP, API_VERSION, self.k.namespace, ISVC_PLURAL, self.k.name, desired
        )

    def _wait_ready(self, what: str) -> dict[str, Any]:
        """Until the controller has seen the latest spec and the InferenceService is Ready."""
        deadline = time.monotonic() + self.k.ready_timeout_s
        while True:
            isvc = self._get() or {}
            status = isvc.get("status", {})
            ready = {c["type"]: c for c in status.get("conditions", [])}.get("Ready", {})
            seen = status.get("observedGeneration") == isvc.get("metadata", {}).get("generation")
            if seen and ready.get("status") == "True":
                return isvc
            if seen and ready.get("status") == "False" and ready.get("reason") in {"RevisionFailed", "Failed"}:
                raise DeployFailed(f"{what}: InferenceService not ready: {ready.get('message', '')}")
            if time.monotonic() > deadline:
                raise DeployFailed(f"{what}: not Ready within {self.k.ready_timeout_s}s ({ready.get('message', '')})")
            time.sleep(self.k.poll_s)

    def _url(self, isvc: dict[str, Any], tag: str | None) -> str:
        predictor = isvc.get("status", {}).get("components", {}).get("predictor", {})
        if tag is None:
            return predictor.get("url") or isvc["status"]["url"]
        for target in predictor.get("traffic", []):
            if target.get("tag") == tag and target.get("url"):
                return target["url"]
        raise DeployFailed(f"no URL for the {tag!r} revision (is tag routing on?)")

    # ---- the deploy target ----

    def serving(self) -> str | None:
        """The version taking the traffic now (the rolled-out storage URI)."""
        return _version_of(self._get())

    def stage(self, version: str, mar: Path, previous: str | None) -> None:
        publish(mar, version, self.cfg)
        self._apply(version, canary=previous is not None and previous != version)
        self._wait_ready(f"rollout of {version}")

    def ask(self, version: str, bodies: list[dict[str, Any]]) -> list[Answer]:
        """The smoke requests in one protocol call to the new revision (the canary's own URL)."""
        isvc = self._get() or {}
        canary = isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent") is not None
        base = self._url(isvc, "latest" if canary else None).rstrip("/")
        path = f"/v1/models/{MODEL_NAME}:predict" if self.k.protocol == "v1" else f"/v2/models/{MODEL_NAME}/infer"
        token = os.environ.get(TOKEN_ENV)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        body = call_body(self.k.protocol, bodies, call_id=f"smoke-{version}")
        r = self.http.post(base + path, data=json.dumps(body), headers=headers, timeout=self.cfg.response_timeout_s)
        if r.status_code != 200:
            return [Answer(r.status_code, r.text[:300])] * len(bodies)
        return [Answer(200, json.dumps(a)) for a in answers_of(self.k.protocol, r.json())]

    def promote(self, version: str) -> None:
        self._apply(version, canary=False)
        self._wait_ready(f"promotion of {version}")

    def withdraw(self, version: str, previous: str | None) -> None:
        """Back to ``previous`` (all traffic, no canary); with no previous version, delete the service."""
        if previous is None:
            self.api.delete_namespaced_custom_object(GROUP, API_VERSION, self.k.namespace, ISVC_PLURAL, self.k.name)
            return
        self._apply(previous, canary=False)
        self._wait_ready(f"rollback to {previous}")

    def restore(self, version: str) -> None:
        """Rollback: ``version`` (already published) takes all the traffic again."""
        self._apply(version, canary=False)
        self._wait_ready(f"rollback to {version}")


if __name__ == "__main__":
    for path in render_examples():
        print(path)
