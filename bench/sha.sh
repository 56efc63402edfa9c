#!/usr/bin/env bash
# Benchmark of issue 23 (SHA-256 next to MD5): the 512 MiB Theia-shaped
# deposit with SHA256SUMS for every file as well as MD5SUMS, `depot ingest`
# against the shell pipeline (md5sum -c + sha256sum -c + unzip), and against
# depot's own time on the same deposit without SHA256SUMS (MD5 only).
# Alternated rounds, medians, fsync on (the daemon's default).
#   bench/sha.sh [SIZE_MIB=512] [RUNS=3]
# Needs: zip, unzip, md5sum, sha256sum, bc, python3, redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-512}
runs=${2:-3}
root=${BENCH_DIR:-bench/out}
md5dep="$root/deposit-$size"
shadep="$root/deposit-$size-sha256"
[ -f "$md5dep/MSEC_THEIA.zip" ] || bench/gen-deposit.sh "$md5dep" "$size" >/dev/null
[ -f "$shadep/MSEC_THEIA.zip" ] || SHA256=1 bench/gen-deposit.sh "$shadep" "$size" >/dev/null
cargo build --release -q
bin=target/release/depot
ws="$root/work-sha"
rm -rf "$ws"; mkdir -p "$ws"

# depot ingest records each deposit in Redis, as it does in production: a
# redis-server of the bench's own on a free loopback port (never the
# machine's), stopped by its pid on exit.
rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$ws" >/dev/null &
rpid=$!
trap 'kill -TERM "$rpid" 2>/dev/null; wait "$rpid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && break; sleep 0.1; done

now() { date +%s.%N; }
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2 }'; }

shell_pipeline() {
    local w="$ws/shell" src="$1"
    rm -rf "$w"; mkdir -p "$w/in" "$w/final"
    cp "$src/MSEC_THEIA.zip" "$src/MSEC_THEIA.zip.md5" "$w/in/"
    sync
    local t0; t0=$(now)
    (cd "$w/in" && md5sum -c --quiet MSEC_THEIA.zip.md5)
    mkdir "$w/stage"
    unzip -q "$w/in/MSEC_THEIA.zip" -d "$w/stage"
    (cd "$w/stage" && md5sum -c --quiet MD5SUMS && sha256sum -c --quiet SHA256SUMS)
    for z in "$w"/stage/MSEC_DAT_*.zip; do
        d="${z%.zip}"
        unzip -q "$z" -d "$d"
        (cd "$d" && md5sum -c --quiet MD5SUMS && sha256sum -c --quiet SHA256SUMS)
        rm "$z"
    done
    dups=$(cd "$w/stage" && find . -type f | tr '[:upper:]' '[:lower:]' | sort | uniq -d)
    [ -z "$dups" ]
    mv "$w/stage" "$w/final/release"
    sync
    local t1; t1=$(now)
    echo "$t1 - $t0" | bc -l
}

depot_ingest() {
    local w="$ws/depot" src="$1"
    rm -rf "$w"; mkdir -p "$w/in"
    printf 'drop_root = "drop"\npublish_root = "publish"\n[redis]\nurl = "redis://127.0.0.1:%s"\n' "$rport" > "$w/config.toml"
    cp "$src/MSEC_THEIA.zip" "$src/MSEC_THEIA.zip.md5" "$w/in/"
    sync
    local t0; t0=$(now)
    "$bin" ingest "$w/in/MSEC_THEIA.zip" --producer MSEC --config "$w/config.toml" --quiet >/dev/null
    local t1; t1=$(now)
    # The SHA-256 deposit's release must say what was verified.
    if [ "$src" = "$shadep" ]; then
        grep -q '"sha256"' "$w"/publish/MSEC/current/manifest.json || { echo "no sha256 in manifest.json" >&2; exit 1; }
    fi
    echo "$t1 - $t0" | bc -l
}

echo "SHA extensions: $(grep -o -m1 -w sha_ni /proc/cpuinfo || echo none); $runs rounds, alternated"
: > "$ws/shell.t"; : > "$ws/sha.t"; : > "$ws/md5.t"
for _ in $(seq 1 "$runs"); do
    shell_pipeline "$shadep" >> "$ws/shell.t"
    depot_ingest "$shadep" >> "$ws/sha.t"
    depot_ingest "$md5dep" >> "$ws/md5.t"
done
s=$(median < "$ws/shell.t"); d=$(median < "$ws/sha.t"); m=$(median < "$ws/md5.t")
printf 'shell pipeline (md5sum+sha256sum+unzip)  median %.3f s\n' "$s"
printf 'depot ingest, MD5 + SHA-256              median %.3f s   %.2fx the shell (target >= 3x)\n' "$d" "$(echo "$s / $d" | bc -l)"
printf 'depot ingest, MD5 only                   median %.3f s   SHA-256 costs %.2fx (target <= 1.3x)\n' "$m" "$(echo "$d / $m" | bc -l)"
rm -rf "$ws"
