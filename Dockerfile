# The seedjax image that launch/gke_jobset.yaml runs (every pod: `python -m seedjax.main ...`).
#   docker build -t REGISTRY/seedjax:latest .                              NVIDIA GPUs (jax[cuda12]) + gs://
#   docker build --build-arg EXTRAS=tpu,gcs -t REGISTRY/seedjax:tpu .      Cloud TPU (jax[tpu]) + gs://
#   docker push REGISTRY/seedjax:latest
# EXTRAS are pyproject.toml extras. The CUDA libraries come with the jax[cuda12] wheels; the
# node provides only the driver (GKE mounts it under /usr/local/nvidia).
FROM python:3.11-slim

ARG EXTRAS=cuda12,gcs
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64

WORKDIR /app
COPY pyproject.toml README.md ./
COPY seedjax ./seedjax
COPY data_pipelines ./data_pipelines
COPY experiments ./experiments
COPY launch ./launch
COPY benchmarks ./benchmarks
RUN pip install ".[${EXTRAS}]"

# Config files are given by path relative to /app (--config=experiments/...). SIGTERM reaches
# python as PID 1: an unfinished run checkpoints and exits 143 (the JobSet restarts it).
ENTRYPOINT ["python", "-m", "seedjax.main"]
CMD ["--help"]
