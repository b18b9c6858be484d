# shellcheck shell=bash
# Shared helpers for the side-by-side benchmark scripts in benches/: building the imgbuild
# release binary, installing peer tools, timing commands, medians, private registries, tables.
# Sourced by benches/build.sh and benches/push.sh; not meant to be run on its own.

set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root: docker, buildah and imgbuild RUN steps need it"
}

# ensure_command COMMAND DEBIAN_PACKAGE: installs the package with apt-get when COMMAND is missing.
ensure_command() {
    local command=$1 package=$2
    command -v "$command" >/dev/null 2>&1 && return 0
    log "installing $package (for $command)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >"$WORK/apt-$package.log" 2>&1 ||
        die "apt-get install $package failed, see $WORK/apt-$package.log"
    command -v "$command" >/dev/null 2>&1 || die "$package installed but $command is still missing"
}

# make_workdir NAME: a fresh scratch directory in $WORK, removed on exit unless BENCH_KEEP=1.
make_workdir() {
    WORK="$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/imgbuild-bench-$1.XXXXXX")"
    log "scratch directory: $WORK"
}

# compile_imgbuild: `cargo build --release`, then copies the binary into $WORK so a concurrent
# build in a shared target directory cannot swap it mid-run. Sets IMGBUILD.
# IMGBUILD_BIN=/path skips the build and benchmarks that binary instead.
compile_imgbuild() {
    if [[ -n ${IMGBUILD_BIN:-} ]]; then
        [[ -x $IMGBUILD_BIN ]] || die "IMGBUILD_BIN=$IMGBUILD_BIN is not an executable"
        cp "$IMGBUILD_BIN" "$WORK/imgbuild"
    else
        log "cargo build --release"
        (cd "$REPO_DIR" && cargo build --release --bin imgbuild >"$WORK/cargo.log" 2>&1) ||
            die "cargo build --release failed, see $WORK/cargo.log"
        local target_dir
        target_dir="$(cd "$REPO_DIR" && cargo metadata --format-version 1 --no-deps |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
        cp "$target_dir/release/imgbuild" "$WORK/imgbuild"
    fi
    IMGBUILD="$WORK/imgbuild"
    log "imgbuild: $("$IMGBUILD" --version)"
}

# free_port: a TCP port on 127.0.0.1 nobody listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# registry_start NAME: starts a private `docker-registry` on 127.0.0.1 with an empty data dir
# $WORK/NAME-data; sets REGISTRY (host:port) and REGISTRY_DATA. Only one at a time.
REGISTRY_PID=""
registry_start() {
    local name=$1 port
    port="$(free_port)"
    REGISTRY_DATA="$WORK/$name-data"
    rm -rf "$REGISTRY_DATA"
    mkdir -p "$REGISTRY_DATA"
    cat >"$WORK/$name.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REGISTRY_DATA
http:
  addr: 127.0.0.1:$port
EOF
    docker-registry serve "$WORK/$name.yml" >>"$WORK/$name.log" 2>&1 &
    REGISTRY_PID=$!
    REGISTRY="127.0.0.1:$port"
    local tries=0
    until curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; do
        tries=$((tries + 1))
        ((tries < 100)) || die "registry on $REGISTRY did not start, see $WORK/$name.log"
        sleep 0.1
    done
}

registry_stop() {
    if [[ -n $REGISTRY_PID ]]; then
        kill "$REGISTRY_PID" 2>/dev/null || true
        wait "$REGISTRY_PID" 2>/dev/null || true
        REGISTRY_PID=""
    fi
}

# data_bytes DIR: total bytes of the files under DIR.
data_bytes() { du -sb "$1" | cut -f1; }

now() { date +%s.%N; }

# timed LOGFILE COMMAND...: runs COMMAND with its output appended to LOGFILE and prints the
# elapsed wall-clock seconds; a failing COMMAND stops the benchmark.
timed() {
    local logfile=$1 start end
    shift
    printf '\n$ %s\n' "$*" >>"$logfile"
    start="$(now)"
    "$@" >>"$logfile" 2>&1 || die "command failed: $* (see $logfile)"
    end="$(now)"
    python3 -c "print(f'{$end - $start:.3f}')"
}

# median VALUES...: the median of the numbers ("-" when there are none).
median() {
    (($# > 0)) || {
        echo "-"
        return
    }
    printf '%s\n' "$@" | python3 -c '
import statistics, sys
values = [float(line) for line in sys.stdin if line.strip()]
print(f"{statistics.median(values):.3f}")'
}

# ratio A B: A / B with two decimals ("-" when either is missing).
ratio() {
    python3 -c "
import sys
a, b = sys.argv[1], sys.argv[2]
print('-' if '-' in (a, b) or float(b) == 0 else f'{float(a) / float(b):.2f}')" "$1" "$2"
}

# verdict RATIO OP TARGET: "ok" or "MISSED" for a ratio against a target (OP is <= or >=).
verdict() {
    python3 -c "
import sys
r, op, t = sys.argv[1:]
if r == '-':
    print('n/a')
else:
    ok = float(r) <= float(t) if op == '<=' else float(r) >= float(t)
    print('ok' if ok else 'MISSED')" "$1" "$2" "$3"
}

machine_summary() {
    printf 'machine: %s, %s CPUs, %s GiB RAM, kernel %s; load average %s\n' \
        "$(hostname)" "$(nproc)" "$(free -g | awk '/^Mem:/ {print $2}')" "$(uname -r)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
}
