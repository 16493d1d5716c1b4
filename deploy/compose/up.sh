#!/usr/bin/env bash
# The example mesh with Docker, in one command: installs what is missing (the engine, a
# compose tool), builds the image when it is not there, keeps a token secret in .env,
# starts every container, waits until all are healthy and prints where they answer.
#
# Usage: deploy/compose/up.sh            start (or update) the mesh
#        deploy/compose/up.sh --down     stop it, keeping the data (down.sh -v drops it too)
# Env:   IMAGE (dataproduct:dev, the image compose.yaml names), WAIT_SECONDS (300)
set -euo pipefail

log() { printf 'mesh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
IMAGE="${IMAGE:-dataproduct:dev}"
WAIT_SECONDS="${WAIT_SECONDS:-300}"
cd "$HERE"  # compose reads .env and resolves ../examples from here

docker info >/dev/null 2>&1 || "$ROOT/deploy/docker/ensure-dockerd.sh"
read -r -a COMPOSE <<<"$("$HERE/ensure-compose.sh")"

if [ "${1:-}" = "--down" ]; then
    shift
    exec "${COMPOSE[@]}" down "$@"
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "building the image $IMAGE (a few minutes the first time)"
    "$ROOT/deploy/docker/build-image.sh" "$IMAGE"
fi

# The secret every product signs its credential with; kept so data and tokens stay valid
# across restarts. Never committed (.gitignore).
if ! grep -q '^MESH_JWT_SECRET=' .env 2>/dev/null; then
    (umask 077; printf 'MESH_JWT_SECRET=%s\n' "$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')" >>.env)
fi
grep -q '^COMPOSE_PROJECT_NAME=' .env || printf 'COMPOSE_PROJECT_NAME=sales-mesh\n' >>.env

"${COMPOSE[@]}" up -d

log "waiting until every container is healthy (at most ${WAIT_SECONDS}s)"
deadline=$(( $(date +%s) + WAIT_SECONDS ))
while :; do
    states="$("${COMPOSE[@]}" ps -q | xargs docker inspect --format '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}')"
    if ! grep -qv '^running/healthy$' <<<"$states"; then break; fi
    if grep -q -e '^exited' -e '/unhealthy$' <<<"$states" || [ "$(date +%s)" -ge "$deadline" ]; then
        "${COMPOSE[@]}" ps >&2
        "${COMPOSE[@]}" logs --tail 30 >&2
        die "the mesh did not become healthy; see the logs above"
    fi
    sleep 2
done

# An administrator's token for trying the mesh (every port, the groups the examples grant).
(umask 077; "${COMPOSE[@]}" exec -T sales-global dataproduct token --sub mesh-admin \
    --scope output:read --scope input:write --scope control:admin --scope metrics:read \
    --group sales-analysts --group shop-integration --group everyone --ttl 43200 >admin-token)

address() { docker inspect --format '{{index .Config.Labels "dataproduct.address"}}' "$@"; }
echo
echo "the mesh is up:"
for service in $("${COMPOSE[@]}" config --services); do
    printf '  %-14s %s\n' "$service" "$(address "$("${COMPOSE[@]}" ps -q "$service")")"
done
echo
echo "an administrator's token is in $HERE/admin-token; try:"
echo "  curl -H \"Authorization: Bearer \$(cat $HERE/admin-token)\" $(address "$("${COMPOSE[@]}" ps -q sales-global)")output/datasets"
echo "stop with: $HERE/down.sh   (add -v to delete the data too)"
