"""Serving on KServe: the published layout, the ServingRuntime and InferenceService objects, and the
cluster side of ``hap deploy`` (``serving.mode: kserve``).

- **Layout.** A version is published under ``<storage_uri>/<version>/`` as KServe's TorchServe
  runtime reads it: ``config/config.properties`` (with the ``model_snapshot`` that loads it as the
  default version of ``hap``) and ``model-store/hap-<version>.mar``. KServe's storage initializer
  copies it to ``/mnt/models``.
- **Container.** TorchServe itself answers KServe on port 8080 (``/v1/models/hap:predict`` or
  ``/v2/models/hap/infer``) through the envelope named in the published ``config.properties``
  (``service_envelope``, from ``serving.kserve.protocol``; KServe sets ``TS_SERVICE_ENVELOPE`` only for
  its own runtime), adopted by the archive's handler (``hap_runtime.kserve``); metrics on 8082; the
  management API only on the pod's loopback, with the model API off.
- **Probes.** A startup and a liveness probe run ``hap-probe.py`` (the default version has a READY
  worker, asked of the loopback management API: TorchServe's ``/ping`` stays Healthy while a broken
  handler's workers restart); readiness is ``/ping`` over HTTP, which Knative's queue-proxy runs.
- **Auth in the cluster.** TorchServe's token authorization is off inside the pod: its keys are
  random per process and expire, so nothing in front of several replicas (KServe's router, probes,
  the ingress) could hold a valid key for each. Istio checks a JWT on every request at the
  predictor's own sidecar (``RequestAuthentication`` + ``AuthorizationPolicy``), so the
  cluster-local gateway is no way around it, and a NetworkPolicy admits only Knative, the gateways
  and Prometheus (runbook's threat model). Local mode keeps loopback listeners and token authorization.
- **Deploy.** ``KServeTarget`` is the target ``serving.deploy`` drives: publish, roll out as a
  canary taking ``canary_percent`` of the traffic, smoke the canary through the protocol against the
  offline scorer, then promote it (all traffic to the new revision) or withdraw it (its share to 0
  at once, then back to the previous version's storage URI). A deploy is refused while a canary is
  in progress, and every write carries the ``resourceVersion`` it read.
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
ISVC_PLURAL = "inferenceservices"
MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storage URI's contents
HTTP_PORT, METRICS_PORT, MGMT_PORT = 8080, 8082, 8085
CONFIG_PATH, STORE_DIR = "config/config.properties", "model-store"
ENVELOPES = {"v1": "kserve", "v2": "kservev2"}  # TorchServe's envelope for each protocolVersion
PROBE = "/usr/local/bin/hap-probe.py"  # infra/torchserve/probe.py in the image
TOKEN_ENV = "HAP_KSERVE_TOKEN"
"""Bearer token (a JWT the predictors accept) ``hap`` sends when smoking a canary; from a Secret, never in config."""
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
        "service_envelope": ENVELOPES[cfg.kserve.protocol],  # the InferenceService's protocolVersion
        "disable_token_authorization": "true",  # Istio checks a JWT at the pod (module docstring)
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
    probe = ["python", PROBE, f"--management-url=http://127.0.0.1:{MGMT_PORT}"]
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
            {"name": "HAP_TORCH_THREADS", "value": str(cfg.torch_threads)},
            # the workers read their queue depth here to shed load (hap_runtime.admission); no key file: auth off
            {"name": MGMT_ENV, "value": f"http://127.0.0.1:{MGMT_PORT}"},
            {"name": HOME_ENV, "value": "/home/model-server/run"},
        ],
        "ports": [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        # Knative's queue-proxy runs the readiness probe (HTTP); the kubelet runs startup and liveness
        "readinessProbe": {"httpGet": {"path": "/ping", "port": HTTP_PORT}, "periodSeconds": 5, "failureThreshold": 3},
        "startupProbe": {
            "exec": {"command": probe},
            "periodSeconds": 5,
            "failureThreshold": max(1, k.startup_timeout_s // 5),
            "timeoutSeconds": 5,
        },
        "livenessProbe": {"exec": {"command": probe}, "periodSeconds": 20, "failureThreshold": 6, "timeoutSeconds": 5},
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


def inference_service(cfg: ServingConfig, version: str, canary: int | None = None) -> dict[str, Any]:
    """The InferenceService serving ``version``; with ``canary`` (a percentage) the newest revision
    gets only that share of the traffic, the rest stays on the last rolled-out revision."""
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
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
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
    """Who may reach the predictor pods, whose TorchServe has no token authorization: Knative
    (activator, autoscaler) and Istio's gateways, and Prometheus for metrics; everything else in the
    cluster is refused. The JWT itself is checked at the pod's sidecar (``request_auth``)."""
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


def request_auth(cfg: ServingConfig) -> list[dict[str, Any]]:
    """Istio's JWT check on the predictor pods themselves (their sidecars): every request to the
    prediction paths needs a valid token from ``jwt_issuer``, whichever gateway it came through."""
    k = cfg.kserve
    meta = {"namespace": k.namespace, "labels": {"app.kubernetes.io/part-of": "hap"}}
    selector = {"matchLabels": {"serving.kserve.io/inferenceservice": k.name}}
    paths = ["/v1/*", "/v2/*", "/predictions/*", "/explanations/*"]  # every path that reaches the handler
    return [
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": f"{k.name}-jwt", **meta},
            "spec": {"selector": selector, "jwtRules": [{"issuer": k.jwt_issuer, "jwksUri": k.jwks_uri}]},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": f"{k.name}-require-jwt", **meta},
            "spec": {
                "selector": selector,
                "action": "DENY",  # a request without a valid token's principal, to a prediction path
                "rules": [
                    {"from": [{"source": {"notRequestPrincipals": ["*"]}}], "to": [{"operation": {"paths": paths}}]}
                ],
            },
        },
    ]


def render_examples(dest: Path = INFRA, cfg: ServingConfig | None = None) -> list[Path]:
    """The committed manifests (kept fresh by a test): ``python -m serving.kserve``."""
    import yaml

    cfg = cfg or ServingConfig()
    header = "# Generated by `python -m serving.kserve` from serving/kserve.py: do not edit.\n"
    docs = {
        "servingruntime.yaml": serving_runtime(cfg),
        "inferenceservice.yaml": inference_service(cfg, "20261122.1"),
        "networkpolicy.yaml": network_policy(cfg),
        "auth.yaml": request_auth(cfg),
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
        elif isinstance(doc, list):
            path.write_text(header + yaml.safe_dump_all(doc, sort_keys=False))
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


def _predictor_status(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc.get("status", {}).get("components", {}).get("predictor", {})


def _traffic(isvc: dict[str, Any]) -> dict[str, int]:
    """Revision name → percent of the traffic, as KServe reports it."""
    out: dict[str, int] = {}
    for target in _predictor_status(isvc).get("traffic", []):
        name = target.get("revisionName")
        if name:
            out[name] = out.get(name, 0) + int(target.get("percent") or 0)
    return out


def _current(isvc: dict[str, Any]) -> bool:
    """Whether KServe's status is that of the current spec (its observed generation)."""
    status, meta = isvc.get("status", {}), isvc.get("metadata", {})
    return status.get("observedGeneration", meta.get("generation", 0)) >= meta.get("generation", 0)


def _settled(isvc: dict[str, Any], canary: int | None, new_revision: bool, before: str | None) -> bool:
    """Whether KServe's status shows the change done: a status of the current spec (its observed
    generation), the spec's revision (latestCreatedRevision; not ``before`` if the change started a
    ``new_revision``) and

    - without a canary: that revision Ready and holding all the traffic. Never "the latest Ready
      revision": while the spec's revision is not Ready that is an older one, whose version is not
      the spec's (after a withdrawn canary, the refused version's);
    - with a canary: the rolled-out revision holding the rest, and the spec's revision its share
      (Ready first, if it is new; a canary withdrawn to 0 may never have become Ready).
    """
    status = isvc.get("status", {})
    if not _current(isvc):
        return False
    predictor = _predictor_status(isvc)
    created, traffic = predictor.get("latestCreatedRevision"), _traffic(isvc)
    ready = (
        created is not None
        and created == predictor.get("latestReadyRevision")
        and any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    )
    if created is None or (new_revision and created == before):
        return False
    if canary is None:
        return ready and traffic.get(created) == 100
    if new_revision and not ready:
        return False
    rolled = predictor.get("latestRolledoutRevision")
    return traffic.get(rolled, 0) == 100 - canary and (canary == 0 or traffic.get(created) == canary)


class KServeTarget:
    """The InferenceService as the deploy's target.

    - stage: publish, then point the service at the version; with a version already serving, as a
      canary taking ``canary_percent`` (Knative starts a revision; the rolled-out one keeps the rest);
    - ask: the smoke requests through the protocol, at the new revision's own URL (tag ``latest``);
    - promote: drop ``canaryTrafficPercent``: the new revision takes all the traffic;
    - withdraw: the canary's share to 0 at once (traffic back on the rolled-out revision), then the
      previous version's storage URI as a new revision, and only once that is Ready all traffic to it;
    - restore: a rollback: the given version's storage URI, all traffic once its revision is Ready.

    Each change waits for KServe's status: a new revision created and Ready, and the traffic split
    that was asked for.
    """

    kind = "kserve"

    def __init__(self, cfg: ServingConfig, api: Any = None, http: requests.Session | None = None) -> None:
        self.cfg, self.k = cfg, cfg.kserve
        self.api = api or _custom_objects_api()
        self.http = http or requests.Session()
        self.created_elsewhere = False  # a concurrent first deploy won the create: never delete its object

    # ---- the cluster object ----

    def _get(self) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(GROUP, API_VERSION, self.k.namespace, ISVC_PLURAL, self.k.name)
        except Exception as exc:  # noqa: BLE001 - absent before the first deploy
            if getattr(exc, "status", None) == 404:
                return None
            raise

    def _replace(self, obj: dict[str, Any]) -> None:
        """Replace with the ``resourceVersion`` just read: a change made meanwhile fails with 409."""
        try:
            self.api.replace_namespaced_custom_object(
                GROUP, API_VERSION, self.k.namespace, ISVC_PLURAL, self.k.name, obj
            )
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "status", None) == 409:
                raise DeployFailed("the InferenceService changed while this deploy was writing it; retry") from exc
            raise

    def _apply(self, version: str, canary: int | None) -> bool:
        """Point the service at ``version`` with ``canary``; labels and annotations set by others are
        kept. Returns whether the model changed (Knative then starts a new revision)."""
        desired = inference_service(self.cfg, version, canary)
        current = self._get()
        if current is None:
            try:
                self.api.create_namespaced_custom_object(GROUP, API_VERSION, self.k.namespace, ISVC_PLURAL, desired)
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "status", None) == 409:  # another host created it first: not ours to touch
                    self.created_elsewhere = True
                    raise DeployFailed(f"{self.k.name} was created by another deploy meanwhile") from exc
                raise
            return True
        if current["spec"] == desired["spec"]:
            return False
        model_changed = current["spec"]["predictor"]["model"] != desired["spec"]["predictor"]["model"]
        meta = current["metadata"]
        desired["metadata"] = {
            **meta,
            "labels": {**meta.get("labels", {}), **desired["metadata"]["labels"]},
            "annotations": {**meta.get("annotations", {}), **desired["metadata"]["annotations"]},
        }
        self._replace(desired)
        return model_changed

    def _change(self, what: str, version: str, canary: int | None) -> dict[str, Any]:
        """Apply, then wait until KServe reports it done (``_settled``); a revision of the spec that
        KServe reports failed ends the wait at once."""
        before = _predictor_status(self._get() or {}).get("latestCreatedRevision")
        new_revision = self._apply(version, canary)
        deadline = time.monotonic() + self.k.ready_timeout_s
        while True:
            isvc = self._get() or {}
            status = _predictor_status(isvc)
            created, ready_rev = status.get("latestCreatedRevision"), status.get("latestReadyRevision")
            conditions = {c["type"]: c for c in isvc.get("status", {}).get("conditions", [])}
            failed = [c for c in conditions.values() if c.get("reason") == "RevisionFailed" and c["status"] == "False"]
            spec_revision_failed = created not in (None, before) if new_revision else canary is None
            if failed and spec_revision_failed and _current(isvc):
                raise DeployFailed(f"{what}: revision {created} failed: {failed[0].get('message', '')}")
            if _settled(isvc, canary, new_revision, before):
                return isvc
            if time.monotonic() > deadline:
                ready = conditions.get("Ready", {})
                raise DeployFailed(
                    f"{what}: not done within {self.k.ready_timeout_s}s (created {created}, ready {ready_rev}, "
                    f"traffic {_traffic(isvc)}, Ready={ready.get('status')} {ready.get('message', '')})"
                )
            time.sleep(self.k.poll_s)

    def _url(self, isvc: dict[str, Any], tag: str | None) -> str:
        predictor = _predictor_status(isvc)
        if tag is None:
            return predictor.get("url") or isvc["status"]["url"]
        for target in predictor.get("traffic", []):
            if target.get("tag") == tag and target.get("url"):
                return target["url"]
        raise DeployFailed(f"no URL for the {tag!r} revision (is tag routing on?)")

    # ---- the deploy target ----

    def serving(self) -> str | None:
        """The version the InferenceService serves; refused while a canary is in progress (a
        deploy elsewhere, or one that crashed), since the rolled-out version is then not its spec's."""
        isvc = self._get()
        if isvc is None:
            return None
        predictor = isvc["spec"]["predictor"]
        if predictor.get("canaryTrafficPercent") is not None:
            raise DeployFailed(
                f"a canary of {_version_of(isvc)} is in progress ({predictor['canaryTrafficPercent']}% of the "
                "traffic): finish it first (runbook: Serving on KServe, roll back)"
            )
        if not _settled(isvc, None, False, None):  # e.g. a rollback whose revision failed: an older one serves
            status = _predictor_status(isvc)
            raise DeployFailed(
                f"the InferenceService names {_version_of(isvc)}, but its revision {status.get('latestCreatedRevision')} "
                f"is not Ready with all the traffic (ready: {status.get('latestReadyRevision')}, traffic "
                f"{_traffic(isvc)}): a rollout is in progress or failed (runbook: Serving on KServe, roll back)"
            )
        return _version_of(isvc)

    def stage(self, version: str, mar: Path, previous: str | None) -> None:
        self.created_elsewhere = False
        publish(mar, version, self.cfg)
        canary = self.k.canary_percent if previous is not None and previous != version else None
        self._change(f"rollout of {version}", version, canary)

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
        self._change(f"promotion of {version}", version, None)

    def withdraw(self, version: str, previous: str | None) -> None:
        """Take the failed version out of the traffic without ever giving it more than its canary share."""
        if previous is None and not self.created_elsewhere:  # our first deploy created it: nothing served before
            self.api.delete_namespaced_custom_object(GROUP, API_VERSION, self.k.namespace, ISVC_PLURAL, self.k.name)
            return
        isvc = self._get()
        if isvc is None or (
            _version_of(isvc) == previous and isvc["spec"]["predictor"].get("canaryTrafficPercent") is None
        ):
            return  # it never left the previous version
        if _version_of(isvc) != previous:
            self._change(f"withdrawing {version}", _version_of(isvc), 0)  # its share to 0 at once
            self._change(f"rollback to {previous}", previous, 0)  # a revision of previous, no traffic yet
        self._change(f"rollback to {previous}", previous, None)  # then all traffic to it

    def restore(self, version: str) -> None:
        """Rollback: ``version`` (already published) takes all the traffic once its revision is Ready;
        a leftover canary first loses its share, and never gets all the traffic meanwhile."""
        isvc = self._get()
        if isvc is not None and isvc["spec"]["predictor"].get("canaryTrafficPercent") is not None:
            self._change(f"withdrawing the canary of {_version_of(isvc)}", _version_of(isvc), 0)
            self._change(f"rollback to {version}", version, 0)  # its revision, without traffic yet
        self._change(f"rollback to {version}", version, None)


if __name__ == "__main__":
    for path in render_examples():
        print(path)
