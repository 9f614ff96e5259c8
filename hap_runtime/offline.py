"""Score requests with an unpacked archive's own code, outside TorchServe.

``python -m hap_runtime.offline MODEL_DIR`` with ``MODEL_DIR`` (the unpacked archive) first on the
import path reads one JSON request per line on stdin and writes one JSON line per request: the
answer, or ``{"error": {...}}`` with the field and kind. The deploy smoke computes its golden
answers this way, so the comparison checks the server, not a second copy of the code.
"""

from __future__ import annotations

import json
import sys

import torch

from hap_runtime.codec import DECODER, RequestError, decode_body
from hap_runtime.handler import runtime_origin
from hap_runtime.scorer import TwoStageScorer


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hap_runtime.offline MODEL_DIR < requests.jsonl", file=sys.stderr)
        return 2
    runtime = runtime_origin(args[0])
    scorer = TwoStageScorer(args[0])
    header = {"version": scorer.version, "runtime": runtime, "decoder": DECODER.name, "torch": torch.__version__}
    print(json.dumps(header), flush=True)
    for line in sys.stdin.buffer:
        try:
            answer = scorer(decode_body(line, scorer.routing.max_body_bytes))
        except RequestError as err:
            answer = {"error": err.to_json()}
        sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
