#!/usr/bin/env bash
# The data service (/data/pub/P/...) against Apache httpd serving the same
# release folder, on this machine, same client (curl), plain HTTP on
# loopback, no credentials on either side (the producer is `public = true`:
# a bcrypt per request would measure the password hash, not the serving).
#
#   1. One large file (BENCH_BIG_MIB, default 256 MiB): curl's download
#      speed, three alternated rounds (Apache, depot, ...), medians, and
#      the ratio depot / Apache (target >= 0.8x).
#   2. BENCH_SMALL_N files (default 2000) of BENCH_SMALL_KIB KiB (default 4)
#      fetched one after the other by one curl over one keep-alive
#      connection (a config file of URLs): wall time, same rounds, ratio
#      Apache time / depot time (target >= 0.5x).
#   3. depot's peak RSS (VmHWM) with BENCH_CONC (default 64) concurrent
#      downloads of the large file (target < 64 MiB).
#
# The release is published by depot itself (a plain-profile deposit made
# with python3's zipfile); Apache serves publish/MSEC/current with
# EnableSendfile On (its fastest path) and unlimited keep-alive requests.
#
# Usage: bench/http-pub.sh [DEPOT_BINARY]   (default target/release/depot,
# or $CARGO_TARGET_DIR/release/depot). Needs apache2 (Debian's),
# redis-server, curl, python3, ~3x BENCH_BIG_MIB in $TMPDIR. Smoke run:
#   BENCH_BIG_MIB=4 BENCH_SMALL_N=20 BENCH_CONC=4 bench/http-pub.sh target/debug/depot
# Everything started here is stopped by its pid and the temp dir removed.
set -euo pipefail
cd "$(dirname "$0")/.."

depot=${1:-${CARGO_TARGET_DIR:-target}/release/depot}
depot=$(realpath "$depot")
[ -x "$depot" ] || { echo "no depot binary at $depot (cargo build --release)" >&2; exit 1; }
[ -x /usr/sbin/apache2 ] || { echo "needs Debian's apache2 (/usr/sbin/apache2)" >&2; exit 1; }
BIG=${BENCH_BIG_MIB:-256}
SMALL_N=${BENCH_SMALL_N:-2000}
SMALL_KIB=${BENCH_SMALL_KIB:-4}
CONC=${BENCH_CONC:-64}
ROUNDS=3
MODULES=/usr/lib/apache2/modules

T=$(mktemp -d)
chmod 755 "$T"
pids=()
cleanup() {
    for p in "${pids[@]}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    exit 1
}

# --- redis + depot, and the release it publishes -----------------------------
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$T" >/dev/null &
pids+=($!)
wait_port "$rport"
dport=$(free_port)
mkdir -p "$T/depot/drop/MSEC/new" "$T/depot/publish"
cat >"$T/depot/config.toml" <<EOF
drop_root = "drop"
publish_root = "publish"
[redis]
url = "redis://127.0.0.1:$rport"
[watch]
settle_ms = 300
[http]
listen = "127.0.0.1:$dport"
max_connections = 1024
[producers.MSEC]
profile = "plain"
public = true
EOF
RUST_LOG=warn "$depot" run --config "$T/depot/config.toml" 2>"$T/depot.log" &
dpid=$!
pids+=($dpid)
wait_port "$dport"

python3 - "$T/MSEC_BENCH.zip" "$BIG" "$SMALL_N" "$SMALL_KIB" <<'EOF'
import os, sys, zipfile
out, big, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
    with z.open("big.bin", "w", force_zip64=True) as f:
        for _ in range(big):
            f.write(os.urandom(1 << 20))
    for i in range(n):
        z.writestr(f"small/s{i:05d}.bin", os.urandom(kib << 10))
EOF
mv "$T/MSEC_BENCH.zip" "$T/depot/drop/MSEC/new/"
rel=$T/depot/publish/MSEC/current
for _ in $(seq 1200); do
    [ -f "$rel/manifest.json" ] && break
    sleep 0.5
done
[ -f "$rel/manifest.json" ] || { echo "depot did not publish the release" >&2; tail -n 20 "$T/depot.log" >&2; exit 1; }
# Started again, so that its VmHWM counts the serving, not the ingest.
kill -TERM "$dpid"
wait "$dpid" || true
pids=("${pids[@]/$dpid/}")
RUST_LOG=warn "$depot" run --config "$T/depot/config.toml" 2>>"$T/depot.log" &
dpid=$!
pids+=($dpid)
wait_port "$dport"

# --- apache2 on the same folder -----------------------------------------------
aport=$(free_port)
A=$T/apache
mkdir -p "$A"
{
    echo "ServerRoot \"$A\""
    echo "DefaultRuntimeDir \"$A\""
    echo "PidFile \"$A/apache2.pid\""
    echo "ErrorLog \"$A/error.log\""
    echo "Mutex file:$A default"
    echo "Listen 127.0.0.1:$aport"
    echo "ServerName 127.0.0.1"
    if [ "$(id -u)" = 0 ]; then
        echo "User www-data"
        echo "Group www-data"
    fi
    for m in mpm_event authz_core alias mime; do
        echo "LoadModule ${m}_module $MODULES/mod_$m.so"
    done
    echo "TypesConfig /etc/mime.types"
    echo "EnableSendfile On"
    echo "KeepAlive On"
    echo "MaxKeepAliveRequests 0"
    echo "Alias /data/pub/MSEC \"$rel\""
    echo "<Directory \"$T/depot/publish\">"
    echo "  Require all granted"
    echo "</Directory>"
} >"$A/apache2.conf"
/usr/sbin/apache2 -DFOREGROUND -f "$A/apache2.conf" 2>"$A/stderr.log" &
pids+=($!)
wait_port "$aport"

# One download of the large file; prints curl's speed (bytes/s).
big() { # PORT
    local out
    out=$(curl -sS "http://127.0.0.1:$1/data/pub/MSEC/big.bin" -o /dev/null -w '%{http_code} %{speed_download}')
    [ "${out%% *}" = 200 ] || { echo "GET on $1 answered ${out%% *}" >&2; exit 1; }
    echo "${out#* }"
}
# Every small file by one curl, over one connection; prints the seconds.
for port in "$aport" "$dport"; do
    for i in $(seq 0 $((SMALL_N - 1))); do
        printf 'url = "http://127.0.0.1:%s/data/pub/MSEC/small/s%05d.bin"\noutput = "/dev/null"\n' "$port" "$i"
    done >"$T/small-$port.curlrc"
done
small() { # PORT
    local t0 t1 codes
    t0=$(date +%s.%N)
    codes=$(curl -sS -K "$T/small-$1.curlrc" -w '%{http_code}\n' | sort | uniq -c)
    t1=$(date +%s.%N)
    [ "$(echo "$codes" | awk '{ print $2 }')" = 200 ] || { echo "small files on $1: $codes" >&2; exit 1; }
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
median() { printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"; }
mib() { awk -v s="$1" 'BEGIN { printf "%.0f", s / 1048576 }'; }

echo "load before: $(uptime)"
a=() d=() sa=() sd=()
for r in $(seq "$ROUNDS"); do
    ta=$(big "$aport")
    td=$(big "$dport")
    xa=$(small "$aport")
    xd=$(small "$dport")
    echo "round $r: ${BIG} MiB apache $(mib "$ta") MiB/s depot $(mib "$td") MiB/s; $SMALL_N x ${SMALL_KIB} KiB apache ${xa}s depot ${xd}s"
    a+=("$ta") d+=("$td") sa+=("$xa") sd+=("$xd")
done
ma=$(median "${a[@]}") md=$(median "${d[@]}")
echo "median ${BIG} MiB: apache $(mib "$ma") MiB/s  depot $(mib "$md") MiB/s  ratio depot/apache $(awk -v a="$ma" -v d="$md" 'BEGIN { printf "%.2f", d / a }')x (target >= 0.8x)"
ma=$(median "${sa[@]}") md=$(median "${sd[@]}")
echo "median $SMALL_N small files: apache ${ma}s  depot ${md}s  ratio apache/depot $(awk -v a="$ma" -v d="$md" 'BEGIN { printf "%.2f", a / d }')x (target >= 0.5x)"

hwm() { awk '/^VmHWM/ { print $2 }' "/proc/$dpid/status"; }
echo "depot VmHWM before the concurrent downloads: $(($(hwm) / 1024)) MiB"
cpids=()
for i in $(seq "$CONC"); do
    big "$dport" >"$T/conc-$i.speed" &
    cpids+=($!)
done
for c in "${cpids[@]}"; do wait "$c"; done
echo "$CONC concurrent ${BIG} MiB downloads: MiB/s each $(for f in "$T"/conc-*.speed; do mib "$(cat "$f")"; echo; done | sort -n | tr '\n' ' ')"
echo "depot VmHWM after them: $(($(hwm) / 1024)) MiB (target < 64 MiB)"
echo "load after: $(uptime)"
