#!/usr/bin/env bash
# Build the kvstore images on a machine with no image registry.
#
#   scripts/build-image.sh              # kvstore:latest
#   scripts/build-image.sh --monitoring # also kvstore-prometheus:latest
#
# 1. A Debian bookworm base image (kvstore-base:bookworm) made locally:
#    debootstrap --variant=minbase into a folder, packed to a tarball, then
#    `docker import`. The tarball is kept under $KVSTORE_IMAGE_CACHE (default
#    ~/.cache/kvstore-image) and the image in the engine, so a rebuild with the
#    same Debian suite skips this step (delete both to refresh the base). The
#    host's local CAs (/usr/local/share/ca-certificates) go into the base, so
#    that the build reaches PyPI wherever the host does.
# 2. The project image from the Dockerfile on top of it: python3 from Debian,
#    the project's dependencies from PyPI (the build uses the host's network).
#    Docker's layer cache keeps the dependency layer while pyproject.toml is
#    unchanged, so a rebuild after a code change takes seconds.
#
# On a machine that can pull, none of this is needed: `docker compose build`
# builds the same Dockerfile on debian:bookworm-slim (the BASE_IMAGE default).
set -euo pipefail
cd "$(dirname "$0")/.."

suite=bookworm
base_image=${KVSTORE_BASE_IMAGE:-kvstore-base:$suite}
image=${KVSTORE_IMAGE:-kvstore:latest}
prometheus_image=${KVSTORE_PROMETHEUS_IMAGE:-kvstore-prometheus:latest}
cache_dir=${KVSTORE_IMAGE_CACHE:-$HOME/.cache/kvstore-image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
monitoring=0
for arg in "$@"; do
    case $arg in
        --monitoring) monitoring=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[build-image] %s\n' "$*" >&2; }

if docker image inspect "$base_image" >/dev/null 2>&1; then
    log "base image $base_image present"
else
    tarball=$cache_dir/$suite-minbase.tar
    if [[ ! -s $tarball ]]; then
        command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install debootstrap"; exit 1; }
        mkdir -p "$cache_dir"
        rootfs=$(mktemp -d "$cache_dir/rootfs.XXXXXX")
        trap 'rm -rf "$rootfs"' EXIT
        log "debootstrap $suite (minbase) into $rootfs"
        debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >&2
        # apt in a container: no recommends, no docs, clean lists (as Docker's debian images do).
        printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
            > "$rootfs/etc/apt/apt.conf.d/90kvstore-norecommends"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        # The host's own CAs (e.g. a proxy's): the image's ca-certificates adds them to its bundle.
        if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
            mkdir -p "$rootfs/usr/local/share/ca-certificates"
            cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        fi
        tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
        trap - EXIT
    fi
    log "docker import $tarball as $base_image"
    docker import --change 'CMD ["/bin/bash"]' "$tarball" "$base_image" >/dev/null
fi

# Build, then drop the image the tag pointed to before if nothing uses it (no dangling rebuilds).
build() {  # tag context [docker build args...]
    local tag=$1 context=$2 before after
    shift 2
    before=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    log "building $tag"
    docker build --network host --build-arg "BASE_IMAGE=$base_image" -t "$tag" "$@" "$context" >&2
    after=$(docker image inspect -f '{{.Id}}' "$tag")
    if [[ -n $before && $before != "$after" ]]; then
        docker rmi "$before" >/dev/null 2>&1 || true
    fi
}
build "$image" . -f Dockerfile
if (( monitoring )); then
    build "$prometheus_image" deploy/prometheus
fi
log "done"
