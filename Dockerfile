# syntax=docker/dockerfile:1
# imgsim: the image similarity service on an NVIDIA GPU (CPU works too: see docs/deploy.md).
#
# The PyTorch wheels from PyPI carry their own CUDA libraries (cuBLAS, cuDNN, NCCL as nvidia-* wheels), so the
# CUDA "base" image is enough under them: it adds the NVIDIA_* variables the NVIDIA container toolkit reads to
# mount the host driver, and refuses to start on a driver too old for its CUDA version. torch 2.14.1 is built
# for CUDA 13.0, hence the 13.0 base (host driver >= 580). For an older driver, build with a CUDA 12 base and
# PyTorch's own wheel index for that CUDA version:
#   docker build --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04 \
#                --build-arg TORCH_INDEX_URL=<PyTorch's cu128 wheel index> -t imgsim .
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

# ---- build stage: a virtual environment with every dependency, then the project itself -------------------
FROM ${CUDA_IMAGE} AS build

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=""

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Ubuntu's package versions move with its archive; pinning them would break rebuilds, so they float.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The largest layer first and on its own, so a code or dependency change never re-downloads torch.
RUN if [ -n "$TORCH_INDEX_URL" ]; then export PIP_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# Dependencies before code: this layer is rebuilt only when pyproject.toml changes. The list is read from
# pyproject.toml itself (no second requirements file to keep in step); torch is already satisfied above.
WORKDIR /src
COPY pyproject.toml ./
# IMGSIM_EXTRAS: optional extras to install too, comma-separated (compose's `scale` profile builds with "scale").
ARG IMGSIM_EXTRAS=""
RUN python3 -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in os.environ.get('IMGSIM_EXTRAS', '').split(',') if e]; \
deps = p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e] if not d.startswith('imgsim')]; \
print('\n'.join(deps))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY README.md ./
COPY app ./app
COPY model ./model
COPY index ./index
RUN pip install --no-deps . \
    && imgsim --help > /dev/null

# ---- runtime stage: the same base, Python, the virtual environment, an unprivileged user -----------------
FROM ${CUDA_IMAGE} AS runtime

ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 imgsim \
    && useradd --system --uid 10001 --gid imgsim --create-home --home-dir /home/imgsim imgsim \
    && mkdir -p /data /models /indexes \
    && chown imgsim:imgsim /data /models /indexes

COPY --from=build /opt/venv /opt/venv

# Defaults for every `imgsim` command (app/settings.py reads IMGSIM_*); docker-compose.yml and `docker run -e`
# override. The model served is the one the gallery records, else /models/default/best.pt; without one, `serve`
# exits naming IMGSIM_SETUP_COMMAND, the one-shot command that trains and indexes.
# The device is auto: CUDA when the container sees a GPU (started with --gpus or a compose GPU reservation),
# otherwise the CPU, with no change to the image.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/models/.torch \
    IMGSIM_HOST=0.0.0.0 \
    IMGSIM_PORT=8000 \
    IMGSIM_DEVICE=auto \
    IMGSIM_RUN_DIR=/models/default \
    IMGSIM_INDEX=/indexes/default \
    IMGSIM_SETUP_COMMAND="imgsim up --no-serve"

USER 10001:10001
WORKDIR /home/imgsim
VOLUME ["/data", "/models", "/indexes"]
EXPOSE 8000

# Readiness, not liveness: a model that failed to load or a gallery still loading is unhealthy (503). curl is not
# in the image: Python's urllib raises (exit 1) on a refused connection or a non-2xx status.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('IMGSIM_PORT', '8000'), timeout=4)"]

CMD ["imgsim", "serve"]
