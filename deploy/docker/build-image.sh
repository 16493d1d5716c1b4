#!/usr/bin/env bash
# Build the dataproduct image: wheels of the project and its dependencies are
# built on the host (which reaches PyPI) into build/wheels; the image build
# itself installs from that folder without network access.
#
# Usage: build-image.sh [TAG]            (default: dataproduct:dev)
# Env:   IMAGE_TAG (tag, if no argument), BASE_IMAGE (dataproduct-base:bookworm),
#        PYTHON (interpreter whose pip builds the wheels; default: the repo's
#        .venv, else python3), REFRESH_WHEELS=1 (re-resolve dependencies
#        from PyPI instead of reusing build/wheels/deps), IMAGE_EXTRAS (the
#        project's extras the image holds; default: marketplace-postgres, the
#        marketplace's PostgreSQL driver).
set -euo pipefail

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TAG="${1:-${IMAGE_TAG:-dataproduct:dev}}"
BASE_IMAGE="${BASE_IMAGE:-dataproduct-base:bookworm}"
IMAGE_EXTRAS="${IMAGE_EXTRAS-marketplace-postgres}"
WHEELS="$ROOT/build/wheels"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

[ -f "$ROOT/pyproject.toml" ] || die "no pyproject.toml in $ROOT"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip"

# Engine and base image (both idempotent, quick when already there).
"$HERE/ensure-dockerd.sh"
"$HERE/build-base-image.sh" "$BASE_IMAGE"

# One image build at a time (build/wheels is shared).
exec 9>/tmp/dataproduct-build-image.lock
flock -w 1800 9 || die "timed out waiting for another image build"

start=$(date +%s)

# 1. Wheels, in two folders so that Docker caches the heavy layer:
#    build/wheels/app   the project's wheel (reproducible: fixed SOURCE_DATE_EPOCH)
#    build/wheels/deps  exactly the wheels it needs with IMAGE_EXTRAS, resolved
#                       offline from the previous deps folder when that still
#                       satisfies it, else from PyPI (REFRESH_WHEELS=1 forces PyPI).
#    The project is built from a clean copy, so stale files in the repo's
#    build/lib (setuptools) never end up in the wheel.
TMP="$(mktemp -d /var/tmp/dataproduct-wheels.XXXXXX)"
trap 'rm -rf --one-file-system "$TMP"' EXIT
mkdir -p "$TMP/src" "$TMP/app" "$TMP/deps"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # The files git considers source (tracked or new, not ignored): no bench data.
    git -C "$ROOT" ls-files -z -co --exclude-standard \
        | tar -C "$ROOT" --null -T - --ignore-failed-read -c 2>/dev/null | tar -C "$TMP/src" -x
else
    tar -C "$ROOT" \
        --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
        --exclude=./bench --exclude=./.dataproduct --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
        --exclude=.ruff_cache -c . | tar -C "$TMP/src" -x
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-315532800}"
log "building the project wheel with $("$PYTHON" -m pip --version | cut -d' ' -f1-2)"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$TMP/app" "$TMP/src"
app_wheel="$(find "$TMP/app" -name 'dataproduct-*.whl' | head -n 1)"
[ -n "$app_wheel" ] || die "no dataproduct wheel was built"
requirement="$app_wheel${IMAGE_EXTRAS:+[$IMAGE_EXTRAS]}"

if [ "${REFRESH_WHEELS:-0}" != 1 ] && [ -d "$WHEELS/deps" ] \
    && "$PYTHON" -m pip wheel --quiet --no-index --find-links "$WHEELS/deps" \
        --wheel-dir "$TMP/deps" "$requirement" 2>/dev/null; then
    log "dependency wheels: reused from $WHEELS/deps"
else
    rm -rf "$TMP/deps" && mkdir "$TMP/deps"
    log "dependency wheels: resolving from the package index"
    "$PYTHON" -m pip wheel --quiet --wheel-dir "$TMP/deps" "$requirement"
fi
rm -f "$TMP"/deps/dataproduct-*.whl
rm -rf "$WHEELS"
mkdir -p "$WHEELS"
mv "$TMP/app" "$TMP/deps" "$WHEELS/"
wheels_done=$(date +%s)
log "wheels ready in $(( wheels_done - start ))s ($(find "$WHEELS/deps" -name '*.whl' | wc -l) dependencies, $(du -sh "$WHEELS" | cut -f1))"

# 2. Image. Without the buildx plugin, use the classic builder explicitly.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
log "docker build $TAG from $BASE_IMAGE"
previous="$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -t "$TAG" -f "$ROOT/Dockerfile" "$ROOT"

# The image is one flattened layer: drop the one this build replaced (kept while a
# container still uses it).
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$TAG")" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi

end=$(date +%s)
size=$(docker image inspect --format '{{.Size}}' "$TAG")
log "built $TAG in $(( end - start ))s (wheels $(( wheels_done - start ))s, docker build $(( end - wheels_done ))s)"
log "image size: $TAG $(( size / 1000000 )) MB"
