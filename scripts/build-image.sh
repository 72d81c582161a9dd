#!/usr/bin/env bash
# Build the container image from the wheels in dist/ with buildah (no container engine or daemon needed), then
# run the demo inside it.
#   scripts/build-image.sh [TAG]        default tag: localhost/dragonfly-p2p:<version>
# Environment:
#   BASE         base image with python3.11 + venv (default: built here from Debian packages with debootstrap,
#                because only package registries are reachable from CI; set docker.io/library/python:3.11-slim-bookworm
#                where a container registry is)
#   IMAGE_CACHE  where the debootstrapped base is cached between runs (default ~/.cache/dragonfly-p2p/image)
#   BUILDAH_ROOT buildah's storage (default $IMAGE_CACHE/storage); vfs driver and chroot isolation, so it works as
#                root in a plain container or VM without overlayfs, user namespaces or a running daemon
#   SKIP_DEMO=1  do not run `dragonfly up --demo` inside the image
#   PYTHON       the interpreter whose pip fetches the dependency wheels (default .venv/bin/python)
# Needs root, buildah and debootstrap (Debian packages), and dist/ from scripts/build-dist.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version=$(python3 -c 'import tomllib; print(tomllib.load(open("'"$repo"'/Cargo.toml", "rb"))["workspace"]["package"]["version"])')
tag=${1:-localhost/dragonfly-p2p:$version}
cache=${IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dragonfly-p2p/image}
storage=${BUILDAH_ROOT:-$cache/storage}
suite=bookworm   # its python3 is 3.11, the interpreter the wheels are built for
buildah=(buildah --storage-driver vfs --root "$storage" --runroot "$storage/run")

for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "build-image.sh: $tool not found (apt-get install buildah debootstrap)" >&2; exit 1; }
done
ls "$repo"/dist/*.whl >/dev/null 2>&1 || { echo "build-image.sh: no wheels in dist/; run scripts/build-dist.sh first" >&2; exit 1; }
mkdir -p "$cache" "$storage"

base=${BASE:-}
if [ -z "$base" ]; then
    base=localhost/dragonfly-base:$suite
    if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
        echo "build-image.sh: making $base from Debian packages (debootstrap, once; cached in $storage)"
        rootfs=$(mktemp -d)
        trap 'rm -rf "$rootfs"' EXIT
        debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
            || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
        # What a slim image leaves out: package caches and lists, documentation, man pages, translations.
        rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
            "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
        container=$("${buildah[@]}" from scratch)
        "${buildah[@]}" copy --quiet "$container" "$rootfs" /
        "${buildah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/sh "$container"
        "${buildah[@]}" commit --quiet --rm "$container" "$base" >/dev/null
        rm -rf "$rootfs"
        trap - EXIT
    fi
fi

# The build context: the three wheels and every dependency's, fetched here (where the index is reachable and trusted)
# so that the image build installs offline.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# pip resolves environment markers with this interpreter's version, not the image's: what the image's older Python
# needs besides is named here (bookworm's python3 is 3.11.2; redis wants async-timeout below 3.11.3). A gap shows
# as "No matching distribution" from the offline install in the build.
"${PYTHON:-$repo/.venv/bin/python}" -m pip download --quiet --only-binary :all: --dest "$context/wheelhouse" \
    "$repo"/dist/*.whl 'async-timeout>=4.0.3'

echo "build-image.sh: building $tag on $base"
"${buildah[@]}" build --quiet --isolation chroot --layers=false --build-arg "BASE=$base" \
    -f "$repo/deploy/container/Containerfile" -t "$tag" "$context" >/dev/null
rm -rf "$context"
trap - EXIT
# vfs keeps a full copy per image: drop the previous build of this tag, now dangling.
"${buildah[@]}" rmi --prune >/dev/null 2>&1 || true

echo "build-image.sh: $tag built; $("${buildah[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$tag")"

# The image runs what it promises: its three commands, as the unprivileged user, and a whole demo cluster.
container=$("${buildah[@]}" from --quiet "$tag")
trap '"${buildah[@]}" rm "$container" >/dev/null' EXIT
run=("${buildah[@]}" run --isolation chroot "$container" --)
[ "$("${run[@]}" id -u)" = 65532 ] || { echo "build-image.sh: the image does not run as uid 65532" >&2; exit 1; }
for command in dragonfly dfdaemon dfget; do
    "${run[@]}" "$command" --version
done
if [ "${SKIP_DEMO:-0}" != 1 ]; then
    "${run[@]}" timeout 600 dragonfly up --demo --size 32MiB
fi
