#!/usr/bin/env bash
# Benchmark of issue 15: the 512 MiB Theia deposit published to a local
# Garage bucket by `depot ingest` (publish.target = "s3"), against what an
# operator would script instead, in the same run: unzip of the deposit and
# of its dataset zips, then `rclone copy` of the tree to the same bucket.
# Median of RUNS each, interleaved, plus depot's peak RSS (GNU time).
#   bench/s3.sh [SIZE_MIB=512] [RUNS=3]     (GARAGE_COMPRESSION=none: see below)
# Needs: garage (cargo install garage --locked), rclone (apt-get install
# rclone), redis-server, zip, unzip, GNU time. Starts its own Garage and
# redis-server on free loopback ports and stops them (by pid) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-512}
runs=${2:-3}
root=${BENCH_DIR:-bench/out}
dep="$root/deposit-$size"
[ -f "$dep/MSEC_THEIA.zip" ] || bench/gen-deposit.sh "$dep" "$size" >/dev/null
cargo build --release -q
bin=$PWD/target/release/depot
garage=$(command -v garage || echo "$HOME/.cargo/bin/garage")
ws=$(realpath -m "$root/s3work")
rm -rf "$ws"; mkdir -p "$ws"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3_port=$(port); rpc_port=$(port); redis_port=$(port)
key_id="GK$(openssl rand -hex 12)"; secret=$(openssl rand -hex 32)
cat > "$ws/garage.toml" <<TOML
metadata_dir = "$ws/garage/meta"
data_dir = "$ws/garage/data"
db_engine = "sqlite"
replication_factor = 1
# Garage's default: zstd level 1 on every block. GARAGE_COMPRESSION=none to
# see what the server's own CPU costs both sides on a 2-core host.
compression_level = ${GARAGE_COMPRESSION:-1}
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
TOML
GARAGE_DEFAULT_ACCESS_KEY=$key_id GARAGE_DEFAULT_SECRET_KEY=$secret GARAGE_DEFAULT_BUCKET=bench \
    "$garage" -c "$ws/garage.toml" server --single-node --default-bucket >"$ws/garage.log" 2>&1 &
garage_pid=$!
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$ws" >/dev/null &
redis_pid=$!
trap 'kill $garage_pid $redis_pid 2>/dev/null; wait $garage_pid $redis_pid 2>/dev/null; rm -rf "$ws"' EXIT
for _ in $(seq 1 300); do
    curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 aws:amz:garage:s3 --user "$key_id:$secret" \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -I "http://127.0.0.1:$s3_port/bench/" 2>/dev/null | grep -q 200 && break
    sleep 0.1
done
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT="http://127.0.0.1:$s3_port" \
    RCLONE_CONFIG_G_ACCESS_KEY_ID=$key_id RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$secret RCLONE_CONFIG_G_REGION=garage \
    RCLONE_CONFIG_G_FORCE_PATH_STYLE=true
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$key_id" "$secret" > "$ws/credentials"

now() { date +%s.%N; }
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2 }'; }

operator_script() {
    local w="$ws/shell" run=$1
    rm -rf "$w"; mkdir -p "$w/in"
    cp "$dep/MSEC_THEIA.zip" "$w/in/"
    sync
    local t0; t0=$(now)
    unzip -q "$w/in/MSEC_THEIA.zip" -d "$w/tree"
    for z in "$w"/tree/MSEC_DAT_*.zip; do unzip -q "$z" -d "${z%.zip}"; rm "$z"; done
    # AWS_CA_BUNDLE (set on some hosts) breaks rclone 1.60's plain-HTTP transport.
    env -u AWS_CA_BUNDLE rclone copy "$w/tree" "g:bench/ops/run$run/"
    local t1; t1=$(now)
    echo "$t1 - $t0" | bc -l
}

depot_ingest() {
    local w="$ws/depot"
    rm -rf "$w"; mkdir -p "$w/in"
    cat > "$w/config.toml" <<TOML
drop_root = "drop"
publish_root = "publish"
[redis]
url = "redis://127.0.0.1:$redis_port"
[publish]
target = "s3"
keep_releases = 1
[publish.s3]
endpoint = "http://127.0.0.1:$s3_port"
region = "garage"
bucket = "bench"
prefix = "depot"
credentials_file = "$ws/credentials"
TOML
    cp "$dep/MSEC_THEIA.zip" "$dep/MSEC_THEIA.zip.md5" "$w/in/"
    sync
    local t0; t0=$(now)
    /usr/bin/time -f %M -o "$w/rss" "$bin" ingest "$w/in/MSEC_THEIA.zip" --producer MSEC --config "$w/config.toml" --quiet >/dev/null
    local t1; t1=$(now)
    echo "$(echo "$t1 - $t0" | bc -l) $(cat "$w/rss")"
}

echo "deposit: $(du -m "$dep/MSEC_THEIA.zip" | cut -f1) MiB archive, $size MiB unpacked; $runs runs each, interleaved"
: > "$ws/shell.t"; : > "$ws/depot.t"
for i in $(seq 1 "$runs"); do
    operator_script "$i" >> "$ws/shell.t"
    depot_ingest >> "$ws/depot.t"
done
s=$(median < "$ws/shell.t")
d=$(cut -d' ' -f1 "$ws/depot.t" | median)
rss=$(cut -d' ' -f2 "$ws/depot.t" | sort -n | tail -1)
printf 'unzip + rclone copy   median %.3f s   (%s)\n' "$s" "$(tr '\n' ' ' < "$ws/shell.t")"
printf 'depot ingest (s3)     median %.3f s   (%s)  speed-up %.2fx\n' "$d" "$(cut -d' ' -f1 "$ws/depot.t" | tr '\n' ' ')" "$(echo "$s / $d" | bc -l)"
printf 'depot peak RSS        %.1f MiB\n' "$(echo "$rss / 1024" | bc -l)"
