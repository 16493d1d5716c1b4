# dataproduct: one data product per container.
#
# The base image is built locally from Debian packages (no registry needed), and the
# wheels on the host; deploy/docker/build-image.sh does all of it. By hand:
#   deploy/docker/build-base-image.sh     -> dataproduct-base:bookworm
#   (wheels into build/wheels/app and build/wheels/deps, see build-image.sh)
#   docker build --network host --build-arg BASE_IMAGE=dataproduct-base:bookworm -t dataproduct:dev .
# Run:
#   docker run --network host -e DATAPRODUCT_JWT_SECRET=... [-v "$PWD:/product:ro"] dataproduct:dev
ARG BASE_IMAGE

# --- deps stage: a venv with the dependencies only (cached while they do not change) ---
# pip runs from Debian's bundled pip wheel, so the venv itself never holds pip. What no
# product uses goes (tests, test helpers, type stubs, headers, Arrow Flight: pyarrow loads
# it only for pyarrow.flight; SQLAlchemy's dialects for which the image has no driver);
# copies of one library become links; shared objects lose their symbol tables (the
# dynamic symbols stay). psycopg's libpq uses the system's OpenSSL (Debian's libssl3,
# which Python's ssl loads anyway) instead of the copy in its wheel: it needs only
# OpenSSL 3.0 symbols, which the loader checks when psycopg is imported, below.
FROM ${BASE_IMAGE} AS deps
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY build/wheels/deps /wheels/deps
RUN python3 -m venv --without-pip /opt/venv \
 && pip_whl="$(echo /usr/share/python-wheels/pip-*.whl)" \
 && /opt/venv/bin/python "$pip_whl/pip" install --no-index /wheels/deps/*.whl \
 && cd "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && find . -type d \( -name tests -o -name testing \) -prune -exec rm -rf {} + \
 && find . -name '*.pyi' -delete \
 && rm -rf pyarrow/include pyarrow/src pyarrow/_pyarrow_cpp_tests.* pyarrow/*flight* \
        sqlalchemy/dialects/mssql sqlalchemy/dialects/mysql sqlalchemy/dialects/oracle \
 && find pyarrow \( -name '*.pxd' -o -name '*.pyx' -o -name '*.pxi' \) -delete \
 && for lib in pyarrow/libarrow_python*.so; do \
        for copy in "$lib".*; do [ -f "$copy" ] && ln -sf "${lib##*/}" "$copy"; done; \
    done \
 && find . -name '*.so*' -type f -exec strip --strip-unneeded {} + \
 && for lib in psycopg_binary.libs/libssl-*.so.3 psycopg_binary.libs/libcrypto-*.so.3; do \
        [ -f "$lib" ] || continue; name="${lib##*/}"; ln -sf "/usr/lib/x86_64-linux-gnu/${name%%-*}.so.3" "$lib"; \
    done \
 && /opt/venv/bin/python -c 'import psycopg; assert psycopg.pq.__impl__ == "binary"' \
 && rm -rf /wheels

# --- rootfs stage: base + venv + project, slimmed; flattened into the image below ---
FROM ${BASE_IMAGE} AS rootfs
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY --from=deps /opt/venv /opt/venv
COPY build/wheels/app /wheels/app
COPY deploy/docker/slim-rootfs.sh deploy/docker/prune-bytecode.py /wheels/
# Unprivileged user; /data is its only writable place (with /tmp). The entrypoint serves
# /product when a product folder is mounted there, else the embedded example; a command
# given to `docker run` (dataproduct validate /product, sh, nginx, ...) runs as is.
RUN pip_whl="$(echo /usr/share/python-wheels/pip-*.whl)" \
 && /opt/venv/bin/python "$pip_whl/pip" install --no-index --no-deps /wheels/app/*.whl \
 && /opt/venv/bin/python "$pip_whl/pip" check \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin dataproduct \
 && mkdir -p /data /product \
 && chown 10001:10001 /data \
 && printf '%s\n' '#!/bin/sh' 'set -e' \
        'if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then exec "$@"; fi' \
        'if [ -f /product/dataproduct.yaml ]; then exec dataproduct serve /product "$@"; fi' \
        'exec dataproduct serve "$@"' >/usr/local/bin/dataproduct-entrypoint \
 && chmod 755 /usr/local/bin/dataproduct-entrypoint \
 && sh /wheels/slim-rootfs.sh \
 && /opt/venv/bin/python /wheels/prune-bytecode.py /opt/venv/lib /usr/lib/python3.11 \
 && rm -rf /wheels

# --- the image: one layer holding exactly the slimmed file system ---
FROM scratch
COPY --from=rootfs / /
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATAPRODUCT_HOST=0.0.0.0 \
    DATAPRODUCT_DATA_DIR=/data
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${DATAPRODUCT_PORT:-8080}/health', timeout=4)" || exit 1
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/dataproduct-entrypoint"]
