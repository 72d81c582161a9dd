#!/usr/bin/env bash
# Install the Debian packages that the tests use (real servers and tools, started by the tests themselves).
# Idempotent; does nothing when everything is present.
set -euo pipefail
# systemd: systemd-analyze checks the units in deploy/systemd (it needs no running systemd).
# docker-registry, skopeo, containerd, apache2-utils (htpasswd): the container-image tests and `bench pull`.
# buildah, debootstrap: scripts/build-image.sh builds the container image without a daemon or a registry.
# redis-server: the manager's job queue across several managers (tests start their own server in a temp dir).
# postgresql: the manager's tests run its REST suite and migrations on a real PostgreSQL (tests/postgres.py starts
# a throwaway server in a temp dir; the packaged service is not used); mariadb-server-core: the manager's MySQL
# smoke subset (tests/mysql.py; only the server binaries, no service), and mariadb-client-core for the
# my_print_defaults that mariadb-install-db runs (mariadb-server-core does not depend on it).
# chromium: the web console's browser tests (Playwright drives Debian's headless Chromium; no browser download).
packages=(curl iproute2 systemd docker-registry skopeo containerd apache2-utils buildah debootstrap redis-server postgresql mariadb-server-core mariadb-client-core chromium)
# Test servers of the object storage backends, started by tests/integration/daemon/test_daemon_object_storage.py:
# Azurite (Azure Blob, from npm) and fake-gcs-server (GCS, a Go module). moto's S3 server comes from PyPI (test deps).
if [ "$(id -u)" -eq 0 ] && ! command -v azurite-blob >/dev/null && command -v npm >/dev/null; then
    npm install -g --silent azurite@3.37.0 >/dev/null
fi
if ! command -v fake-gcs-server >/dev/null && [ ! -x "$(go env GOPATH 2>/dev/null)/bin/fake-gcs-server" ] \
    && command -v go >/dev/null; then
    nice -n 10 go install github.com/fsouza/fake-gcs-server@v1.56.1
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps.sh: missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
