#!/bin/sh
# Start TorchServe in the foreground with the archives in the model store (mounted or fetched by an
# init container). The model API stays off in the cluster: versions change by rolling the Deployment.
set -eu
exec torchserve --start --foreground --ts-config /home/model-server/config.properties \
    --model-store /home/model-server/model-store --ncs
