#!/bin/sh
# Start TorchServe in the foreground with the archives in the model store (mounted or fetched by an
# init container). The model API stays off in the cluster: versions change by rolling the Deployment.
# The key keeper renews TorchServe's API keys before they expire (token_expiration_min), so the
# probes and clients that read key_file.json keep working past the first hour.
set -eu
python -m serving.keys --home /home/model-server/run --management-url http://127.0.0.1:8081 \
    --inference-url http://127.0.0.1:8080 \
    --lifetime-s 3600 --renew-fraction 0.5 >>/home/model-server/run/keykeeper.log 2>&1 &
exec torchserve --start --foreground --ts-config /home/model-server/config.properties \
    --model-store /home/model-server/model-store --ncs --log-config /home/model-server/log4j2.xml
