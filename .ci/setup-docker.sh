#!/usr/bin/env bash
# Make a Docker engine reachable for the tests marked `docker`, when this machine can have one.
#
#   .ci/setup-docker.sh            install (as root) and start dockerd if none answers; never fails CI
#                                  when an engine genuinely cannot run here: it says why and exits 0,
#                                  so the docker tests skip with a reason instead.
#   TIDELOG_REQUIRE_DOCKER=1 ...   the same, but exit 1 when no engine can be had (a CI that must run
#                                  the docker tests).
#
# What it does, in order, stopping at the first step that already holds:
#   1. `docker info` answers → print versions, done.
#   2. As root: apt-get update, then install what is missing of docker.io, docker-compose (v1, 1.29
#      in bookworm) and debootstrap (deploy/offline-image.sh builds the base image with it).
#   3. As root: start dockerd detached (setsid), logging to $DOCKERD_LOG, its PID in $DOCKERD_PIDFILE,
#      and poll `docker info` for up to $DOCKERD_WAIT_S seconds.
# Stop the engine it started with: kill "$(cat /run/tidelog-dockerd.pid)".
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/tidelog-dockerd.log}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/run/tidelog-dockerd.pid}
DOCKERD_WAIT_S=${DOCKERD_WAIT_S:-60}
REQUIRE=${TIDELOG_REQUIRE_DOCKER:-0}

say() { echo "setup-docker: $*"; }

give_up() {  # no engine here; say why, and fail only when the caller requires one
    say "no Docker engine: $*"
    if [[ "$REQUIRE" == 1 ]]; then
        exit 1
    fi
    say "tests marked 'docker' will be skipped"
    exit 0
}

engine_answers() { docker info >/dev/null 2>&1; }

print_versions() {
    docker version --format 'docker: client {{.Client.Version}}, engine {{.Server.Version}}' || true
    if command -v docker-compose >/dev/null; then docker-compose version --short | sed 's/^/docker-compose: /'; fi
    if docker compose version >/dev/null 2>&1; then docker compose version | sed 's/^/docker compose: /'; fi
    docker info --format 'storage driver: {{.Driver}}, cgroup: {{.CgroupVersion}}' 2>/dev/null || true
}

if command -v docker >/dev/null && engine_answers; then
    say "an engine already answers"
    print_versions
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    give_up "none answers and installing or starting one needs root (run this script as root)"
fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || give_up "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    start=$SECONDS
    if ! apt-get update -qq \
        || ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null; then
        give_up "apt-get could not install ${missing[*]}"
    fi
    say "installed in $((SECONDS - start)) s"
fi

if [[ -s "$DOCKERD_PIDFILE" ]] && kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
    say "dockerd (pid $(cat "$DOCKERD_PIDFILE")) is running but not answering yet; waiting"
else
    say "starting dockerd, log in $DOCKERD_LOG"
    # setsid: the engine outlives this script and is not killed with the CI step's process group.
    setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    echo $! >"$DOCKERD_PIDFILE"
fi

for ((i = 0; i < DOCKERD_WAIT_S; i++)); do
    if engine_answers; then
        say "engine up after ${i} s (pid $(cat "$DOCKERD_PIDFILE"); stop it with: kill $(cat "$DOCKERD_PIDFILE"))"
        print_versions
        exit 0
    fi
    if ! kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
        tail -n 20 "$DOCKERD_LOG" | sed 's/^/  dockerd: /'
        rm -f "$DOCKERD_PIDFILE"
        give_up "dockerd exited at start (kernel, cgroup or privilege limits of this machine?)"
    fi
    sleep 1
done
tail -n 20 "$DOCKERD_LOG" | sed 's/^/  dockerd: /'
give_up "dockerd did not answer within ${DOCKERD_WAIT_S} s (it is still running as pid $(cat "$DOCKERD_PIDFILE"))"
