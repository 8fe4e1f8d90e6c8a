# The three images, one target each; build from the repository root (see docs/images.md):
#   --target operator --build-arg EXTRA=operator   slim Python with kopf and the Kubernetes client, no torch
#   --target trainer  --build-arg EXTRA=trainer    the Ray GPU image at the pinned Ray version, plus torch,
#                                                  DeepSpeed and transformers: every RayJob runs it
#   --target eval     --build-arg EXTRA=eval       slim Python with CUDA torch, transformers and lm-eval
# `make image-operator` (-trainer, -eval) passes both. EXTRA names the pyproject extra the requirement
# stages install; each target installs the project with its own extra by name, so a build whose
# EXTRA differs from its target fails there (the extra's requirements are missing) instead of
# shipping another image's packages.
ARG RAY_VERSION=2.60.0
ARG RAY_IMAGE=rayproject/ray:${RAY_VERSION}-py311-gpu
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# The OCI labels' project version and source (make passes VERSION from pyproject.toml).
ARG VERSION=0.1.0
ARG SOURCE=https://github.com/polypythia/polypythia

# What the image installs, from pyproject.toml and constraints.txt alone: the layers below
# are keyed on those two files and EXTRA, so a change to the project's code rebuilds only the
# small layer that installs the project wheel (tools/images/requirements.py says why).
FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml constraints.txt tools/images/requirements.py ./
ARG EXTRA
RUN case "${EXTRA}" in operator|trainer|eval) ;; \
      *) echo "EXTRA='${EXTRA}': build with --target T --build-arg EXTRA=T, T one of operator, trainer, eval" >&2; exit 2 ;; \
    esac \
    && mkdir /req && python requirements.py pyproject.toml "${EXTRA}" > /req/requirements.txt \
    && cp constraints.txt /req/constraints.txt

# Those requirements, pinned by constraints.txt, as wheels in a wheelhouse that builds
# share (a cache mount: pip's HTTP cache keeps nothing when a proxy strips cache headers).
FROM ${PYTHON_IMAGE} AS download
COPY --from=requirements /req /req
# pip_cert: optional build secret, the CA bundle of a TLS-intercepting proxy (see docs/images.md).
RUN --mount=type=secret,id=pip_cert,mode=0444 \
    --mount=type=cache,id=polypythia-wheelhouse,target=/wheelhouse,sharing=locked \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip wheel --no-cache-dir --progress-bar off -c /req/constraints.txt --wheel-dir /wheelhouse \
       --find-links /wheelhouse \
       -r /req/requirements.txt

# The project wheel alone (--no-deps), the same for every target; only the wheel reaches the images.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY operator/polypythia operator/polypythia
COPY trainer_image/polypythia_trainer trainer_image/polypythia_trainer
COPY eval_image/polypythia_eval eval_image/polypythia_eval
RUN --mount=type=secret,id=pip_cert,mode=0444 \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && PIP_CONSTRAINT=/src/constraints.txt pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && cp constraints.txt /wheels/constraints.txt

# The requirements in a virtual environment, from the wheelhouse only (--no-index): the
# slim images copy it (the trainer installs into the Ray image's own Python instead).
FROM ${PYTHON_IMAGE} AS install
COPY --from=download /req /req
RUN --mount=type=cache,id=polypythia-wheelhouse,target=/wheelhouse,sharing=locked \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
       -c /req/constraints.txt -r /req/requirements.txt

# What the operator and eval images share: the venv, the project wheel, the CRD, the CLI.
FROM ${PYTHON_IMAGE} AS slim
ARG PYTHON_IMAGE
ARG VERSION
ARG SOURCE
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
COPY --from=install /opt/venv /opt/venv
COPY --from=wheel /wheels /tmp/wheels
COPY crds/ /opt/polypythia/crds/
ENV PATH=/opt/venv/bin:$PATH \
    POLYPYTHIA_CRD=/opt/polypythia/crds/polypythiasweeps.polypythia.io.yaml \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["polypythia"]

# The project with its extra: every requirement is already in the venv, so nothing is fetched
# (--no-index), and a requirement missing from the venv fails the build here.
FROM slim AS operator
LABEL org.opencontainers.image.title="polypythia-operator" \
      org.opencontainers.image.description="polypythia Kubernetes operator (kopf), no torch"
RUN groupadd --system --gid 10001 polypythia \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home polypythia \
    && /opt/venv/bin/pip install --no-cache-dir --no-index -c /tmp/wheels/constraints.txt \
       "$(echo /tmp/wheels/polypythia-*.whl)[operator]" \
    && rm -rf /tmp/wheels
ENV PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 8000 8080
CMD ["operator", "--all-namespaces", "--metrics-port", "8000", "--liveness-port", "8080"]

# CUDA torch (the PyPI Linux wheel bundles the CUDA runtime), transformers and lm-evaluation-harness;
# the operator passes `evaluate ...` as arguments to checkpoint eval Jobs.
FROM slim AS eval
LABEL org.opencontainers.image.title="polypythia-eval" \
      org.opencontainers.image.description="polypythia checkpoint evaluation (lm-eval, CUDA torch)"
RUN groupadd --system --gid 10001 polypythia \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/polypythia polypythia \
    && /opt/venv/bin/pip install --no-cache-dir --no-index -c /tmp/wheels/constraints.txt \
       "$(echo /tmp/wheels/polypythia-*.whl)[eval]" \
    && rm -rf /tmp/wheels
ENV HF_HOME=/home/polypythia/.cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1
USER 10001:10001
WORKDIR /home/polypythia
CMD ["evaluate", "--help"]

# KubeRay starts Ray in it; the job entrypoint is `polypythia train --config ... --ray-address auto`.
FROM ${RAY_IMAGE} AS trainer
ARG RAY_IMAGE
ARG VERSION
ARG SOURCE
# Ray's image runs as the non-root user `ray` (uid 1000, group users 100) with its own Python.
USER 1000:100
LABEL org.opencontainers.image.title="polypythia-trainer" \
      org.opencontainers.image.description="polypythia trainer for KubeRay RayJobs (Ray Train, torch, DeepSpeed)" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RAY_IMAGE}"
# DeepSpeed compiles its ops when first used, not at install time (no CUDA compiler here).
ENV DS_BUILD_OPS=0 \
    PYTHONUNBUFFERED=1 \
    POLYPYTHIA_CRD=/home/ray/polypythia/crds/polypythiasweeps.polypythia.io.yaml \
    HF_HOME=/home/ray/.cache/huggingface \
    TORCH_EXTENSIONS_DIR=/home/ray/.cache/torch_extensions
# The requirements, from the wheelhouse only (--no-index), into the Ray image's own Python.
COPY --from=download --chown=1000:100 /req /tmp/req
RUN --mount=type=cache,id=polypythia-wheelhouse,target=/wheelhouse,sharing=locked \
    pip install --no-cache-dir --no-index --find-links /wheelhouse \
       -c /tmp/req/constraints.txt -r /tmp/req/requirements.txt \
    && rm -rf /tmp/req
COPY --from=wheel --chown=1000:100 /wheels /tmp/wheels
# The project with its extra, as in the slim images above.
RUN pip install --no-cache-dir --no-index -c /tmp/wheels/constraints.txt \
       "$(echo /tmp/wheels/polypythia-*.whl)[trainer]" \
    && rm -rf /tmp/wheels
COPY --chown=1000:100 crds/ /home/ray/polypythia/crds/
WORKDIR /home/ray
