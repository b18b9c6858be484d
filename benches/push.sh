#!/usr/bin/env bash
# Side-by-side push benchmark: `imgbuild push` vs `skopeo copy` vs `docker push` of the same
# ~200 MB image (a few layers of random-ish data, built by imgbuild and loaded into docker),
# each tool into its own freshly started, empty docker-registry on 127.0.0.1; then an
# incremental push of a version with one changed layer. Reports times and bytes sent (the
# growth of the registry's data directory), medians of several runs, and ratios.
#
# Usage (as root, from anywhere):  benches/push.sh
# Environment:
#   BENCH_RUNS=3                 runs per tool (the median is reported)
#   BENCH_LAYERS_MB="100 60 30"  sizes of the unchanging layers; BENCH_APP_MB=10 the changed one
#   BENCH_TOOLS="imgbuild skopeo docker"
#   BENCH_KEEP=1                 keep the scratch directory (logs, context, store)
#   IMGBUILD_BIN=PATH            benchmark this binary instead of `cargo build --release`

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${BENCH_RUNS:-3}
read -r -a LAYERS_MB <<<"${BENCH_LAYERS_MB:-100 60 30}"
APP_MB=${BENCH_APP_MB:-10}
read -r -a TOOLS <<<"${BENCH_TOOLS:-imgbuild skopeo docker}"
PEER_REGISTRY=${IMGBUILD_TEST_PEER_REGISTRY:-127.0.0.1:5000}
BASE=${IMGBUILD_TEST_BASE_IMAGE:-$PEER_REGISTRY/test/busybox:latest}
DOCKER=/usr/local/bin/docker
[[ -x $DOCKER ]] || DOCKER=/usr/bin/docker

require_root
make_workdir push
CTX="$WORK/context"
IMGBUILD_ROOT="$WORK/imgbuild-root"
DOCKER_TAGS="$WORK/docker-tags"
touch "$DOCKER_TAGS"

cleanup() {
    local status=$?
    set +e
    registry_stop
    [[ -s $DOCKER_TAGS ]] && sort -u "$DOCKER_TAGS" | xargs -r "$DOCKER" rmi -f >/dev/null 2>&1
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup (not timed)

ensure_command python3 python3
ensure_command curl curl
ensure_command docker-registry docker-registry
ensure_command skopeo skopeo
"$DOCKER" info >/dev/null 2>&1 || die "the Docker engine is not running"
compile_imgbuild

mkdir -p "$CTX"
log "generating layers: ${LAYERS_MB[*]} MB + a $APP_MB MB app layer (random-ish data)"
{
    echo "FROM $BASE"
    seed=10
    for mb in "${LAYERS_MB[@]}"; do
        seed=$((seed + 1))
        python3 "$BENCH_DIR/gen_context.py" layer "$CTX/layer$seed" --mb "$mb" --seed "$seed"
        echo "COPY layer$seed/ /data/layer$seed/"
    done
    echo "COPY app/ /app/"
} >"$CTX/Dockerfile"

"$IMGBUILD" --root "$IMGBUILD_ROOT" pull "$BASE" >>"$WORK/setup.log" 2>&1
# build_version VERSION SEED: the image bench/push:VERSION, whose app layer comes from SEED;
# also saved as a docker archive (loaded into docker) and as an OCI layout (for skopeo).
build_version() {
    local version=$1 seed=$2
    rm -rf "$CTX/app"
    python3 "$BENCH_DIR/gen_context.py" layer "$CTX/app" --mb "$APP_MB" --seed "$seed"
    "$IMGBUILD" --root "$IMGBUILD_ROOT" build --progress plain -t "bench/push:$version" "$CTX" \
        >>"$WORK/setup.log" 2>&1 || die "imgbuild build failed, see $WORK/setup.log"
    "$IMGBUILD" --root "$IMGBUILD_ROOT" save -o "$WORK/$version.docker.tar" "bench/push:$version"
    "$IMGBUILD" --root "$IMGBUILD_ROOT" save --format oci -o "$WORK/$version.oci.tar" \
        "bench/push:$version"
    mkdir -p "$WORK/$version.oci"
    tar -C "$WORK/$version.oci" -xf "$WORK/$version.oci.tar"
    rm "$WORK/$version.oci.tar"
    local loaded
    loaded="$("$DOCKER" load -i "$WORK/$version.docker.tar" | sed -n 's/^Loaded image\( ID\)\{0,1\}: //p' | sed -n 1p)"
    rm "$WORK/$version.docker.tar"
    [[ -n $loaded ]] || die "docker load of bench/push:$version printed no image name"
    echo "$loaded" >>"$DOCKER_TAGS"
    DOCKER_IMAGE[$version]="$loaded"
}
declare -A DOCKER_IMAGE
log "building v1 and v2 (v2 changes only the app layer)"
build_version v1 100
build_version v2 200
IMAGE_SIZE="$(du -sb --apparent-size "$WORK/v1.oci/blobs" | cut -f1)"
log "image v1: $((IMAGE_SIZE / 1000000)) MB of compressed blobs"

# ---------------------------------------------------------------- per-tool pushes

# push_TOOL VERSION REPOSITORY: pushes bench/push:VERSION to $REGISTRY/REPOSITORY:VERSION and
# prints the seconds it took.
push_imgbuild() {
    timed "$WORK/imgbuild.log" "$IMGBUILD" --root "$IMGBUILD_ROOT" push "bench/push:$1" \
        "$REGISTRY/$2:$1"
}
push_skopeo() {
    timed "$WORK/skopeo.log" skopeo copy --dest-tls-verify=false "oci:$WORK/$1.oci" \
        "docker://$REGISTRY/$2:$1"
}
push_docker() {
    "$DOCKER" tag "${DOCKER_IMAGE[$1]}" "$REGISTRY/$2:$1"
    echo "$REGISTRY/$2:$1" >>"$DOCKER_TAGS"
    timed "$WORK/docker.log" "$DOCKER" push "$REGISTRY/$2:$1"
}

declare -A RESULTS # RESULTS[metric/tool] = space-separated values of each run

record() { RESULTS[$1/$2]="${RESULTS[$1/$2]:-} $3"; }

for ((run = 1; run <= RUNS; run++)); do
    count=${#TOOLS[@]}
    for ((i = 0; i < count; i++)); do
        tool=${TOOLS[$(((i + run) % count))]}
        registry_start "registry-$tool-$run"
        before="$(data_bytes "$REGISTRY_DATA")"
        seconds="$("push_$tool" v1 "bench/$tool-$run")"
        after="$(data_bytes "$REGISTRY_DATA")"
        record full_s "$tool" "$seconds"
        record full_mb "$tool" "$(python3 -c "print(round(($after - $before) / 1e6, 1))")"
        seconds="$("push_$tool" v2 "bench/$tool-$run")"
        final="$(data_bytes "$REGISTRY_DATA")"
        record inc_s "$tool" "$seconds"
        record inc_mb "$tool" "$(python3 -c "print(round(($final - $after) / 1e6, 1))")"
        log "run $run/$RUNS $tool: full ${RESULTS[full_s/$tool]##* }s" \
            "($(((after - before) / 1000000)) MB), incremental ${seconds}s ($(((final - after) / 1000000)) MB)"
        registry_stop
        rm -rf "$REGISTRY_DATA"
    done
done

# ---------------------------------------------------------------- report

median_of() {
    # shellcheck disable=SC2086 # the recorded values are a space-separated list
    median ${RESULTS[$1/$2]:-}
}

echo
echo "== imgbuild push benchmark: medians of $RUNS runs, run side by side =="
machine_summary
echo "image: $BASE + layers of ${LAYERS_MB[*]} MB and an app layer of $APP_MB MB (uncompressed," \
    "half random); $((IMAGE_SIZE / 1000000)) MB of compressed blobs"
echo "each tool pushes into its own fresh, empty docker-registry on 127.0.0.1; sources:" \
    "imgbuild its store, skopeo an OCI layout of the same blobs, docker the image loaded into dockerd"
echo "MB sent = growth of the registry's data directory; incremental = v2 (only the app layer" \
    "changed) pushed after v1 to the same repository"
echo
printf '%-22s %10s %10s %10s %22s %8s %8s\n' metric imgbuild skopeo docker \
    "docker/imgbuild" target verdict
for metric in full_s full_mb inc_s inc_mb; do
    i="$(median_of $metric imgbuild)"
    s="$(median_of $metric skopeo)"
    d="$(median_of $metric docker)"
    case $metric in
    full_s) label="full push (s)" target=">=1.5" ;;
    full_mb) label="full push (MB sent)" target="" ;;
    inc_s) label="incremental push (s)" target="" ;;
    inc_mb) label="incremental (MB sent)" target="" ;;
    esac
    r="$(ratio "$d" "$i")"
    v=""
    [[ -n $target ]] && v="$(verdict "$r" '>=' "${target#>=}")"
    printf '%-22s %10s %10s %10s %22s %8s %8s\n' "$label" "$i" "$s" "$d" "$r" "$target" "$v"
done
echo
echo "imgbuild / peer time ratios: full push: imgbuild/skopeo $(ratio "$(median_of full_s imgbuild)" \
    "$(median_of full_s skopeo)"), imgbuild/docker $(ratio "$(median_of full_s imgbuild)" \
    "$(median_of full_s docker)"); incremental: imgbuild/skopeo $(ratio "$(median_of inc_s imgbuild)" \
    "$(median_of inc_s skopeo)"), imgbuild/docker $(ratio "$(median_of inc_s imgbuild)" \
    "$(median_of inc_s docker)")"
echo "incremental push is dominated by the changed bytes when its time is close to the full" \
    "push's time scaled by the bytes sent:"
for tool in "${TOOLS[@]}"; do
    python3 - "$tool" "$(median_of full_s "$tool")" "$(median_of full_mb "$tool")" \
        "$(median_of inc_s "$tool")" "$(median_of inc_mb "$tool")" <<'EOF'
import sys
tool, full_s, full_mb, inc_s, inc_mb = sys.argv[1], *map(float, sys.argv[2:])
expected = full_s * inc_mb / full_mb if full_mb else 0.0
print(f"  {tool:9} full {full_mb:7.1f} MB in {full_s:6.3f} s ({full_mb / full_s:6.1f} MB/s); "
      f"incremental {inc_mb:6.1f} MB in {inc_s:6.3f} s, bytes alone would take {expected:6.3f} s "
      f"(fixed overhead {inc_s - expected:+.3f} s)")
EOF
done
echo
echo "every run:"
for metric in full_s full_mb inc_s inc_mb; do
    for tool in "${TOOLS[@]}"; do
        printf '  %-8s %-9s %s\n' "$metric" "$tool" "${RESULTS[$metric/$tool]:-}"
    done
done
