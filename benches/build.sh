#!/usr/bin/env bash
# Side-by-side build benchmark: imgbuild vs `docker build` (BuildKit) vs `buildah bud --layers`
# on a generated, seeded context (thousands of small source files + tens of MB of assets):
# cold, warm and incremental builds, and build+push end to end. Prints medians and ratios.
#
# Usage (as root, from anywhere):  benches/build.sh
# Environment:
#   BENCH_RUNS=3            runs per scenario and tool (the median is reported)
#   BENCH_BASE=debian       debian (debootstrap bookworm minbase, cached in ~/.cache) or busybox
#   BENCH_SOURCE_FILES=5000 BENCH_ASSET_MB=40   size of the generated context
#   BENCH_TOOLS="imgbuild docker buildah"       which tools to run
#   BENCH_SETTLE_SECONDS=61 pause after cache resets before timing (see reset_all)
#   BENCH_SETTLE_EACH=0     1: also pause that long before every cold and build+push build, so
#                           no build runs within 60 s of another tool's file deletions
#   BENCH_KEEP=1            keep the scratch directory (logs, context, stores)
#   IMGBUILD_BIN=PATH       benchmark this binary instead of `cargo build --release`
# Everything listens on 127.0.0.1 only: a private docker-registry on a free port holds the base
# image and the pushed images, and is removed with the scratch directory at the end.

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${BENCH_RUNS:-3}
SETTLE=${BENCH_SETTLE_SECONDS:-61}
BASE_KIND=${BENCH_BASE:-debian}
SOURCE_FILES=${BENCH_SOURCE_FILES:-5000}
ASSET_MB=${BENCH_ASSET_MB:-40}
read -r -a TOOLS <<<"${BENCH_TOOLS:-imgbuild docker buildah}"
PEER_REGISTRY=${IMGBUILD_TEST_PEER_REGISTRY:-127.0.0.1:5000}
BUSYBOX=${IMGBUILD_TEST_BASE_IMAGE:-$PEER_REGISTRY/test/busybox:latest}
DOCKER=/usr/bin/docker # the 20.10 client: it has BuildKit (the v28 one has no buildx)
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/imgbuild-bench

require_root
make_workdir build
CTX="$WORK/context"
IMGBUILD_ROOT="$WORK/imgbuild-root-0"
BUILDAH_ROOT="$WORK/buildah-root-0"
BUILDAH_RUNROOT="$WORK/buildah-runroot-0"
DOCKER_IIDS="$WORK/docker-image-ids"
DOCKER_TAGS="$WORK/docker-tags"
touch "$DOCKER_IIDS" "$DOCKER_TAGS"

cleanup() {
    local status=$?
    set +e
    registry_stop
    if [[ -x ${BUILDAH:-} ]]; then
        for root in "$WORK"/buildah-root-*; do
            [[ -d $root ]] || continue
            buildah --root "$root" --runroot "${root/buildah-root/buildah-runroot}" rm -a \
                >/dev/null 2>&1
            umount -R "$root/overlay" 2>/dev/null
        done
    fi
    if [[ -s $DOCKER_TAGS ]]; then
        xargs -r "$DOCKER" rmi -f <"$DOCKER_TAGS" >/dev/null 2>&1
    fi
    if [[ -s $DOCKER_IIDS ]]; then
        sort -u "$DOCKER_IIDS" | xargs -r "$DOCKER" rmi -f >/dev/null 2>&1
        "$DOCKER" builder prune -af >/dev/null 2>&1
    fi
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

has_tool() {
    local tool
    for tool in "${TOOLS[@]}"; do [[ $tool == "$1" ]] && return 0; done
    return 1
}

# ---------------------------------------------------------------- setup (not timed)

ensure_command python3 python3
ensure_command curl curl
ensure_command docker-registry docker-registry
ensure_command skopeo skopeo
[[ -x $DOCKER ]] || die "$DOCKER (docker 20.10 with BuildKit) is missing"
"$DOCKER" info >/dev/null 2>&1 || die "the Docker engine is not running"
BUILDAH_SKIP_REASON=""
if has_tool buildah; then
    ensure_command buildah buildah
    ensure_command runc runc
    BUILDAH="$(command -v buildah)"
fi
compile_imgbuild

buildah_cmd() { buildah --root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" "$@"; }

registry_start registry
log "private registry: $REGISTRY"

# The base image goes into the private registry, then every tool pulls it (untimed).
make_base_image() {
    BASE="$REGISTRY/bench/base:$BASE_KIND"
    if [[ $BASE_KIND == debian ]]; then
        local tarball="$CACHE_DIR/debian-bookworm-minbase.tar"
        if [[ ! -s $tarball ]]; then
            ensure_command debootstrap debootstrap
            log "debootstrap --variant=minbase bookworm (once; cached in $tarball)"
            mkdir -p "$CACHE_DIR"
            local rootfs="$WORK/debian-rootfs"
            if debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian \
                >"$WORK/debootstrap.log" 2>&1; then
                tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
                rm -rf "$rootfs"
            else
                log "debootstrap failed (see $WORK/debootstrap.log): falling back to busybox"
                rm -rf "$rootfs"
                BASE_KIND=busybox
                make_base_image
                return
            fi
        fi
        "$DOCKER" import "$tarball" "$BASE" >>"$WORK/setup.log" 2>&1
        echo "$BASE" >>"$DOCKER_TAGS"
        "$DOCKER" push "$BASE" >>"$WORK/setup.log" 2>&1
    else
        skopeo copy --src-tls-verify=false --dest-tls-verify=false \
            "docker://$BUSYBOX" "docker://$BASE" >>"$WORK/setup.log" 2>&1
        "$DOCKER" pull "$BASE" >>"$WORK/setup.log" 2>&1
        echo "$BASE" >>"$DOCKER_TAGS"
    fi
}
make_base_image
log "base image: $BASE"

log "generating the context: $SOURCE_FILES source files, $ASSET_MB MB of assets"
python3 "$BENCH_DIR/gen_context.py" source "$CTX/src" --files "$SOURCE_FILES"
python3 "$BENCH_DIR/gen_context.py" assets "$CTX/assets" --mb "$ASSET_MB"
cat >"$CTX/Dockerfile" <<EOF
FROM $BASE
ENV APP_HOME=/app
RUN mkdir -p /app/bin /app/etc && echo 'threads = 4' > /app/etc/app.conf
COPY assets/ /app/assets/
COPY src/ /src/
WORKDIR /src
RUN find /src -name '*.c' | wc -l > /app/count && tar c /src | gzip > /app/src.tgz && ls -l /app
EOF
CHANGED_FILE="$(find "$CTX/src" -name '*.c' | sort | sed -n 1p)"
CONTEXT_SUMMARY="$(find "$CTX" -type f | wc -l) files, $(du -sh --apparent-size "$CTX" | cut -f1)"
log "context: $CONTEXT_SUMMARY"

# ---------------------------------------------------------------- per-tool steps

# reset_TOOL: empty build cache, base image present locally (not timed). Every reset uses a new
# store directory and old ones are only deleted at the end: this filesystem (ext4 without a
# journal) skips inodes freed in the last 60 s (6 min while their inode table block is dirty)
# when it allocates new ones, scanning past each of them, and `perf` showed builds spending
# most of their time in ext4 `recently_deleted` right after an `rm -rf` nearby. For the same
# reason the scenarios sleep BENCH_SETTLE_SECONDS after `docker builder prune` (which deletes
# files) and `sync` before timing anything.
GENERATION=0
reset_imgbuild() {
    IMGBUILD_ROOT="$WORK/imgbuild-root-$GENERATION"
    "$IMGBUILD" --root "$IMGBUILD_ROOT" pull "$BASE" >>"$WORK/setup.log" 2>&1
}
reset_docker() {
    "$DOCKER" builder prune -af >>"$WORK/setup.log" 2>&1
}
reset_buildah() {
    BUILDAH_ROOT="$WORK/buildah-root-$GENERATION"
    BUILDAH_RUNROOT="$WORK/buildah-runroot-$GENERATION"
    buildah_cmd pull --tls-verify=false "$BASE" >>"$WORK/setup.log" 2>&1
}
# reset_all: resets every tool, then lets the filesystem settle.
reset_all() {
    local tool
    GENERATION=$((GENERATION + 1))
    for tool in "${TOOLS[@]}"; do "reset_$tool"; done
    log "settling for ${SETTLE}s after the cache resets"
    sleep "$SETTLE"
}

# run_build_TOOL TAG: one build of $CTX; prints the seconds it took.
run_build_imgbuild() {
    timed "$WORK/imgbuild.log" "$IMGBUILD" --root "$IMGBUILD_ROOT" build --network host \
        --progress plain -t "$1" "$CTX"
}
run_build_docker() {
    local seconds
    seconds="$(timed "$WORK/docker.log" env DOCKER_BUILDKIT=1 "$DOCKER" build --network host \
        --progress plain --iidfile "$WORK/docker.iid" -t "$1" "$CTX")"
    cat "$WORK/docker.iid" >>"$DOCKER_IIDS" && echo >>"$DOCKER_IIDS"
    echo "$1" >>"$DOCKER_TAGS"
    echo "$seconds"
}
run_build_buildah() {
    timed "$WORK/buildah.log" "$BUILDAH" --root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" \
        bud --layers --network host --runtime runc --tls-verify=false -t "$1" "$CTX"
}

# run_push_TOOL TAG: build and push to TAG on the private registry; prints the seconds it took.
run_push_imgbuild() {
    timed "$WORK/imgbuild.log" "$IMGBUILD" --root "$IMGBUILD_ROOT" build --network host \
        --progress plain --push -t "$1" "$CTX"
}
run_push_docker() {
    echo "$1" >>"$DOCKER_TAGS"
    timed "$WORK/docker.log" bash -c "DOCKER_BUILDKIT=1 $DOCKER build --network host \
        --progress plain --iidfile $WORK/docker.iid -t $1 $CTX && cat $WORK/docker.iid >>$DOCKER_IIDS \
        && echo >>$DOCKER_IIDS && $DOCKER push $1"
}
run_push_buildah() {
    timed "$WORK/buildah.log" bash -c "$BUILDAH --root $BUILDAH_ROOT --runroot $BUILDAH_RUNROOT \
        bud --layers --network host --runtime runc --tls-verify=false -t $1 $CTX && \
        $BUILDAH --root $BUILDAH_ROOT --runroot $BUILDAH_RUNROOT push --tls-verify=false $1"
}

# buildah needs a working OCI runtime for RUN; find out once and say why if it cannot run.
if has_tool buildah; then
    reset_buildah
    probe="$WORK/buildah-probe"
    mkdir -p "$probe"
    printf 'FROM %s\nRUN true\n' "$BASE" >"$probe/Dockerfile"
    if ! buildah_cmd bud --network host --runtime runc --tls-verify=false -t probe "$probe" \
        >"$WORK/buildah-probe.log" 2>&1; then
        BUILDAH_SKIP_REASON="buildah bud failed here: $(tail -n 1 "$WORK/buildah-probe.log")"
        log "$BUILDAH_SKIP_REASON"
        remaining=()
        for tool in "${TOOLS[@]}"; do [[ $tool == buildah ]] || remaining+=("$tool"); done
        TOOLS=("${remaining[@]}")
    fi
fi

# ---------------------------------------------------------------- scenarios

# flush_writes: writes every dirty page to disk before a timed build (untimed), so the kernel's
# writeback of what an earlier build or pull left (about 30 s later) never lands in another
# build's timing. No tool syncs its own build data, so each is timed the same way.
flush_writes() { sync; }

# settle_if_asked: with BENCH_SETTLE_EACH=1, waits out ext4's 60 s window of recently deleted
# inodes (see reset_all) after the previous tool's build, before a cold or build+push build.
settle_if_asked() {
    if [[ ${BENCH_SETTLE_EACH:-0} == 1 ]]; then sleep "$SETTLE"; fi
}

declare -A TIMES # TIMES[scenario/tool] = space-separated seconds of each run

# tools_for_run RUN: the tools rotated by RUN, so no tool always goes first on a cold page cache.
tools_for_run() {
    local run=$1 count=${#TOOLS[@]} i
    for ((i = 0; i < count; i++)); do echo "${TOOLS[$(((i + run) % count))]}"; done
}

record() { TIMES[$1/$2]="${TIMES[$1/$2]:-} $3"; }

for ((run = 1; run <= RUNS; run++)); do
    reset_all
    for tool in $(tools_for_run "$run"); do
        settle_if_asked
        flush_writes
        seconds="$("run_build_$tool" "bench/app-$tool:cold")"
        record cold "$tool" "$seconds"
        log "cold run $run/$RUNS $tool: ${seconds}s"
    done
done

for ((run = 1; run <= RUNS; run++)); do
    for tool in $(tools_for_run "$run"); do
        flush_writes
        seconds="$("run_build_$tool" "bench/app-$tool:warm")"
        record warm "$tool" "$seconds"
        log "warm run $run/$RUNS $tool: ${seconds}s"
    done
done

for ((run = 1; run <= RUNS; run++)); do
    printf '/* incremental change %d */\n' "$run" >>"$CHANGED_FILE"
    for tool in $(tools_for_run "$run"); do
        flush_writes
        seconds="$("run_build_$tool" "bench/app-$tool:incremental")"
        record incremental "$tool" "$seconds"
        log "incremental run $run/$RUNS $tool: ${seconds}s"
    done
done

for ((run = 1; run <= RUNS; run++)); do
    reset_all
    for tool in $(tools_for_run "$run"); do
        settle_if_asked
        flush_writes
        seconds="$("run_push_$tool" "$REGISTRY/bench/e2e-$tool-$run:latest")"
        record push "$tool" "$seconds"
        log "build+push run $run/$RUNS $tool: ${seconds}s"
    done
done

# ---------------------------------------------------------------- report

median_of() {
    # shellcheck disable=SC2086 # the recorded times are a space-separated list
    median ${TIMES[$1/$2]:-}
}

echo
echo "== imgbuild build benchmark: medians of $RUNS runs (seconds), run side by side =="
machine_summary
echo "base image: $BASE_KIND ($BASE); context: $CONTEXT_SUMMARY"
echo "incremental: one .c file changed before each run; build+push: cold cache, fresh repository"
echo "cold: build caches empty, base image pulled beforehand (untimed); every tool unpacks the" \
    "base at pull time (imgbuild pull too, unless --no-unpack)"
echo "timings are wall-clock on a shared machine: compare ratios within this run, not across runs"
[[ -n $BUILDAH_SKIP_REASON ]] && echo "buildah not measured: $BUILDAH_SKIP_REASON"
echo
printf '%-20s %10s %10s %10s %15s %8s %8s %16s\n' scenario imgbuild docker buildah \
    imgbuild/docker target verdict imgbuild/buildah
declare -A TARGETS=([cold]=0.7 [warm]=0.3 [incremental]=0.5 [push]=0.5)
declare -A LABELS=([cold]=cold [warm]=warm [incremental]=incremental [push]="build+push")
for scenario in cold warm incremental push; do
    i="$(median_of "$scenario" imgbuild)"
    d="$(median_of "$scenario" docker)"
    b="$(median_of "$scenario" buildah)"
    r="$(ratio "$i" "$d")"
    printf '%-20s %10s %10s %10s %15s %8s %8s %16s\n' "${LABELS[$scenario]}" "$i" "$d" "$b" \
        "$r" "<=${TARGETS[$scenario]}" "$(verdict "$r" '<=' "${TARGETS[$scenario]}")" \
        "$(ratio "$i" "$b")"
done
echo
echo "every run (seconds):"
for scenario in cold warm incremental push; do
    for tool in "${TOOLS[@]}"; do
        printf '  %-12s %-9s %s\n' "${LABELS[$scenario]}" "$tool" "${TIMES[$scenario/$tool]:-}"
    done
done
