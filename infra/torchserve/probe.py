"""Kubernetes exec probe: TorchServe's /ping needs the inference token, which TorchServe writes to
key_file.json in its working directory at start; read it there and ping with it."""

import json
import sys
import urllib.request

key = json.load(open("/home/model-server/run/key_file.json"))["inference"]["key"]
req = urllib.request.Request("http://127.0.0.1:8080/ping", headers={"Authorization": f"Bearer {key}"})
with urllib.request.urlopen(req, timeout=2) as resp:
    sys.exit(0 if resp.status == 200 and json.load(resp).get("status") == "Healthy" else 1)
