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
# pip runs from Debian's bundled pip wheel, so the venv itself never holds pip.
FROM ${BASE_IMAGE} AS deps
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY build/wheels/deps /wheels/deps
RUN python3 -m venv --without-pip /opt/venv \
 && pip_whl="$(echo /usr/share/python-wheels/pip-*.whl)" \
 && /opt/venv/bin/python "$pip_whl/pip" install --no-index /wheels/deps/*.whl \
 && cd "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && find . -type d -name tests -prune -exec rm -rf {} + \
 && rm -rf pyarrow/include pyarrow/src pyarrow/_pyarrow_cpp_tests.* \
 && find pyarrow \( -name '*.pxd' -o -name '*.pyx' -o -name '*.pxi' \) -delete \
 && rm -rf /wheels

# --- runtime: base + the deps venv + the project wheel; no pip, compilers or curl ---
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DATAPRODUCT_HOST=0.0.0.0 \
    DATAPRODUCT_DATA_DIR=/data
COPY --from=deps /opt/venv /opt/venv
# Unprivileged user; /data is its only writable place. The entrypoint serves /product
# when a product folder is mounted there, else the embedded example; a command given
# to `docker run` (dataproduct validate /product, sh, ...) runs as is.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/dataproduct \
        --shell /usr/sbin/nologin dataproduct \
 && mkdir -p /data /product \
 && chown 10001:10001 /data \
 && printf '%s\n' '#!/bin/sh' 'set -e' \
        'if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then exec "$@"; fi' \
        'if [ -f /product/dataproduct.yaml ]; then exec dataproduct serve /product "$@"; fi' \
        'exec dataproduct serve "$@"' >/usr/local/bin/dataproduct-entrypoint \
 && chmod 755 /usr/local/bin/dataproduct-entrypoint
# The project itself: a small layer, the only one rebuilt when the code changes.
COPY build/wheels/app /wheels/app
RUN pip_whl="$(echo /usr/share/python-wheels/pip-*.whl)" \
 && /opt/venv/bin/python "$pip_whl/pip" install --no-index --no-deps /wheels/app/*.whl \
 && /opt/venv/bin/python "$pip_whl/pip" check \
 && rm -rf /wheels
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${DATAPRODUCT_PORT:-8080}/health', timeout=4)" || exit 1
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/dataproduct-entrypoint"]
