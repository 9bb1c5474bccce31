# The one pgshard image: the operator (pgshard-operator), the shard instances
# (pgshard-instance, with PostgreSQL 15) and the proxy (pgshard-proxy).
#
#   docker build -t pgshard:0.1.0 .
#
# This repository's CI has no Docker: its end-to-end tests run every pod's command
# as a local process instead (see README, "On Kubernetes").
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      postgresql-15 python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY . /src
RUN python3 -m venv /opt/pgshard \
 && /opt/pgshard/bin/pip install --no-cache-dir '/src[kube]' \
 && rm -rf /src

# The container starts as root; pgshard-instance runs the PostgreSQL binaries as the
# unprivileged user "postgres" created by the Debian package (PGSHARD_PG_USER).
ENV PATH=/opt/pgshard/bin:$PATH \
    PGSHARD_PG_BINDIR=/usr/lib/postgresql/15/bin \
    PGSHARD_PG_USER=postgres \
    PYTHONUNBUFFERED=1

EXPOSE 5432 8008
CMD ["pgshard-operator"]
