# kvstore: one image for journal nodes and etcd-compatible members.
#
# Without a registry: scripts/build-image.sh (a Debian base made with
# debootstrap + docker import, passed as BASE_IMAGE). With one: plain
# `docker compose build` / `docker build .` on debian:bookworm-slim.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PATH=/opt/kvstore/bin:$PATH \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/kvstore
WORKDIR /app
# Dependencies first (from PyPI), in their own layer: a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p kvstore journal proto bench && touch kvstore/__init__.py journal/__init__.py proto/__init__.py bench/__init__.py \
    && pip install 'setuptools>=68' && pip install --no-build-isolation . && pip uninstall -y kvstore \
    && rm -rf build kvstore journal proto bench
COPY kvstore ./kvstore
COPY journal ./journal
COPY proto ./proto
COPY bench ./bench
RUN pip install --no-deps --no-build-isolation . && rm -rf build
ENTRYPOINT ["kvstore"]
