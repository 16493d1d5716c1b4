#!/usr/bin/env bash
# Make sure a compose tool is installed and print how to call it: `docker compose` (v2)
# when the plugin is there, else `docker-compose`, installed from Debian (1.29) when
# neither exists. Idempotent; needs root only to install.
set -euo pipefail

log() { printf 'ensure-compose: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
    exit 0
fi
if ! command -v docker-compose >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "neither 'docker compose' nor docker-compose; run as root to install it"
    exec 9>/tmp/dataproduct-compose.lock
    flock -w 600 9 || die "timed out waiting for /tmp/dataproduct-compose.lock"
    if ! command -v docker-compose >/dev/null 2>&1; then
        log "installing docker-compose from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends docker-compose >&2 \
            || { apt-get update >&2 && apt-get install -y --no-install-recommends docker-compose >&2; } \
            || die "cannot install docker-compose"
    fi
fi
echo "docker-compose"
