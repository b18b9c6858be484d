#!/usr/bin/env bash
# Side-by-side benchmark of `imgbuild serve` against docker-registry (CNCF distribution 2.8):
# manifest GET req/s and small-blob GET req/s with 32 connections (wrk), 100 MB blob GET MB/s
# and upload MB/s (curl), push and pull of a 200 MB image with skopeo, and peak RSS of each server. Prints a table with imgbuild/distribution ratios.
#
# Usage: benches/registry.sh            (installs wrk when missing; builds imgbuild --release)
# Env:   BENCH_SECONDS (default 10), BENCH_CONNECTIONS (default 32)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${BENCH_SECONDS:-10}
connections=${BENCH_CONNECTIONS:-32}
ours_port=${BENCH_IMGBUILD_PORT:-5091}
theirs_port=${BENCH_DISTRIBUTION_PORT:-5092}

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v bc >/dev/null || missing+=(bc)
command -v skopeo >/dev/null || missing+=(skopeo)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v docker-registry >/dev/null || { echo "bench: docker-registry is missing (scripts/test installs it)" >&2; exit 1; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet --bin imgbuild
work=$(mktemp -d)
cp "$CARGO_TARGET_DIR/release/imgbuild" "$work/imgbuild"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

RUST_LOG=warn "$work/imgbuild" serve --addr "127.0.0.1:$ours_port" --data "$work/ours" 2>"$work/ours.log" &
pids+=($!); ours_pid=$!
cat >"$work/distribution.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/theirs
http:
  addr: 127.0.0.1:$theirs_port
YAML
docker-registry serve "$work/distribution.yml" 2>"$work/theirs.log" &
pids+=($!); theirs_pid=$!

for port in "$ours_port" "$theirs_port"; do
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null
done

# Test content: a 1 KiB blob, a 100 MB blob, a config, and a manifest referencing them.
head -c 1024 /dev/urandom >"$work/small"
head -c 100000000 /dev/urandom >"$work/big"
printf '{"architecture":"amd64","os":"linux"}' >"$work/config"
sha() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
size() { stat -c %s "$1"; }
small=$(sha "$work/small"); big=$(sha "$work/big"); config=$(sha "$work/config")
cat >"$work/manifest" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config","size":$(size "$work/config")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$small","size":$(size "$work/small")},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$big","size":$(size "$work/big")}]}
JSON

upload() { # port file digest
    local location
    location=$(curl -fsS -X POST -D - -o /dev/null "http://127.0.0.1:$1/v2/bench/app/blobs/uploads/" |
        tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
    case "$location" in http*) ;; *) location="http://127.0.0.1:$1$location" ;; esac
    case "$location" in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$2" \
        "$location${sep}digest=$3" -o /dev/null
}
declare -A result
for port in "$ours_port" "$theirs_port"; do
    upload "$port" "$work/small" "$small"
    started=$(date +%s.%N)
    upload "$port" "$work/big" "$big"
    elapsed=$(echo "$(date +%s.%N) - $started" | bc -l)
    side=ours; [ "$port" = "$theirs_port" ] && side=theirs
    result[$side.upload]=$(echo "100 / $elapsed" | bc -l)
    upload "$port" "$work/config" "$config"
    curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary "@$work/manifest" "http://127.0.0.1:$port/v2/bench/app/manifests/v1" -o /dev/null
done

# A 200 MB image (4 layers of 50 MB) as an OCI layout, pushed and pulled with skopeo.
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
add_blob() { # file -> prints "digest size", moves the file into the layout
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1); size=$(size "$1")
    mv "$1" "$layout/blobs/sha256/$digest"
    echo "sha256:$digest $size"
}
layers_json=
for i in 1 2 3 4; do
    mkdir -p "$work/layer$i"
    head -c 50000000 /dev/urandom >"$work/layer$i/data$i"
    # Compressed already, so skopeo sends the layers as they are instead of gzipping them.
    tar -C "$work/layer$i" -cf - "data$i" | gzip -1 >"$work/layer$i.tar.gz"
    rm -rf "$work/layer$i"
    read -r digest bytes < <(add_blob "$work/layer$i.tar.gz")
    layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$digest\",\"size\":$bytes}"
done
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$work/image-config"
read -r config_digest config_bytes < <(add_blob "$work/image-config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$config_digest" "$config_bytes" "$layers_json" >"$work/image-manifest"
read -r manifest_digest manifest_bytes < <(add_blob "$work/image-manifest")
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
    "$manifest_digest" "$manifest_bytes" >"$layout/index.json"
seconds_of() { # command... -> elapsed seconds
    local started
    started=$(date +%s.%N)
    "$@" >/dev/null
    echo "$(date +%s.%N) - $started" | bc -l
}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
for side in ours theirs; do
    if [ "$side" = ours ]; then port=$ours_port; else port=$theirs_port; fi
    # Each push goes to a new repository with skopeo's blob-info cache cleared, so skopeo
    # uploads every layer again instead of mounting it from an earlier run's repository.
    result[$side.push]=$(for run in 1 2 3; do
        rm -f /var/lib/containers/cache/blob-info-cache-v1.* ~/.local/share/containers/cache/blob-info-cache-v1.*
        seconds_of skopeo copy -q --dest-tls-verify=false \
            "oci:$layout:v1" "docker://127.0.0.1:$port/bench/big$run:v1"
    done | median)
    result[$side.pull]=$(for run in 1 2 3; do
        seconds_of skopeo copy -q --src-tls-verify=false \
            "docker://127.0.0.1:$port/bench/big1:v1" "oci:$work/pulled-$side-$run:v1"
        rm -rf "$work/pulled-$side-$run"
    done | median)
done

wrk_rps() { # url [header]
    local args=(-t2 "-c$connections" "-d${seconds}s")
    [ $# -gt 1 ] && args+=(-H "$2")
    local report
    report=$(wrk "${args[@]}" "$1")
    if grep -q 'Non-2xx' <<<"$report"; then
        echo "bench: $1 answered errors:" >&2; echo "$report" >&2; exit 1
    fi
    awk '/Requests\/sec/ {print $2}' <<<"$report"
}
big_mbps() { # port
    local total=0 speed
    for _ in 1 2 3 4 5; do
        speed=$(curl -fsS -o /dev/null -w '%{speed_download}' "http://127.0.0.1:$1/v2/bench/app/blobs/$big")
        total=$(echo "$total + $speed" | bc -l)
    done
    echo "$total / 5 / 1000000" | bc -l
}
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

for side in ours theirs; do
    if [ "$side" = ours ]; then port=$ours_port; pid=$ours_pid; else port=$theirs_port; pid=$theirs_pid; fi
    accept='Accept: application/vnd.oci.image.manifest.v1+json'
    result[$side.manifest]=$(wrk_rps "http://127.0.0.1:$port/v2/bench/app/manifests/v1" "$accept")
    result[$side.small]=$(wrk_rps "http://127.0.0.1:$port/v2/bench/app/blobs/$small")
    result[$side.big]=$(big_mbps "$port")
    result[$side.rss]=$(peak_rss_mib "$pid")
done

printf '\n%-48s %14s %14s %8s\n' "metric" "imgbuild" "distribution" "ratio"
row() { # label key unit
    local ours=${result[ours.$2]} theirs=${result[theirs.$2]}
    printf '%-48s %14.1f %14.1f %7.2fx\n' "$1" "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)"
}
row "manifest GET req/s (c=$connections)" manifest
row "1 KiB blob GET req/s (c=$connections)" small
row "100 MB blob GET MB/s" big
row "100 MB blob upload (POST+PUT) MB/s" upload
row "200 MB image skopeo push s (median of 3, lower)" push
row "200 MB image skopeo pull s (median of 3, lower)" pull
row "peak RSS MiB (lower is better)" rss
