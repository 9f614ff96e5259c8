"""Kubernetes exec probe: the model's default version has a READY worker.

TorchServe's ``/ping`` cannot tell: it stays Healthy while a broken handler's workers fail and
restart (their status is UNLOADING), so a pod would take traffic it cannot answer. This asks the
management API instead (``GET /models/hap``: the default version and its workers). With token
authorization on (``infra/k8s``) it sends the management key from ``key_file.json``, which TorchServe
writes in its working directory at start; with it off (KServe pods, whose management API listens on
the pod's loopback only) there is no key file and no token. Standard library only.
"""

import argparse
import json
import sys
import urllib.request
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--management-url", default="http://127.0.0.1:8081")
parser.add_argument("--key-file", default="/home/model-server/run/key_file.json")
parser.add_argument("--model", default="hap")
args = parser.parse_args()

headers = {}
if Path(args.key_file).exists():
    headers["Authorization"] = "Bearer " + json.loads(Path(args.key_file).read_text())["management"]["key"]
try:
    req = urllib.request.Request(f"{args.management_url}/models/{args.model}", headers=headers)
    with urllib.request.urlopen(req, timeout=3) as resp:
        (default,) = json.load(resp)
except Exception as exc:  # noqa: BLE001 - any failure is "not ready", said on stdout for kubectl describe
    print(f"{args.model}: no default version answered ({exc})")
    sys.exit(1)
ready = [w for w in default.get("workers", []) if w.get("status") == "READY"]
print(f"{args.model} {default.get('modelVersion')}: {len(ready)} READY worker(s)")
sys.exit(0 if ready else 1)
