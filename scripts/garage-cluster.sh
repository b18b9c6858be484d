#!/usr/bin/env bash
# Runs a 3-node Garage cluster (S3-compatible object store) on loopback for the tests of the
# object-store registry backend: node N listens on 127.0.0.N (S3 API on :3900, RPC on :3901),
# data is replicated 3 times with read and write quorums of 2, so any one node may be down.
#
#   scripts/garage-cluster.sh start          start every node; on first use also join them,
#                                            apply a layout, import the test key, create the bucket
#   scripts/garage-cluster.sh stop-node N    stop node N (kill its process, wait for it to exit)
#   scripts/garage-cluster.sh start-node N   start node N again (same data)
#   scripts/garage-cluster.sh stop           stop every node
#   scripts/garage-cluster.sh env            print the IMGBUILD_TEST_S3_* variables (after start)
#
# State lives in $IMGBUILD_TEST_STATE/garage (default /tmp/imgbuild-test/garage). `start` writes
# the variables to $dir/env for `scripts/test` to source. Needs `garage` on PATH (scripts/test
# installs it with cargo when missing).
set -euo pipefail

state=${IMGBUILD_TEST_STATE:-/tmp/imgbuild-test}
dir=$state/garage
nodes=(1 2 3)
bucket=imgbuild-test
# Test-only credentials and cluster secret: the cluster listens on loopback only.
key_id=GK0123456789abcdef01234567
secret_key=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
rpc_secret=6e3f0d3b1f5b6a7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e
script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

config_of() { echo "$dir/node$1/garage.toml"; }
pid_of() { echo "$dir/node$1/garage.pid"; }
garage_cli() { garage -c "$(config_of 1)" "$@"; }

write_config() {
    local n=$1 node_dir=$dir/node$1
    mkdir -p "$node_dir/meta" "$node_dir/data"
    cat >"$(config_of "$n")" <<TOML
metadata_dir = "$node_dir/meta"
data_dir = "$node_dir/data"
db_engine = "sqlite"
replication_factor = 3
consistency_mode = "consistent"
metadata_fsync = false
data_fsync = false

rpc_bind_addr = "127.0.0.$n:3901"
rpc_public_addr = "127.0.0.$n:3901"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.$n:3900"
root_domain = ".s3.garage.localhost"
TOML
    chmod 600 "$(config_of "$n")"
}

running() {
    local pid_file
    pid_file=$(pid_of "$1")
    [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_node() {
    local n=$1
    running "$n" && return 0
    [ -f "$(config_of "$n")" ] || write_config "$n"
    nohup garage -c "$(config_of "$n")" server >>"$dir/node$n/garage.log" 2>&1 &
    echo $! >"$(pid_of "$n")"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.$n/3900") 2>/dev/null; then return 0; fi
        running "$n" || break
        sleep 0.1
    done
    echo "garage node $n did not start; see $dir/node$n/garage.log" >&2
    exit 1
}

stop_node() {
    local n=$1 pid
    running "$n" || return 0
    pid=$(cat "$(pid_of "$n")")
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$(pid_of "$n")"
}

node_id() { garage -c "$(config_of "$1")" node id -q 2>/dev/null; }

# Joins the nodes, gives each a role, and creates the key and the bucket (once).
configure() {
    [ -f "$dir/configured" ] && return 0
    for n in "${nodes[@]:1}"; do
        garage_cli node connect "$(node_id "$n")" >/dev/null
    done
    local ids=()
    for n in "${nodes[@]}"; do
        ids+=("$(node_id "$n" | cut -d@ -f1)")
    done
    for id in "${ids[@]}"; do
        garage_cli layout assign -z dc1 -c 1G "$id" >/dev/null
    done
    garage_cli layout apply --version 1 >/dev/null
    garage_cli key import --yes -n imgbuild-test "$key_id" "$secret_key" >/dev/null
    garage_cli bucket create "$bucket" >/dev/null
    garage_cli bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null
    touch "$dir/configured"
}

# Waits until the S3 API answers a signed request (the cluster has a quorum and the layout).
wait_healthy() {
    for _ in $(seq 1 100); do
        if garage_cli bucket info "$bucket" >/dev/null 2>&1 && garage_cli status 2>/dev/null | grep -q "HEALTHY NODES"; then
            return 0
        fi
        sleep 0.2
    done
    echo "garage cluster did not become healthy; see $dir/node*/garage.log" >&2
    exit 1
}

print_env() {
    cat <<ENV
export IMGBUILD_TEST_S3_ENDPOINTS="http://127.0.0.1:3900 http://127.0.0.2:3900 http://127.0.0.3:3900"
export IMGBUILD_TEST_S3_ENDPOINT=http://127.0.0.1:3900
export IMGBUILD_TEST_S3_REGION=garage
export IMGBUILD_TEST_S3_BUCKET=$bucket
export IMGBUILD_TEST_S3_ACCESS_KEY_ID=$key_id
export IMGBUILD_TEST_S3_SECRET_ACCESS_KEY=$secret_key
export IMGBUILD_TEST_GARAGE_CTL=$script
ENV
}

case ${1:-} in
start)
    command -v garage >/dev/null || { echo "garage is not installed (scripts/test installs it)" >&2; exit 1; }
    mkdir -p "$dir"
    for n in "${nodes[@]}"; do start_node "$n"; done
    configure
    wait_healthy
    print_env >"$dir/env"
    ;;
stop-node) stop_node "${2:?node number}" ;;
start-node)
    start_node "${2:?node number}"
    ;;
stop) for n in "${nodes[@]}"; do stop_node "$n"; done ;;
env) print_env ;;
*)
    echo "usage: $0 start | stop | stop-node N | start-node N | env" >&2
    exit 2
    ;;
esac
