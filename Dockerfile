# The one pgshard image: the operator (pgshard-operator), the shard instances
# (pgshard-instance, with PostgreSQL 15) and the proxy (pgshard-proxy).
#
#   docker build -t pgshard:0.1.0 .      # where a registry and Docker exist
#   scripts/image-build                  # here: buildah, no Docker engine (see README)
#
# It runs as the fixed non-root user postgres (UID/GID 26, as CloudNativePG's images),
# needs no capabilities and works with a read-only root filesystem: the pods mount
# their data volume on /var/lib/pgshard and an emptyDir on /tmp.

# Build stage: the virtualenv with pgshard and its dependencies (pip, venv and the
# build's caches stay behind).
FROM debian:bookworm-slim AS build
# Set only by builds that must reach PyPI through a trust store given as a volume
# (scripts/image-build); a build argument, so it is not part of the image.
ARG PIP_CONFIG_FILE
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY proxy /src/proxy
RUN python3 -m venv /opt/pgshard \
 && /opt/pgshard/bin/pip install --no-cache-dir --no-compile '/src[kube,fast]' \
 && /opt/pgshard/bin/pip uninstall -y pip setuptools \
 && find /opt/pgshard -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/pgshard/bin/python -m compileall -q -j 0 /opt/pgshard/lib >/dev/null

FROM debian:bookworm-slim
# Slimmed (about 130 MB less): PostgreSQL's JIT provider and LLVM, and the perl that only
# Debian's wrapper scripts (pg_ctlcluster), which pgshard does not use, need. PostgreSQL
# runs without JIT when its provider is absent. dpkg then reports those dependencies as
# missing: an image built FROM this one that installs packages runs apt-get -f install.
# The user exists before the PostgreSQL packages, which then keep its fixed IDs (Debian's
# GID 26 is the unused group "tape").
RUN groupdel tape \
 && groupadd --system --gid 26 postgres \
 && useradd --system --uid 26 --gid 26 --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 python3 ca-certificates \
 && dpkg --purge --force-depends libllvm14 libz3-4 perl perl-modules-5.36 libperl5.36 \
 && rm -f /usr/lib/postgresql/15/lib/llvmjit*.so \
 && rm -rf /usr/lib/postgresql/15/lib/bitcode \
 && ! ldd /usr/lib/postgresql/15/bin/* /usr/lib/postgresql/15/lib/*.so | grep 'not found' \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
      /usr/share/doc /usr/share/man /usr/share/locale /usr/share/postgresql/15/man \
 && find /usr/lib/python3* -name '__pycache__' -prune -exec rm -rf {} + \
 && mkdir -p /var/lib/pgshard && chown 26:26 /var/lib/pgshard
COPY --from=build /opt/pgshard /opt/pgshard

ENV PATH=/opt/pgshard/bin:$PATH \
    PGSHARD_PG_BINDIR=/usr/lib/postgresql/15/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 26:26
WORKDIR /var/lib/pgshard
EXPOSE 5432 8008 9187
CMD ["pgshard-operator"]
