#!/usr/bin/env bash
# Make sure a Docker engine is installed and answering on this machine.
# Idempotent: installs Debian's docker.io only when dockerd is missing and starts
# dockerd (no bridge, no iptables: containers use --network host) only when the
# daemon does not answer. Touches no other service.
#
# Env: DOCKERD_LOG (default /tmp/dataproduct-dockerd.log),
#      DOCKERD_WAIT_SECONDS (default 60).
set -euo pipefail

log() { printf 'ensure-dockerd: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dataproduct-dockerd.log}"
DOCKERD_WAIT_SECONDS="${DOCKERD_WAIT_SECONDS:-60}"
LOCK_FILE="/tmp/dataproduct-dockerd.lock"

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages and starts dockerd)"

# Serialise concurrent callers (parallel test sessions, CI jobs).
exec 9>"$LOCK_FILE"
flock -w 600 9 || die "timed out waiting for $LOCK_FILE"

# 1. Install the engine from Debian when dockerd is missing.
if ! command -v dockerd >/dev/null 2>&1; then
    log "dockerd not found; installing docker.io from Debian"
    # Keep the package's postinst from starting dockerd with its default
    # (bridge + iptables) configuration: we start it ourselves below.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup_policy() { [ "$created_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d; return 0; }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update || log "warning: apt-get update reported errors; trying the install anyway"
    apt-get install -y --no-install-recommends docker.io
    cleanup_policy
    trap - EXIT
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is still not on PATH"
fi
command -v docker >/dev/null 2>&1 || die "docker client not found on PATH"

# True when a dockerd process is alive (pid file written by dockerd itself).
dockerd_alive() {
    local pid
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = dockerd ]
}

# 2. Already answering? Nothing to do.
if docker info >/dev/null 2>&1; then
    log "docker daemon is answering"
    exit 0
fi

# 3. Start dockerd in its own session so it outlives this script and its caller.
started_pid=""
if dockerd_alive; then
    log "a dockerd process exists but does not answer yet; waiting for it"
else
    log "starting dockerd --bridge=none --iptables=false (log: $DOCKERD_LOG)"
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false \
        >>"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &
    started_pid=$!
fi

# 4. Bounded wait until the daemon answers.
deadline=$(( $(date +%s) + DOCKERD_WAIT_SECONDS ))
until docker info >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "last lines of $DOCKERD_LOG:"
        tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
        die "docker daemon did not answer within ${DOCKERD_WAIT_SECONDS}s"
    fi
    if [ -n "$started_pid" ] && ! kill -0 "$started_pid" 2>/dev/null; then
        log "last lines of $DOCKERD_LOG:"
        tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
        die "dockerd exited during start-up"
    fi
    sleep 1
done
log "docker daemon is answering"
