#!/usr/bin/env bash
# Build the Tidelog image without any container registry: the air-gapped path, and what CI uses.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/offline-image.sh [OPTIONS]

Builds the Tidelog node image (default tidelog:local) with no container registry and no network
inside the image build:

  1. base image   debootstrap a Debian bookworm "minbase" root with python3, python3-venv,
                  ca-certificates, iptables and iproute2, and `docker import` it as
                  tidelog/base:bookworm. Cached: skipped when that image exists (root needed
                  only when it must be made).
  2. wheelhouse   on this host, build the project's wheel and download its dependencies' wheels for
                  CPython 3.11 / manylinux into deploy/.wheelhouse (pip, through this host's index
                  configuration). Skipped, with no network, when the wheelhouse already satisfies
                  every requirement; the project's own wheel is rebuilt every time.
  3. image        docker build --network none -f deploy/Dockerfile with BASE_IMAGE=the base image
                  and OFFLINE=1 (install from the wheelhouse only). Docker's layer cache makes an
                  unchanged rebuild take seconds.

Options:
  --image NAME        image to build (default: $TIDELOG_IMAGE or tidelog:local)
  --base NAME         base image to make or reuse (default: tidelog/base:bookworm)
  --mirror URL        Debian mirror for debootstrap (default: the first bookworm "debian" URI in
                      this machine's apt sources, else http://deb.debian.org/debian)
  --rebuild-base      make the base image again even if it exists
  --refresh-wheels    empty the wheelhouse and download every wheel again
  --skip-image        stop after the base image and the wheelhouse
  --install-deps      as root: apt-get install what is missing of docker.io, docker-compose and
                      debootstrap first (it does not start the engine: see .ci/setup-docker.sh,
                      or `systemctl start docker`)
  -h, --help          this text

Environment: PYTHON (the host Python whose pip fetches wheels; default: .venv/bin/python when present,
else python3), TIDELOG_IMAGE.

Air-gapped hosts: run it once where PyPI and a Debian mirror are reachable, then carry the images
(`docker save tidelog:local | gzip > tidelog.tar.gz`, then `docker load`) or the deploy/.wheelhouse
folder plus a local Debian mirror (--mirror) across.
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${TIDELOG_IMAGE:-tidelog:local}
BASE=tidelog/base:bookworm
MIRROR=""
REBUILD_BASE=0
REFRESH_WHEELS=0
SKIP_IMAGE=0
INSTALL_DEPS=0
WHEELHOUSE=$ROOT/deploy/.wheelhouse
# The base image's interpreter (bookworm: CPython 3.11); wheels are fetched for it, whatever the host's.
PY_VERSION=3.11

while (($#)); do
    case $1 in
        --image) IMAGE=${2:?--image needs a name}; shift ;;
        --base) BASE=${2:?--base needs a name}; shift ;;
        --mirror) MIRROR=${2:?--mirror needs a URL}; shift ;;
        --rebuild-base) REBUILD_BASE=1 ;;
        --refresh-wheels) REFRESH_WHEELS=1 ;;
        --skip-image) SKIP_IMAGE=1 ;;
        --install-deps) INSTALL_DEPS=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "offline-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "offline-image: $*"; }
die() { echo "offline-image: error: $*" >&2; exit 1; }
step_start() { STEP_T0=$SECONDS; say "== $*"; }
step_done() { say "   done in $((SECONDS - STEP_T0)) s"; }
is_root() { [[ $(id -u) -eq 0 ]]; }
T0=$SECONDS

# ---- 0. tools -------------------------------------------------------------------------------------
if ((INSTALL_DEPS)); then
    is_root || die "--install-deps needs root"
    missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        step_start "installing ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
        step_done
    fi
fi
command -v docker >/dev/null || die "no docker command; install docker.io (or rerun as root with --install-deps)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer. Start it (systemctl start docker; \
without systemd, as root: setsid dockerd >/var/log/dockerd.log 2>&1 &) or run .ci/setup-docker.sh"

# ---- 1. base image --------------------------------------------------------------------------------
debian_mirror() {  # the first bookworm (not -security) "debian" URI of the apt sources
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    local uri
    uri=$(cat "${files[@]}" 2>/dev/null | awk '
        /^deb[ \t]/ && $0 ~ /bookworm/ && $0 !~ /security/ { print ($2 ~ /^\[/ ? $3 : $2); exit }
        /^URIs:/ { u = $2 } /^Suites:/ && $0 ~ /bookworm/ && u !~ /security/ { print u; exit }')
    echo "${uri:-http://deb.debian.org/debian}"
}

if ((!REBUILD_BASE)) && docker image inspect "$BASE" >/dev/null 2>&1; then
    say "== base image $BASE exists (cached; --rebuild-base makes it again)"
else
    is_root || die "making the base image needs root (debootstrap); rerun as root, or build online \
with: docker build -f deploy/Dockerfile -t $IMAGE ."
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap (or --install-deps)"
    MIRROR=${MIRROR:-$(debian_mirror)}
    ROOTFS=$(mktemp -d /var/tmp/tidelog-rootfs.XXXXXX)
    trap 'rm -rf "$ROOTFS"' EXIT
    step_start "debootstrap bookworm (minbase + python3) from $MIRROR into $ROOTFS"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,ca-certificates,iptables,iproute2 \
        bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
        || { tail -n 30 "$ROOTFS.log" >&2; die "debootstrap failed (full log: $ROOTFS.log)"; }
    rm -f "$ROOTFS.log"
    # What an image does not need: downloaded .debs, apt lists, manuals. Licences (doc/*/copyright) stay.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
        "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log \
        "$ROOTFS"/var/cache/debconf/*-old
    step_done
    step_start "docker import as $BASE"
    tar --numeric-owner -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase bookworm from $MIRROR" \
        - "$BASE" >/dev/null
    rm -rf "$ROOTFS"
    trap - EXIT
    step_done
fi
base_python=$(docker run --rm --network none "$BASE" python3 -c \
    'import sys; print("%d.%d" % sys.version_info[:2])')
[[ "$base_python" == "$PY_VERSION" ]] \
    || die "$BASE has Python $base_python, but the wheelhouse is for $PY_VERSION"

# ---- 2. wheelhouse --------------------------------------------------------------------------------
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON=...)"
case $(docker info --format '{{.Architecture}}') in
    x86_64 | amd64) ARCH=x86_64 ;;
    aarch64 | arm64) ARCH=aarch64 ;;
    *) die "unsupported engine architecture $(docker info --format '{{.Architecture}}')" ;;
esac
# Bookworm has glibc 2.36: any manylinux wheel up to that runs on it.
PLATFORMS=()
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_${ARCH}"); done
PLATFORMS+=(--platform "manylinux2014_${ARCH}" --platform "linux_${ARCH}")
TARGET=(--only-binary=:all: --python-version "$PY_VERSION" --implementation cp "${PLATFORMS[@]}")

step_start "wheelhouse $WHEELHOUSE (host pip: $("$PYTHON" -m pip --version | cut -d' ' -f1-2))"
((REFRESH_WHEELS)) && rm -rf "$WHEELHOUSE"
mkdir -p "$WHEELHOUSE"
# Build the project's wheel from a copy of the sources, so the build leaves no build/ or
# *.egg-info in a checkout that others may be using; it is rebuilt every run (the version does not
# change with each edit).
SRC=$(mktemp -d /tmp/tidelog-src.XXXXXX)
trap 'rm -rf "$SRC"' EXIT
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' -c pyproject.toml README.md LICENSE node client \
    chaos proto | tar -C "$SRC" -x
# SOURCE_DATE_EPOCH: fixed timestamps inside the wheel, so unchanged sources give identical bytes.
SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$SRC/dist" "$SRC"
built=$(ls "$SRC"/dist/tidelog-*.whl)
project_wheel=$WHEELHOUSE/$(basename "$built")
# Replace the wheelhouse's copy only when its bytes changed: the image build's COPY is then cached.
if cmp -s "$built" "$project_wheel"; then
    say "   $(basename "$built"): unchanged"
else
    rm -f "$WHEELHOUSE"/tidelog-*.whl
    cp "$built" "$project_wheel"
    say "   $(basename "$built"): built from the current sources"
fi
rm -rf "$SRC"
trap - EXIT
# The dependencies: from the wheelhouse alone when it has them all (no network), else from the index.
if "$PYTHON" -m pip download --quiet --no-index --find-links "$WHEELHOUSE" --dest "$WHEELHOUSE" \
    "${TARGET[@]}" "$project_wheel" >/dev/null 2>&1; then
    say "   dependencies: all present already (no download)"
else
    say "   dependencies: downloading for CPython $PY_VERSION, manylinux $ARCH"
    "$PYTHON" -m pip download --quiet --find-links "$WHEELHOUSE" --dest "$WHEELHOUSE" \
        "${TARGET[@]}" "$project_wheel"
fi
say "   $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1):" \
    "$(cd "$WHEELHOUSE" && ls -- *.whl | sed 's/-py[0-9].*\|-cp[0-9].*//' | sort | tr '\n' ' ')"
step_done

# ---- 3. image -------------------------------------------------------------------------------------
if ((SKIP_IMAGE)); then
    say "skipping the image build (--skip-image); total $((SECONDS - T0)) s"
    exit 0
fi
step_start "docker build $IMAGE from $BASE, offline (--network none)"
revision=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
docker build --network none \
    --build-arg BASE_IMAGE="$BASE" --build-arg OFFLINE=1 \
    --label org.opencontainers.image.revision="$revision" \
    --file "$ROOT/deploy/Dockerfile" --tag "$IMAGE" "$ROOT"
step_done
say "$IMAGE: $(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')," \
    "base $BASE: $(docker image inspect "$BASE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
say "total $((SECONDS - T0)) s. Next: docker-compose -f deploy/docker-compose.yml up -d (see deploy/README.md)"
