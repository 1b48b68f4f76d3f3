# vidserve: one image for the API, migrations, the webhook sender and the GPU worker.
#   CPU torch (API, migrate, webhooks; also a CPU-only worker):  docker build -t vidserve:cpu .
#   CUDA torch (GPU worker):  docker build -t vidserve:gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
# (PyPI's Linux torch wheels are CUDA builds that bring their own CUDA runtime; the host needs the NVIDIA
# driver and the NVIDIA Container Toolkit.)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    VIDSERVE_MODEL_DIR=/var/lib/vidserve/models

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
# Dependencies first, in their own layer, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import subprocess, sys, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"

COPY README.md* ./
COPY api ./api
COPY engine ./engine
COPY migrations ./migrations
COPY vidserve ./vidserve
COPY worker ./worker
# Editable: `vidserve db upgrade` finds migrations/ beside the package, as in a checkout.
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 vidserve \
    && mkdir -p /var/lib/vidserve/models \
    && chown -R vidserve /var/lib/vidserve
USER vidserve

EXPOSE 8000
CMD ["vidserve", "api", "--host", "0.0.0.0", "--port", "8000"]
