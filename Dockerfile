# The image of every Ray node in ray_cluster/kuberay/: Ray's Python 3.11 CPU image (the Ray
# of constraints.txt) with this project installed under constraints.txt.
#
#   make image        # docker build -t federated-diabetes/pipeline:<pyproject version> .
#
# KubeRay replaces the container's command with its own `ray start ...` (in a login bash),
# and the RayJob's entrypoint runs `pipeline retrain ...` on the head: both only need `ray`
# and `pipeline` on PATH, so the image has no entrypoint of its own and runs the command it
# is given. Outside Kubernetes:
#   docker run --rm federated-diabetes/pipeline:0.1.0 pipeline <command> ...
FROM rayproject/ray:2.60.0-py311-cpu

# Offline by design, as in the Makefile: no telemetry from Great Expectations, MLflow or Ray.
ENV GX_ANALYTICS_ENABLED=false \
    MLFLOW_ENABLE_TELEMETRY=false \
    DO_NOT_TRACK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# The paths the manifests mount: the federation config at /config (read-only), the state
# volume at /state (privacy ledger, retraining lock, audit log) and each hospital's extract
# at /data/<site> (read-only). A site writes its audit log and identity key beside its
# extract, so /data itself belongs to the user, as do /state and the source tree.
USER root
RUN mkdir -p /opt/pipeline /config /state /data \
    && chown 1000:100 /opt/pipeline /state /data
# Ray's own user (ray, uid 1000, group users 100): numeric, so Kubernetes can check
# runAsNonRoot, and the same uid as the manifests' securityContext.
USER 1000:100
WORKDIR /opt/pipeline

COPY --chown=1000:100 pyproject.toml constraints.txt README.md ./
COPY --chown=1000:100 schemas ./schemas
COPY --chown=1000:100 docs ./docs
COPY --chown=1000:100 pipeline ./pipeline
# Editable, as `make install` does: the default contract (schemas/) and the demo's example
# patients (docs/) are read beside the package, which a plain install would leave behind.
RUN pip install -c constraints.txt -e . \
    && pipeline --help > /dev/null

ENTRYPOINT []
CMD ["pipeline", "--help"]
