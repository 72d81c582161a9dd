#!/usr/bin/env bash
# Build Dragonfly's own binaries for the interop suite (tests/interop, docs/interop.md) into a cache outside the
# repository; tests/interop skips what is missing, and .ci/run runs it when the binaries are there (CI does not
# build them: the Rust client takes ~50 minutes on 2 idle cores, hours on busy ones: RocksDB alone is ~330 C++ files).
#   scripts/interop-deps.sh [api|go|rust|all]...     default: all
# Environment:
#   INTEROP_CACHE   default ~/.cache/dragonfly-p2p/interop; layout: src/api, src/dragonfly, bin/go/scheduler,
#                   bin/rust/bin/{dfdaemon,dfget}
#   INTEROP_BIN     where the binaries go (and where tests/interop looks), default $INTEROP_CACHE/bin: for
#                   binaries built elsewhere, laid out as go/scheduler and rust/bin/{dfdaemon,dfget}
#   DRAGONFLY_REF   dragonflyoss/dragonfly tag or commit for the Go scheduler (default v2.5.1)
#   CLIENT_VERSION  crates.io dragonfly-client version (default 1.5.10)
#   API_REF         dragonflyoss/api commit the validation table is checked against (default: the one it names)
#   ROCKSDB_LIB_DIR read by the client's librocksdb-sys: a directory holding a prebuilt librocksdb (RocksDB 10.4, the
#                   one librocksdb-sys 0.17 binds) to link instead of compiling RocksDB's ~330 C++ files, most of the
#                   build on a busy machine; the binaries then load it at run time (ld.so.conf or LD_LIBRARY_PATH)
#   ROCKSDB_PREBUILT=maven   fetch that library from Maven Central instead (rocksdbjni 10.4.2's linux64 .so, which
#                   exports RocksDB's C API; checked against Maven's SHA-1) into $INTEROP_CACHE/rocksdb/lib, link
#                   it, and record that directory as the binaries' run path: the build takes ~40 min instead of hours
# Needs git and Go (scheduler); cargo plus Debian's clang libclang-dev protobuf-compiler cmake (client, RocksDB is
# compiled from C++; installed here with apt-get when run as root). Already-built binaries are kept.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dragonfly-p2p/interop}
bin=${INTEROP_BIN:-$cache/bin}
dragonfly_ref=${DRAGONFLY_REF:-v2.5.1}
client_version=${CLIENT_VERSION:-1.5.10}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(all)
want() { for p in "${parts[@]}"; do [ "$p" = all ] || [ "$p" = "$1" ] && return 0; done; return 1; }
mkdir -p "$cache/src" "$bin"

fetch_rocksdbjni() {  # fetch_rocksdbjni DIR: print DIR/lib, holding librocksdb.so from Maven's rocksdbjni 10.4.2
    # Each step returns on failure itself: errexit does not reach into the command substitution that calls this.
    local dir=$1 url=https://repo1.maven.org/maven2/org/rocksdb/rocksdbjni/10.4.2/rocksdbjni-10.4.2-linux64.jar
    if [ ! -e "$dir/lib/librocksdb.so" ]; then
        mkdir -p "$dir/lib" || return 1
        curl -fsSL -o "$dir/rocksdbjni.jar" "$url" || return 1
        curl -fsSL -o "$dir/rocksdbjni.jar.sha1" "$url.sha1" || return 1
        echo "$(cut -c1-40 "$dir/rocksdbjni.jar.sha1")  $dir/rocksdbjni.jar" | sha1sum -c --quiet - >&2 || {
            echo "interop-deps.sh: $url does not match Maven's SHA-1" >&2
            return 1
        }
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("librocksdbjni-linux64.so", sys.argv[2])' \
            "$dir/rocksdbjni.jar" "$dir/lib" || return 1
        ln -sf librocksdbjni-linux64.so "$dir/lib/librocksdb.so" || return 1
    fi
    echo "$dir/lib"
}

clone() {  # clone URL DIR REF
    if [ ! -d "$2/.git" ]; then
        git clone --quiet "$1" "$2"
    fi
    git -C "$2" fetch --quiet --tags origin || echo "interop-deps.sh: cannot fetch $1; using what $2 has" >&2
    git -C "$2" checkout --quiet "$3"
}

if want api; then
    ref=${API_REF:-$(sed -n 's/^SOURCE = "github.com\/dragonflyoss\/api@\([0-9a-f]*\)"/\1/p' \
        "$repo/dragonfly/common/validation_rules.py")}
    clone https://github.com/dragonflyoss/api "$cache/src/api" "${ref:-HEAD}"
    echo "interop-deps.sh: dragonflyoss/api at $(git -C "$cache/src/api" rev-parse --short HEAD) in $cache/src/api"
fi

if want go; then
    if [ -x "$bin/go/scheduler" ]; then
        echo "interop-deps.sh: Go scheduler already built: $bin/go/scheduler"
    else
        command -v go >/dev/null || { echo "interop-deps.sh: go not found" >&2; exit 1; }
        clone https://github.com/dragonflyoss/dragonfly "$cache/src/dragonfly" "$dragonfly_ref"
        mkdir -p "$bin/go"
        # The Go module proxy may refuse d7y.io/dragonfly/v2 itself: build inside its source tree (its
        # dependencies still come from the proxy).
        (cd "$cache/src/dragonfly" && CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 go build -p 2 \
            -ldflags "-X d7y.io/dragonfly/v2/version.GitVersion=$(git describe --tags --always)" \
            -o "$bin/go/scheduler" ./cmd/scheduler)
        echo "interop-deps.sh: built $bin/go/scheduler"
    fi
fi

if want rust; then
    if [ -x "$bin/rust/bin/dfdaemon" ] && [ -x "$bin/rust/bin/dfget" ]; then
        echo "interop-deps.sh: Rust client already built: $bin/rust/bin"
    else
        command -v cargo >/dev/null || { echo "interop-deps.sh: cargo not found" >&2; exit 1; }
        missing=()
        for tool in clang protoc cmake; do command -v "$tool" >/dev/null || missing+=("$tool"); done
        if [ ${#missing[@]} -gt 0 ]; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                apt-get install -y --no-install-recommends clang libclang-dev protobuf-compiler cmake
            else
                echo "interop-deps.sh: missing ${missing[*]}: install clang libclang-dev protobuf-compiler cmake" >&2
                exit 1
            fi
        fi
        if [ -z "${ROCKSDB_LIB_DIR:-}" ] && [ "${ROCKSDB_PREBUILT:-}" = maven ]; then
            rocksdb_lib=$(fetch_rocksdbjni "$cache/rocksdb")
            export ROCKSDB_LIB_DIR=$rocksdb_lib
            export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-rpath,$rocksdb_lib"
        fi
        # Thin LTO and many codegen units: the crate's fat-LTO release profile takes hours on 2 cores.
        CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 nice -n 19 \
            cargo install --locked dragonfly-client --version "$client_version" --root "$bin/rust"
        echo "interop-deps.sh: built $bin/rust/bin/{dfdaemon,dfget}"
    fi
fi
