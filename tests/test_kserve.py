"""Serving on KServe: the protocols through TorchServe's own envelopes, the published layout, and
``hap deploy``'s cluster mode (canary → smoke → promote or roll back).

There is no cluster here. The manifests are checked with the Kubernetes client's models, and the
deploy runs against a stand-in for KServe's API: each spec change becomes a revision that copies the
storage URI (fsspec) the way the storage initializer does and runs the ServingRuntime's container
command — a real ``torchserve`` reading the published ``config.properties`` with
``TS_SERVICE_ENVELOPE`` from the protocol — on this machine. Only the listeners are moved to free
loopback ports (a pod has its own network; this machine does not) and the image's paths mapped.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import yaml
from serving_support import DS, day_workspace, make_versions, same_answer

from hap.config import HapConfig, KServeConfig, ServingConfig
from hap.workspace import Workspace
from hap_runtime.config import RoutingConfig
from hap_runtime.kserve import answers_of, call_body
from registry.store import Registry
from serving.archive import build_archive, mar_name
from serving.deploy import columnar, deploy, rollback, sample_request
from serving.errors import DeployFailed
from serving.kserve import (
    CONFIG_PATH,
    ENVELOPES,
    INFRA,
    MGMT_PORT,
    MOUNT,
    PROBE,
    STORE_DIR,
    KServeTarget,
    container_properties,
    inference_service,
    render_examples,
    serving_runtime,
    version_uri,
)
from serving.server import LocalTorchServe, Ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _deserialize(doc: dict, kind: str):
    from kubernetes.client import ApiClient

    return ApiClient()._ApiClient__deserialize(doc, kind)


def _props(text: str) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in text.splitlines() if "=" in ln and not ln.startswith("#"))


class _Revision:
    """One predictor revision: the storage URI copied to its ``/mnt/models`` and the runtime's
    container command running there, with the envelope the published config names."""

    def __init__(self, name: str, isvc: dict, runtime: dict, root: Path, base_port: int, corrupt: set[str],
                 broken: set[str]) -> None:  # fmt: skip
        import fsspec

        model = isvc["spec"]["predictor"]["model"]
        self.name, self.storage_uri, self.protocol = name, model["storageUri"], model["protocolVersion"]
        self.dir = root / name
        mnt = self.dir / "mnt-models"
        fs, src = fsspec.core.url_to_fs(self.storage_uri)
        fs.get(f"{src}/", str(mnt), recursive=True)  # what KServe's storage initializer does
        if self.storage_uri in corrupt:
            (mar,) = (mnt / STORE_DIR).glob("*.mar")
            _tamper(mar)
        if self.storage_uri in broken:  # an archive cut short in transit: TorchServe cannot load it
            (mar,) = (mnt / STORE_DIR).glob("*.mar")
            mar.write_bytes(mar.read_bytes()[:4096])
        props = _props((mnt / CONFIG_PATH).read_text())
        self.envelope = props["service_envelope"]
        self.url, self.mgmt_url = f"http://127.0.0.1:{base_port}", f"http://127.0.0.1:{base_port + 1}"
        props.update(  # a pod's own network and the image's paths, on this machine
            inference_address=self.url,
            management_address=self.mgmt_url,
            metrics_address=f"http://127.0.0.1:{base_port + 2}",
            grpc_inference_port=str(base_port + 3),
            grpc_management_port=str(base_port + 4),
            model_store=props["model_store"].replace(MOUNT, str(mnt)),
            metrics_config=str(REPO / "serving" / "metrics.yaml"),
        )
        (mnt / CONFIG_PATH).write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        container = _deserialize(runtime["spec"]["containers"][0], "V1Container")
        self.probe = [self._local(a, base_port) for a in container.startup_probe._exec.command]
        self.probe[0] = os.sys.executable
        startup = container.startup_probe
        self.startup_s = startup.period_seconds * startup.failure_threshold
        self.startup_deadline = time.monotonic() + self.startup_s
        self.failed = self.started = False
        self.why = ""  # why Knative reports the revision failed
        env = {e.name: self._local(e.value, base_port) for e in container.env}
        args = [self._local(a, base_port) for a in container.args]
        tmp = self.dir / "tmp"
        tmp.mkdir(parents=True)
        bin_dir = str(Path(os.sys.executable).parent)
        self.log = (self.dir / "torchserve.log").open("w")
        self.proc = subprocess.Popen(
            [str(Path(bin_dir) / container.command[0]), *args],
            cwd=self.dir,
            env={**os.environ, **env, "TMPDIR": str(tmp), "TEMP": str(tmp), "LOG_LOCATION": str(self.dir / "logs"),
                 "METRICS_LOCATION": str(self.dir / "logs"), "PATH": bin_dir + os.pathsep + os.environ["PATH"]},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def _local(self, value: str, base_port: int) -> str:
        """The image's paths and the pod's loopback ports, as they are on this machine."""
        return (
            value.replace(MOUNT, str(self.dir / "mnt-models"))
            .replace("/home/model-server/log4j2.xml", str(REPO / "serving" / "log4j2.xml"))
            .replace("/home/model-server/run", str(self.dir))
            .replace(PROBE, str(REPO / "infra" / "torchserve" / "probe.py"))
            .replace(f"127.0.0.1:{MGMT_PORT}", f"127.0.0.1:{base_port + 1}")
        )

    def ready(self) -> bool:
        """Knative's view of the revision. Until it has started: the runtime's probes — the startup
        probe's command (the kubelet; failing past its threshold, the container is killed and the
        revision failed) and /ping (queue-proxy) — answered by this container's own listener (a pod has
        a network of its own; here another process could hold the port). Once started it stays Ready
        while its container runs: a slow probe on a busy node does not move Knative's traffic."""
        if self.failed:
            return False
        if self.proc.poll() is not None:  # the container exited
            self._fail("the container exited")
            return False
        if self.started:
            return True
        probe = subprocess.run(self.probe, capture_output=True)
        if probe.returncode != 0 or not self._listens():
            if time.monotonic() > self.startup_deadline:
                self._fail(f"the startup probe still failed after {self.startup_s} s: the container was killed")
            return False
        try:
            self.started = requests.get(f"{self.url}/ping", timeout=10).status_code == 200
        except requests.RequestException:
            self.started = False
        if not self.started and time.monotonic() > self.startup_deadline:
            self._fail(f"/ping still failed after {self.startup_s} s: the container was killed")
        return self.started

    def _fail(self, why: str) -> None:
        self.failed, self.why = True, why
        self.stop()

    def _listens(self) -> bool:
        """Whether this container's own processes listen on its inference and management ports."""
        import psutil

        ports = {int(self.url.rsplit(":", 1)[1]), int(self.mgmt_url.rsplit(":", 1)[1])}
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return False
        listening = set()
        for proc in procs:
            try:
                listening |= {c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                continue
        return ports <= listening

    def crash(self) -> None:
        """The container dies (a fault the tests inject): Knative then reports the revision failed."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        if not self.log.closed:
            self.log.close()


def _api_error(status: int) -> Exception:
    return type("ApiException", (Exception,), {"status": status})()


class _KServeStandIn:
    """KServe's API for one InferenceService (get, create, replace, delete) with Knative's revisions:
    every change of the predictor's model starts a new revision; without ``canaryTrafficPercent``
    the latest Ready revision takes all the traffic (and becomes the rolled-out one), with it the
    latest revision gets that share once Ready and the rolled-out one the rest. Revisions left
    without traffic are scaled away. ``history`` records every traffic split."""

    def __init__(self, root: Path, runtime: dict, free_port_block) -> None:
        self.root, self.runtime, self.ports = root, runtime, free_port_block
        self.obj: dict | None = None
        self.revisions: dict[str, _Revision] = {}
        self.order: list[str] = []  # revision names, oldest first
        self.rolled_out: str | None = None
        self.created = 0
        self.calls: list[str] = []  # spec changes: "create uri canary", "replace uri canary"
        self.history: list[dict[str, int]] = []
        self.corrupt: set[str] = set()  # storage URIs whose archive arrives with other weights
        self.broken: set[str] = set()  # storage URIs whose archive arrives cut short
        self.crash_on_promote: set[str] = set()  # storage URIs whose pod dies when its canary share is dropped

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.obj is None:
            raise _api_error(404)
        self._reconcile()
        return copy.deepcopy(self.obj)

    def _describe(self, spec: dict) -> str:
        predictor = spec["predictor"]
        return f"{predictor['model']['storageUri'].rsplit('/', 1)[-1]} canary={predictor.get('canaryTrafficPercent')}"

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("serving.kserve.io", "v1beta1", "inferenceservices")
        if self.obj is not None:
            raise _api_error(409)
        self.calls.append(f"create {self._describe(body['spec'])}")
        self.obj = copy.deepcopy(body)
        self.obj["metadata"].update(generation=1, resourceVersion="1")
        self._new_revision()

    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        if self.obj is None:
            raise _api_error(404)
        if body["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise _api_error(409)
        old = self.obj
        self.obj = copy.deepcopy(body)
        meta = self.obj["metadata"]
        meta["generation"] = old["metadata"]["generation"] + (old["spec"] != body["spec"])
        meta["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
        self.obj["status"] = old.get("status", {})
        if old["spec"] != body["spec"]:
            self.calls.append(f"replace {self._describe(body['spec'])}")
            if old["spec"]["predictor"]["model"] != body["spec"]["predictor"]["model"]:
                self._new_revision()
            elif body["spec"]["predictor"].get("canaryTrafficPercent") is None:
                latest = self.revisions.get(self.order[-1])
                if latest is not None and latest.storage_uri in self.crash_on_promote:
                    latest.crash()

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("delete")
        self.obj = None
        self.close()
        self.revisions, self.order, self.rolled_out = {}, [], None

    def _new_revision(self) -> None:
        self.created += 1
        name = f"{self.obj['metadata']['name']}-predictor-{self.created:05d}"
        self.revisions[name] = _Revision(
            name, self.obj, self.runtime, self.root, self.ports(5), self.corrupt, self.broken
        )
        self.order.append(name)

    def _reconcile(self) -> None:
        """Status and traffic as KServe and Knative would make them now."""
        meta, predictor = self.obj["metadata"], self.obj["spec"]["predictor"]
        created = self.order[-1]
        ready = [n for n in self.order if n in self.revisions and self.revisions[n].ready()]
        latest_ready = ready[-1] if ready else None
        canary = predictor.get("canaryTrafficPercent")
        if canary is None or self.rolled_out is None:
            traffic = {latest_ready: 100} if latest_ready else {}
            self.rolled_out = latest_ready or self.rolled_out
        elif latest_ready == created and created != self.rolled_out:
            traffic = {self.rolled_out: 100 - canary, created: canary}
        else:
            traffic = {self.rolled_out: 100}
        if not self.history or self.history[-1] != traffic:
            self.history.append(dict(traffic))
        for name in [n for n in self.revisions if n != created and not traffic.get(n)]:
            self.revisions.pop(name).stop()  # scaled to zero
        tags = {self.rolled_out: "prev", created: "latest"}
        targets = [{"tag": tags.get(n, ""), "revisionName": n, "percent": p, "url": self.revisions[n].url}
                   for n, p in traffic.items()]  # fmt: skip
        if created not in traffic and created in self.revisions:
            targets.append({"tag": "latest", "revisionName": created, "percent": 0, "url": self.revisions[created].url})
        rev = self.revisions.get(created)
        failed = rev is not None and (rev.failed or rev.proc.poll() is not None)
        ok = latest_ready == created
        self.obj["status"] = {
            "observedGeneration": meta["generation"],
            "url": f"http://{meta['name']}.{meta['namespace']}.example.com",
            "conditions": [{"type": "Ready", "status": "True" if ok else "False",
                            **({"reason": "RevisionFailed", "message": rev.why or "the container exited"} if failed else {})}],
            "components": {"predictor": {
                "url": self.revisions[self.rolled_out].url if self.rolled_out in self.revisions else None,
                "traffic": targets, "latestCreatedRevision": created, "latestReadyRevision": latest_ready,
                "latestRolledoutRevision": self.rolled_out}},
        }  # fmt: skip

    def serving_revision(self) -> _Revision | None:
        """The revision holding all the traffic now (None while none does)."""
        if self.obj is None:
            return None
        self._reconcile()
        full = [n for n, p in self.history[-1].items() if p == 100]
        return self.revisions.get(full[0]) if full else None

    def close(self) -> None:
        for rev in self.revisions.values():
            rev.stop()


# ---- the committed manifests and the published layout ----


def test_committed_manifests_are_fresh(tmp_path):
    for path in render_examples(tmp_path):
        assert path.read_text() == (INFRA / path.name).read_text(), "run: python -m serving.kserve"


PREDICTOR_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "model",
    "serviceAccountName",
    "nodeSelector",
    "tolerations",
}
MODEL_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "resources", "env", "args"}
"""Field names of KServe v1beta1's PredictorSpec and ModelSpec that we may set (its Go types)."""


def test_manifests_are_valid_kubernetes_objects_with_the_ports_probes_and_auth_kserve_needs():
    cfg = ServingConfig()
    runtime = yaml.safe_load((INFRA / "servingruntime.yaml").read_text())
    (container,) = [_deserialize(c, "V1Container") for c in runtime["spec"]["containers"]]
    assert runtime["spec"]["protocolVersions"] == ["v1", "v2"]
    assert [p.container_port for p in container.ports] == [8080]  # the port KServe routes to
    assert container.readiness_probe.http_get.path == "/ping" and container.readiness_probe.http_get.port == 8080
    # startup and liveness (run by the kubelet) ask whether the default version has a READY worker
    for probe in (container.startup_probe, container.liveness_probe):
        assert probe._exec.command[:2] == ["python", PROBE] and f"127.0.0.1:{MGMT_PORT}" in probe._exec.command[2]
    assert PROBE in (REPO / "infra" / "torchserve" / "Dockerfile").read_text()  # the probe script is in the image
    assert container.security_context.run_as_non_root and container.security_context.capabilities.drop == ["ALL"]
    assert "TS_SERVICE_ENVELOPE" not in {e.name for e in container.env}  # the published config names it
    assert (
        f"--ts-config={MOUNT}/{CONFIG_PATH}" in container.args
        and f"--model-store={MOUNT}/{STORE_DIR}" in container.args
    )
    isvc = yaml.safe_load((INFRA / "inferenceservice.yaml").read_text())
    meta = _deserialize(isvc["metadata"], "V1ObjectMeta")
    assert meta.annotations["serving.kserve.io/enable-tag-routing"] == "true"
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR_FIELDS and set(predictor["model"]) <= MODEL_FIELDS
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    resources = _deserialize(predictor["model"]["resources"], "V1ResourceRequirements")
    assert resources.requests == resources.limits  # a guaranteed CPU share
    assert inference_service(cfg, "1", canary=10)["spec"]["predictor"]["canaryTrafficPercent"] == 10
    policy = _deserialize(yaml.safe_load((INFRA / "networkpolicy.yaml").read_text()), "V1NetworkPolicy")
    assert policy.spec.policy_types == ["Ingress"] and policy.spec.pod_selector.match_labels == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]
    }
    sources = {
        p.namespace_selector.match_labels["kubernetes.io/metadata.name"] for r in policy.spec.ingress for p in r._from
    }
    assert sources == {"knative-serving", "istio-system", "monitoring"}
    # the JWT is checked at the predictor's own sidecar, whichever gateway a request came through
    authn, authz = yaml.safe_load_all((INFRA / "auth.yaml").read_text())
    assert authn["kind"] == "RequestAuthentication" and authz["kind"] == "AuthorizationPolicy"
    for doc in (authn, authz):
        _deserialize(doc["metadata"], "V1ObjectMeta")
        assert doc["spec"]["selector"] == {"matchLabels": policy.spec.pod_selector.match_labels}
    assert authn["spec"]["jwtRules"][0]["issuer"] == cfg.kserve.jwt_issuer
    (rule,) = authz["spec"]["rules"]
    assert authz["spec"]["action"] == "DENY" and rule["from"] == [{"source": {"notRequestPrincipals": ["*"]}}]
    assert {"/v1/*", "/v2/*", "/predictions/*", "/explanations/*"} == set(rule["to"][0]["operation"]["paths"])
    props = _props((INFRA / "config.properties").read_text())
    assert props["inference_address"] == "http://0.0.0.0:8080" and props["management_address"].startswith(
        "http://127.0.0.1:"
    )
    assert props["disable_token_authorization"] == "true" and props["service_envelope"] == ENVELOPES["v1"]
    assert "enable_model_api" not in props and "enable_envvars_config" not in props
    snapshot = json.loads(props["model_snapshot"])
    (entry,) = snapshot["models"]["hap"].values()
    assert entry["defaultVersion"] is True and entry["marName"] == mar_name("20261122.1")
    assert entry["batchSize"] == cfg.batch_size and entry["minWorkers"] == cfg.workers


def test_local_mode_keeps_loopback_and_token_auth(tmp_path):
    server = LocalTorchServe(tmp_path, Ports(20001, 20002, 20003, 20004, 20005))
    server.write_config()
    props = _props(server.config_file.read_text())
    assert "disable_token_authorization" not in props and "enable_envvars_config" not in props
    assert all("127.0.0.1" in props[k] for k in ("inference_address", "management_address", "metrics_address"))
    shared = {k: v for k, v in container_properties(ServingConfig(), "1").items() if k in props}
    assert {k: props[k] for k in shared if k.endswith(("_timeout", "_size", "_mode"))} == {
        k: v for k, v in shared.items() if k.endswith(("_timeout", "_size", "_mode"))
    }


# ---- the deploy through the stand-in, and the protocols ----


@pytest.fixture(scope="module")
def ws(tmp_path_factory, small_day):
    return day_workspace(tmp_path_factory.mktemp("kserve"), small_day)


@pytest.fixture(scope="module")
def versions(ws, small_day) -> list[str]:
    return make_versions(ws, small_day, 3)


@pytest.fixture(scope="module")
def cluster(ws, tmp_path_factory, free_port_block):
    # a test cluster's timeouts, generous for a busy machine (a pod's JVM and torch worker took over 12 s
    # to be READY with 7 processes on 2 cores): a pod without a READY worker after 120 s is failed (the
    # never-Ready canary waits that long: a deadline is the only signal Knative has), a rollout after 360 s
    kcfg = KServeConfig(storage_uri=f"file://{tmp_path_factory.mktemp('bucket')}/kserve", ready_timeout_s=360,
                        startup_timeout_s=120,
                        poll_s=0.5)  # fmt: skip
    cfg = HapConfig(serving=ServingConfig(mode="kserve", kserve=kcfg, workers=1))
    standin = _KServeStandIn(tmp_path_factory.mktemp("pods"), serving_runtime(cfg.serving), free_port_block)
    yield cfg, standin
    standin.close()


@pytest.fixture(scope="module")
def plain(ws, versions, free_port_block):
    """The plain endpoint: the local TorchServe (token auth on) serving the first version."""
    base = free_port_block(5)
    server = LocalTorchServe(ws.root / "plain", Ports(base, base + 1, base + 2, base + 3, base + 4))
    server.start()
    one_worker = HapConfig(serving=ServingConfig(workers=1))
    build_archive(Registry(ws).version_dir(versions[0]), versions[0], one_worker, server.model_store)
    server.register(mar_name(versions[0]))
    yield server
    server.stop()


def _bodies(ws) -> list[dict]:
    request = sample_request(ws.data, DS, n_candidates=300)
    return [request, columnar({**request, "k": 20, "m": 60}), {**request, "k": 0, "m": 7}]


def _spec_changes(standin: _KServeStandIn) -> list[str]:
    calls, standin.calls[:] = list(standin.calls), []
    return calls


def test_deploy_rolls_out_a_canary_smokes_it_then_promotes_or_rolls_back(ws, versions, cluster):
    cfg, standin = cluster
    target = KServeTarget(cfg.serving, api=standin)
    registry = Registry(ws)
    v0, v1, bad = versions

    first = deploy(ws, v0, cfg, target, smoke_ds=DS, reason="first")
    assert first["previous"] is None and first["mode"] == "kserve"
    assert _spec_changes(standin) == [f"create {v0} canary=None"]
    assert target.serving() == v0 and registry.production()["version"] == v0
    published = Path(cfg.serving.kserve.storage_uri.removeprefix("file://")) / v0
    assert (published / STORE_DIR / mar_name(v0)).exists() and (published / CONFIG_PATH).exists()

    # the second version as a canary: 10% of the traffic, smoked at its own URL, then promoted
    standin.history.clear()
    second = deploy(ws, v1, cfg, target, smoke_ds=DS, reason="daily")
    assert _spec_changes(standin) == [f"replace {v1} canary=10", f"replace {v1} canary=None"]
    old, new = standin.order[-2:]
    assert {old: 90, new: 10} in standin.history and standin.history[-1] == {new: 100}
    assert second["previous"] == v0 and target.serving() == v1 and list(standin.revisions) == [new]

    # a version whose archive reaches the pods with other weights: the canary's scores differ from the
    # offline scorer's, its smoke fails, its share goes to 0 at once, a revision of the second version
    # comes up without traffic and only then takes it all; the failed canary never had more than 10%
    standin.corrupt.add(version_uri(cfg.serving.kserve, bad))
    standin.history.clear()
    with pytest.raises(DeployFailed, match=f"still serving {v1}.*scores differ"):
        deploy(ws, bad, cfg, target, smoke_ds=DS, reason="daily")
    assert _spec_changes(standin) == [f"replace {bad} canary=10", f"replace {bad} canary=0",
                                      f"replace {v1} canary=0", f"replace {v1} canary=None"]  # fmt: skip
    canary_rev, back = standin.order[-2:]
    assert max(t.get(canary_rev, 0) for t in standin.history) == 10
    assert all(sum(t.values()) == 100 for t in standin.history) and standin.history[-1] == {back: 100}
    assert target.serving() == v1 and registry.production()["version"] == v1
    assert standin.obj["metadata"]["labels"]["hap.version"] == v1

    # a canary whose pods never become Ready (its archive arrives cut short): the rollout fails as soon
    # as KServe reports the revision failed, and the withdrawal works without it ever being Ready
    standin.broken.add(version_uri(cfg.serving.kserve, bad))
    standin.corrupt.clear()
    standin.history.clear()
    with pytest.raises(DeployFailed, match=f"still serving {v1}.*failed"):
        deploy(ws, bad, cfg, target, smoke_ds=DS, reason="daily")
    assert _spec_changes(standin)[1:] == [f"replace {bad} canary=0", f"replace {v1} canary=0",
                                          f"replace {v1} canary=None"]  # fmt: skip
    broken_rev, back = standin.order[-2:]
    assert all(not t.get(broken_rev) for t in standin.history) and standin.history[-1] == {back: 100}
    assert target.serving() == v1 and registry.production()["version"] == v1

    # hap's rollback: the previous production version takes all the traffic again
    pointer = rollback(ws, target, "drill")
    assert pointer["version"] == v0 and target.serving() == v0
    answer = requests.post(
        standin.serving_revision().url + "/v1/models/hap:predict",
        json=call_body("v1", [sample_request(ws.data, DS, n_candidates=50)]),
        timeout=60,
    )
    assert answer.status_code == 200 and answer.json()["predictions"][0]["model_version"] == v0


def test_a_leftover_canary_is_refused_and_a_rollback_never_gives_it_all_the_traffic(ws, versions, cluster):
    cfg, standin = cluster
    target = KServeTarget(cfg.serving, api=standin)
    if (_serving_uri_and_protocol(standin) or (None,))[0] != version_uri(cfg.serving.kserve, versions[0]):
        standin.delete_namespaced_custom_object("serving.kserve.io", "v1beta1", "hap", "inferenceservices", "x")
        deploy(ws, versions[0], cfg, target, smoke_ds=DS, reason="setup")
    deploy(ws, versions[1], cfg, target, smoke_ds=DS, reason="setup")
    # a deploy that crashed mid-canary: the third version holds 10%
    standin.corrupt.clear()
    standin.broken.clear()
    store = ws.serving / "model-store"
    if not (store / mar_name(versions[2])).exists():
        build_archive(Registry(ws).version_dir(versions[2]), versions[2], cfg, store)
    target.stage(versions[2], store / mar_name(versions[2]), versions[1])
    assert standin.obj["spec"]["predictor"]["canaryTrafficPercent"] == 10
    canary_rev = standin.order[-1]
    with pytest.raises(DeployFailed, match="canary of .* is in progress"):
        deploy(ws, versions[0], cfg, target, smoke_ds=DS, reason="after a crash")
    standin.history.clear()
    pointer = rollback(ws, target, "the crashed canary")  # back to the first version
    assert pointer["version"] == versions[0] and target.serving() == versions[0]
    assert max(t.get(canary_rev, 0) for t in standin.history) <= 10
    assert all(sum(t.values()) == 100 for t in standin.history)


def test_a_rollback_whose_revision_dies_as_it_takes_the_traffic_fails_and_never_reports_the_old_one(
    ws, versions, cluster
):
    """The rolled-back version's revision comes up at 0%, then dies when it is given all the traffic:
    Knative keeps the traffic on the latest Ready revision — the version being rolled back from. The
    rollback must fail and say so; reporting it done would record the spec's version as production
    while the refused one serves (the 0.01 that once reached the protocol tests)."""
    cfg, standin = cluster
    target = KServeTarget(cfg.serving, api=standin)
    v0, v1, v2 = versions
    if (_serving_uri_and_protocol(standin) or (None,))[0] != version_uri(cfg.serving.kserve, v0):
        standin.delete_namespaced_custom_object("serving.kserve.io", "v1beta1", "hap", "inferenceservices", "x")
        deploy(ws, v0, cfg, target, smoke_ds=DS, reason="setup")
    deploy(ws, v1, cfg, target, smoke_ds=DS, reason="setup")
    store = ws.serving / "model-store"
    if not (store / mar_name(v2)).exists():
        build_archive(Registry(ws).version_dir(v2), v2, cfg, store)
    target.stage(v2, store / mar_name(v2), v1)  # a crashed deploy's canary
    standin.crash_on_promote.add(version_uri(cfg.serving.kserve, v0))
    try:
        with pytest.raises(DeployFailed, match=f"rollback to {v0}: revision .* failed"):
            rollback(ws, target, "the crashed canary")
    finally:
        standin.crash_on_promote.clear()
    assert Registry(ws).production()["version"] == v1  # the registry records what serves
    assert standin.serving_revision().storage_uri == version_uri(cfg.serving.kserve, v1)
    # the spec names v0 while v1's revision serves: the next deploy or rollback refuses, saying so
    with pytest.raises(DeployFailed, match=f"names {v0}, but its revision .* is not Ready with all the traffic"):
        target.serving()


def test_the_probe_reports_a_default_version_with_a_ready_worker(plain, cluster, ws, versions):
    """``hap-probe.py`` against the local server (token auth on: it reads the key file) and a KServe
    revision (auth off, no key file); a model without a default version is not ready."""
    cfg, standin = cluster
    if standin.obj is None:
        deploy(ws, versions[0], cfg, KServeTarget(cfg.serving, api=standin), smoke_ds=DS, reason="setup")
    probe = [os.sys.executable, str(REPO / "infra" / "torchserve" / "probe.py")]
    local = [f"--management-url={plain.management_url}", f"--key-file={plain.home / 'key_file.json'}"]
    ok = subprocess.run([*probe, *local], capture_output=True, text=True)
    assert ok.returncode == 0 and "1 READY worker" in ok.stdout, ok.stdout + ok.stderr
    missing = subprocess.run([*probe, *local, "--model=nope"], capture_output=True, text=True)
    assert missing.returncode == 1 and "no default version" in missing.stdout
    rev = standin.serving_revision()
    pod = subprocess.run([*probe, f"--management-url={rev.mgmt_url}", f"--key-file={rev.dir / 'absent.json'}"],
                         capture_output=True, text=True)  # fmt: skip
    assert pod.returncode == 0 and "READY worker" in pod.stdout, pod.stdout + pod.stderr


def _tamper(mar: Path) -> None:
    """Shift the expressive head's bias inside the archive: the same ranking, other scores."""
    import io
    import zipfile

    import torch

    with zipfile.ZipFile(mar) as z:
        files = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in files if n.endswith("expressive/weights.pt"))
    state = torch.load(io.BytesIO(files[name]), weights_only=True)
    state["head.bias"] = state["head.bias"] + 1.0
    buf = io.BytesIO()
    torch.save(state, buf)
    files[name] = buf.getvalue()
    with zipfile.ZipFile(mar, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)


def _serving_uri_and_protocol(standin: _KServeStandIn) -> tuple[str, str] | None:
    """The storage URI and protocol of the revision holding all the traffic, with the spec naming the
    same and no canary; None otherwise."""
    if standin.obj is None or standin.obj["spec"]["predictor"].get("canaryTrafficPercent") is not None:
        return None
    rev = standin.serving_revision()
    if rev is None or rev.storage_uri != standin.obj["spec"]["predictor"]["model"]["storageUri"]:
        return None
    return rev.storage_uri, rev.protocol


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_each_protocol_answers_exactly_what_the_plain_endpoint_answers(ws, versions, cluster, plain, protocol,
                                                                       bad_requests):  # fmt: skip
    cfg, standin = cluster
    cfg = replace(cfg, serving=replace(cfg.serving, kserve=replace(cfg.serving.kserve, protocol=protocol)))
    target = KServeTarget(cfg.serving, api=standin)
    uri = version_uri(cfg.serving.kserve, versions[0])
    if _serving_uri_and_protocol(standin) != (uri, protocol):
        standin.delete_namespaced_custom_object("serving.kserve.io", "v1beta1", "hap", "inferenceservices", "x")
        deploy(ws, versions[0], cfg, target, smoke_ds=DS, reason=f"protocol {protocol}")
    rev = standin.serving_revision()
    assert (rev.protocol, rev.envelope, rev.storage_uri) == (protocol, ENVELOPES[protocol], uri)
    path = f"{rev.url}/v1/models/hap:predict" if protocol == "v1" else f"{rev.url}/v2/models/hap/infer"
    bodies = _bodies(ws)
    expected = [plain.predict(b, version=versions[0]).json() for b in bodies]

    # one call carrying every request, and one call per request
    r = requests.post(path, json=call_body(protocol, bodies, call_id="call-7"), timeout=60)
    assert r.status_code == 200, r.text[:300]
    for got, want in zip(answers_of(protocol, r.json()), expected, strict=True):
        assert got["model_version"] == want["model_version"] == versions[0], got["model_version"]
        same_answer(got, want)  # several requests scored in one pass: float summation order differs
        assert {k: v for k, v in got.items() if k != "items"} == {k: v for k, v in want.items() if k != "items"}
    if protocol == "v2":
        out = r.json()
        assert (out["id"], out["model_name"], out["model_version"]) == ("call-7", "hap", versions[0])
        assert out["outputs"][0]["datatype"] == "BYTES" and out["outputs"][0]["shape"] == [len(bodies)]
    for body, want in zip(bodies, expected, strict=True):  # one request per call: exactly the plain answer
        one = requests.post(path, json=call_body(protocol, [body]), timeout=60)
        assert answers_of(protocol, one.json()) == [want]

    # the model_snapshot loaded the version as the default, batching on; concurrent calls are batched by
    # TorchServe and each keeps its own answer (TorchServe's stock envelopes fail such batches with 503)
    (described,) = requests.get(f"{rev.mgmt_url}/models/hap", timeout=10).json()  # no token: auth off in the pod
    # the workers read their queue depth from the pod's management API, without a key: shedding stays on
    assert "load shedding above 64 queued requests" in (rev.dir / "logs" / "model_log.log").read_text()
    assert described["modelVersion"] == versions[0] and described["batchSize"] == cfg.serving.batch_size > 1
    with ThreadPoolExecutor(8) as pool:
        calls = list(pool.map(lambda b: requests.post(path, json=call_body(protocol, [b]), timeout=60), bodies * 8))
    for r, want in zip(calls, expected * 8, strict=True):
        assert r.status_code == 200, r.text[:300]
        same_answer(answers_of(protocol, r.json())[0], want)

    # bad input: a 4xx in KServe's error shape, naming the place inside the call
    where = "instances[1]" if protocol == "v1" else "inputs[0].data[1]"
    for name, bad, field, kind in bad_requests(bodies[0], RoutingConfig()):
        if isinstance(bad, bytes) or (protocol == "v1" and "literal" in name):
            continue  # a problem of the whole body (v1 carries requests as JSON, not strings): checked below
        alone = plain.predict(bad, version=versions[0])  # the plain endpoint's answer to the same request
        r = requests.post(path, json=call_body(protocol, [bodies[0], bad]), timeout=60)
        err, want_field = r.json(), where if field == "body" else f"{where}.{field}"
        assert (r.status_code, err["kind"]) == (alone.status_code, alone.json()["kind"]) == (r.status_code, kind), name
        assert 400 <= r.status_code < 500 and err["field"] == want_field and err["error"] == alone.json()["error"], name
    for raw, field, kind, status in [
        (b"{nope", "body", "malformed_json", 400),
        (b"[1, 2]", "body", "wrong_type", 400),
        (b'{"instances": [], "inputs": []}', None, "unknown_field", 400),
        (json.dumps(call_body(protocol, [bodies[0]] * 17)).encode(), None, "too_many", 400),  # 16 per call
        # 16 requests of 700 candidates: more than one request's 10,000 in one call
        (
            json.dumps(call_body(protocol, [sample_request(ws.data, DS, n_candidates=700)] * 16)).encode(),
            "instances" if protocol == "v1" else "inputs[0].data",
            "too_many",
            413,
        ),
        (json.dumps(call_body(protocol, [bodies[0]])).encode() + b" " * (8 * 2**20), "body", "too_large", 413),
    ]:
        r = requests.post(path, data=raw, headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == status and r.json()["kind"] == kind, (raw[:40], r.text[:200])
        assert field is None or r.json()["field"] == field
    if protocol == "v2":
        tensor = call_body("v2", [bodies[0]])["inputs"][0]
        for change, field, kind in [
            ({"datatype": "FP32"}, "inputs[0].datatype", "wrong_type"),
            ({"name": "x"}, "inputs[0].name", "unknown_field"),
            ({"shape": [2]}, "inputs[0].shape", "length_mismatch"),
            ({"data": [{"user": {}}]}, "inputs[0].data[0]", "wrong_type"),
            ({"data": ["{nope"]}, "inputs[0].data[0]", "malformed_json"),
        ]:
            r = requests.post(path, json={"inputs": [{**tensor, **change}]}, timeout=60)
            assert (r.status_code, r.json()["field"], r.json()["kind"]) == (400, field, kind), change
    # the worker kept serving
    assert requests.post(path, json=call_body(protocol, bodies[:1]), timeout=60).status_code == 200


# ---- the protocol bodies, without a server ----


def test_adopted_envelopes_hand_every_request_of_a_batch_to_the_handler_with_its_protocol():
    from ts.torch_handler.request_envelope.kserve import KServeEnvelope
    from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

    from hap_runtime.kserve import adopt_envelopes

    assert sorted(adopt_envelopes()) == ["kserve:KServeEnvelope", "kservev2:KServev2Envelope"]
    seen = []

    def handle(data, context, protocol):
        seen.append((data, protocol))
        return [f"answer {i}" for i in range(len(data))]

    batch = [{"body": b'{"instances": []}'}, {"body": b"{nope"}]  # the stock envelope reads only the first
    assert KServeEnvelope(handle).handle(batch, None) == ["answer 0", "answer 1"]
    assert KServev2Envelope(handle).handle(batch, None) == ["answer 0", "answer 1"]
    assert seen == [(batch, "v1"), (batch, "v2")]


def test_call_bodies_round_trip_and_bad_calls_name_their_place():
    from hap_runtime.codec import RequestError
    from hap_runtime.kserve import V1, V2, locate, pack, unpack

    reqs = [{"user": {"a": 1}}, {"user": {"b": 2}}]
    assert unpack(V1, call_body(V1, reqs), 64) == reqs
    assert [json.loads(t) for t in unpack(V2, call_body(V2, reqs, "x"), 64)] == reqs
    answers = [{"items": [1]}, {"items": [2]}]
    for protocol in (V1, V2):
        assert answers_of(protocol, json.loads(pack(protocol, answers, "x", "hap", "7"))) == answers
    assert json.loads(pack(V2, answers, "x", "hap", "7"))["id"] == "x"
    for protocol, body, field, kind in [
        (V1, {"instances": reqs * 33}, "instances", "too_many"),
        (V1, {"instances": []}, "instances", "empty"),
        (V1, {"instances": {}}, "instances", "wrong_type"),
        (V1, {}, "instances", "missing_field"),
        (V2, {"inputs": []}, "inputs", "wrong_type"),
        (V2, {"inputs": [{"name": "request", "datatype": "BYTES", "shape": [1]}]}, "inputs[0].data", "missing_field"),
        (V2, {**call_body(V2, reqs), "id": 5}, "id", "wrong_type"),
        (V2, {**call_body(V2, reqs), "outputs": [{"name": "scores"}]}, "outputs[0].name", "unknown_field"),
    ]:
        with pytest.raises(RequestError) as err:
            unpack(protocol, body, 64)
        assert (err.value.field, err.value.kind) == (field, kind), body
    inner = RequestError("candidates[3].item_id", "bad", "wrong_type")
    assert locate(V1, 2, inner).field == "instances[2].candidates[3].item_id"
    assert locate(V2, 0, RequestError("body", "bad", "malformed_json")).field == "inputs[0].data[0]"


def test_kserve_mode_without_cluster_credentials_fails_clearly(tmp_path, monkeypatch):
    from workflow import flow

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = HapConfig(serving=ServingConfig(mode="kserve"))
    with pytest.raises(DeployFailed, match="no Kubernetes credentials"):
        flow.deploy("2026-11-20", "20261120.1", Workspace(tmp_path / "ws"), cfg)
    with pytest.raises(DeployFailed, match="no Kubernetes credentials"):
        flow.rollback("drill", Workspace(tmp_path / "ws"), cfg)
