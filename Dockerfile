# syntax=docker/dockerfile:1.7
# alembic-operator: the operator (`alembic-operator run`) and the commands its Jobs run (`alembic-operator job ...`:
# scan, backup, restore, install-runner). The Jobs use this very image (the chart passes it as
# ALEMBIC_OPERATOR_IMAGE), so it carries pg_dump, pg_restore and psql.
#
#   docker build -t alembic-operator:dev .
#   docker build --build-arg PG_MAJOR=17 -t alembic-operator:dev-pg17 .
#
# The base is pinned by digest (python:3.12-slim-bookworm, linux/amd64+arm64 index); refresh it deliberately with
# `docker buildx imagetools inspect python:3.12-slim-bookworm` and pass --build-arg PYTHON_IMAGE=... to override.
# Any Debian-based image with python3 and its venv module works: the Python packages go into a virtualenv
# (/opt/venv), never into the base's own Python. The test bed builds this file on Debian's python3 with
# --build-arg PG_SOURCE=debian --build-arg PG_MAJOR=15 (Debian's postgresql-client, no PGDG).
ARG PYTHON_IMAGE=python:3.12-slim-bookworm@sha256:782412e85d0f0984994c290652577d4018aff08145c85b262bb63dc0c7522254

# --- build: the project's wheel and the wheels of every dependency pyproject.toml declares ----------------------
FROM ${PYTHON_IMAGE} AS build
# A CA bundle for pip when the build's network intercepts TLS (the test bed's machines do): a path the builder
# mounts read-only (`--volume`); it is a build argument, so it never lands in the image's environment.
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --wheel-dir /wheels . \
 && sha256sum /wheels/*.whl > /wheels.sha256

# --- runtime ------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# pg_dump must be at least as new as the server it dumps (it refuses newer servers), and pg_dump N dumps every
# server from 9.2 to N: the newest major from the PostgreSQL project's own apt repository (PGDG) covers the most
# servers. Debian bookworm's own postgresql-client is 15 and cannot back up PostgreSQL 16, 17 or 18.
# mariadb-client (mariadb-dump, mariadb) backs up and restores MySQL and MariaDB (engines/mysql.py).
ARG PG_MAJOR=18
# pgdg: postgresql-client-${PG_MAJOR} from apt.postgresql.org (the default); debian: the base's own distribution
# (bookworm has 15 only; the test bed uses it so that it needs no download site but Debian's mirror).
ARG PG_SOURCE=pgdg
# The PGDG signing key (ACCC4CF8); its full fingerprint is checked before apt trusts it.
ARG PGDG_KEY_FINGERPRINT=B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8
LABEL org.opencontainers.image.title="alembic-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs Alembic migrations: plan, approval, backup, migrate, rollback, pod gating" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ALEMBIC_OPERATOR_PG_BIN=/usr/lib/postgresql/${PG_MAJOR}/bin \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Security updates come with the distribution's current versions: apt packages are deliberately not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && if [ "${PG_SOURCE}" = pgdg ]; then \
      apt-get install -y --no-install-recommends ca-certificates curl gnupg \
      && install -d -m 0755 /usr/share/postgresql-common/pgdg \
      && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
           https://www.postgresql.org/media/keys/ACCC4CF8.asc \
      && gpg --show-keys --with-colons /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
           | awk -F: '$1 == "fpr" {print $10}' | grep -qx "${PGDG_KEY_FINGERPRINT}" \
      && . /etc/os-release \
      && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
           > /etc/apt/sources.list.d/pgdg.list \
      && apt-get update \
      && apt-get purge -y --auto-remove curl gnupg; \
    elif [ "${PG_SOURCE}" != debian ]; then echo "PG_SOURCE must be pgdg or debian" >&2; exit 1; fi \
 && apt-get install -y --no-install-recommends ca-certificates "postgresql-client-${PG_MAJOR}" mariadb-client \
 && rm -rf /var/lib/apt/lists/* /root/.gnupg \
 && "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version \
 && mariadb-dump --version && mariadb --version
# The wheels' checksums first: a builder may key the cached layer of the RUN below by its text alone, not by what
# --mount=from brings (buildah --layers, the test bed's builder, does), so a changed wheel must change this layer.
COPY --from=build /wheels.sha256 /usr/local/share/alembic-operator/wheels.sha256
# The operator and its dependencies, from the wheels built above only (--no-index): exactly what pyproject.toml
# declares, nothing fetched at this stage, and no wheel left behind in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/venv \
 && pip install --no-index --find-links=/wheels /wheels/alembic_operator-*.whl \
 && alembic-operator --help > /dev/null
# A fixed non-root user (the chart's securityContext runs as 65532 too; the Jobs' containers of this image as well).
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /home/nonroot
ENV HOME=/home/nonroot
# 8080 liveness/readiness (Kopf), 9090 /metrics, 9443 the admission webhook (HTTPS).
EXPOSE 8080 9090 9443
ENTRYPOINT ["alembic-operator"]
CMD ["run"]
