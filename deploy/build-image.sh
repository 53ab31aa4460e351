#!/usr/bin/env bash
# Build the Tidelog node image the way this machine can: the ordinary Dockerfile build when a
# container registry is reachable, the offline path (deploy/offline-image.sh) only when not.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/build-image.sh [--image NAME] [--mode auto|online|offline] [--base NAME] [--print-mode]

  online    docker build -f deploy/Dockerfile -t IMAGE .   (base image from the registry,
            wheels from PyPI: what users with Docker Hub do)
  offline   deploy/offline-image.sh --image IMAGE           (no registry: a debootstrap base and a
            wheelhouse made on the host; needs debootstrap and root the first time)
  auto      (default) online when the Dockerfile's base image is already local or the registry
            answers for it within $TIDELOG_REGISTRY_PROBE_S seconds (default 10), else offline.
            An online build that fails (e.g. PyPI unreachable from inside builds) falls back to
            offline, saying so.

  --base NAME    the base image of online builds (default: the Dockerfile's BASE_IMAGE)
  --print-mode   print the mode auto would choose and why ("offline: ..."), build nothing.

Environment: TIDELOG_IMAGE (default tidelog:local), TIDELOG_IMAGE_BUILD (the --mode default),
TIDELOG_REGISTRY_PROBE_S.
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${TIDELOG_IMAGE:-tidelog:local}
MODE=${TIDELOG_IMAGE_BUILD:-auto}
PROBE_S=${TIDELOG_REGISTRY_PROBE_S:-10}
PRINT_ONLY=0
BASE=""
while (($#)); do
    case $1 in
        --image) IMAGE=${2:?--image needs a name}; shift ;;
        --mode) MODE=${2:?--mode needs auto, online or offline}; shift ;;
        --base) BASE=${2:?--base needs an image name}; shift ;;
        --print-mode) PRINT_ONLY=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case $MODE in auto | online | offline) ;; *) echo "build-image.sh: bad mode $MODE" >&2; exit 2 ;; esac

say() { echo "build-image: $*" >&2; }

# The base image of an online build: the Dockerfile's own default, so there is one place to change.
DEFAULT_BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/deploy/Dockerfile" | head -n 1)
[[ -n "$DEFAULT_BASE" ]] || { say "no 'ARG BASE_IMAGE=' in deploy/Dockerfile"; exit 1; }
BASE=${BASE:-$DEFAULT_BASE}
BUILD_ARGS=()
[[ "$BASE" == "$DEFAULT_BASE" ]] || BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE")

# Prints "online: WHY" or "offline: WHY". Quick: a local image is a lookup, and a registry that
# cannot be reached fails in well under a second (no DNS) or after PROBE_S at most.
choose_mode() {
    if docker image inspect "$BASE" >/dev/null 2>&1; then
        echo "online: base image $BASE is present locally"
        return
    fi
    local err
    if err=$(timeout "$PROBE_S" docker manifest inspect "$BASE" 2>&1 >/dev/null); then
        echo "online: the registry answers for $BASE"
        return
    fi
    if [[ "$err" == *experimental* ]]; then  # an old CLI without `docker manifest`: pull instead
        if err=$(timeout "$PROBE_S" docker pull -q "$BASE" 2>&1 >/dev/null); then
            echo "online: pulled $BASE"
            return
        fi
    fi
    [[ -n "$err" ]] || err="no answer within ${PROBE_S} s"
    echo "offline: no registry for $BASE ($(echo "$err" | tail -n 1 | cut -c1-160))"
}

if [[ "$MODE" == auto ]]; then
    decision=$(choose_mode)
else
    decision="$MODE: chosen with --mode/TIDELOG_IMAGE_BUILD"
fi
if ((PRINT_ONLY)); then
    echo "$decision"
    exit 0
fi
say "$decision"

if [[ "$decision" == online* ]]; then
    say "docker build -f deploy/Dockerfile ${BUILD_ARGS[*]} -t $IMAGE ."
    if docker build -f "$ROOT/deploy/Dockerfile" "${BUILD_ARGS[@]}" -t "$IMAGE" "$ROOT" >&2; then
        exit 0
    fi
    [[ "$MODE" == auto ]] || { say "the online build failed"; exit 1; }
    say "the online build failed; falling back to the offline build"
fi
exec "$ROOT/deploy/offline-image.sh" --image "$IMAGE"
