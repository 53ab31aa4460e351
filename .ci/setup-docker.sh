#!/usr/bin/env bash
# Make a Docker engine reachable for the tests marked `docker`, when this machine can have one.
#
#   .ci/setup-docker.sh            install (as root) and start dockerd if none answers; never fails CI
#                                  when an engine genuinely cannot run here: it says why and exits 0,
#                                  so the docker tests skip with a reason instead.
#   TIDELOG_REQUIRE_DOCKER=1 ...   the same, but exit 1 when no engine can be had (a CI that must run
#                                  the docker tests).
#   .ci/setup-docker.sh --dry-run  say what it would install or start, and do nothing.
#
# What it does, in order:
#   1. `docker info` answers → print versions, go to 4.
#   2. As root: apt-get update, then install what is missing of docker.io and docker-compose (v1,
#      1.29 in bookworm).
#   3. As root: start dockerd detached (setsid), logging to $DOCKERD_LOG, its PID in $DOCKERD_PIDFILE,
#      and poll `docker info` for up to $DOCKERD_WAIT_S seconds.
#   4. The tools of the image build: the tests build the image with deploy/build-image.sh, which
#      uses the ordinary Dockerfile when a registry answers and deploy/offline-image.sh when not;
#      the offline path needs debootstrap, so as root it is installed then (also on a machine that
#      already had an engine: step 1 used to end the script there, and 11 docker tests failed).
# Stop the engine it started with: kill "$(cat /run/tidelog-dockerd.pid)".
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/tidelog-dockerd.log}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/run/tidelog-dockerd.pid}
DOCKERD_WAIT_S=${DOCKERD_WAIT_S:-60}
REQUIRE=${TIDELOG_REQUIRE_DOCKER:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY_RUN=0
[[ "${1:-}" == --dry-run ]] && DRY_RUN=1

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

apt_install() {  # apt_install PACKAGE...: as root, or only said with --dry-run
    if ((DRY_RUN)); then
        say "would install: $*"
        return 0
    fi
    say "installing $*"
    local start=$SECONDS
    apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
            >/dev/null || return 1
    say "installed in $((SECONDS - start)) s"
}

# Step 4: debootstrap when the image must be built offline (deploy/build-image.sh decides).
ensure_image_build_tools() {
    local mode
    mode=$("$ROOT/deploy/build-image.sh" --print-mode 2>/dev/null) || mode="offline: the probe failed"
    say "image build: $mode"
    if [[ "$mode" != offline* ]] || command -v debootstrap >/dev/null; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        say "debootstrap is missing (the offline image build needs it); install it as root"
    elif apt_install debootstrap; then
        return 0
    else
        say "apt-get could not install debootstrap"
    fi
    if [[ "$REQUIRE" == 1 ]]; then exit 1; fi
    say "the docker tests will fail at the image build"
}

print_versions() {
    docker version --format 'docker: client {{.Client.Version}}, engine {{.Server.Version}}' || true
    if command -v docker-compose >/dev/null; then docker-compose version --short | sed 's/^/docker-compose: /'; fi
    if docker compose version >/dev/null 2>&1; then docker compose version | sed 's/^/docker compose: /'; fi
    docker info --format 'storage driver: {{.Driver}}, cgroup: {{.CgroupVersion}}' 2>/dev/null || true
}

if command -v docker >/dev/null && engine_answers; then
    say "an engine already answers"
    print_versions
    ensure_image_build_tools
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    give_up "none answers and installing or starting one needs root (run this script as root)"
fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || give_up "missing ${missing[*]} and no apt-get to install them"
    apt_install "${missing[@]}" || give_up "apt-get could not install ${missing[*]}"
fi
if ((DRY_RUN)); then
    say "would start dockerd, then check the image build's tools"
    exit 0
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
        ensure_image_build_tools
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
