#!/usr/bin/env bash
# Benchmark of issue 2: `depot ingest` against the shell pipeline an archive
# host would otherwise run on the same Theia-shaped deposit, in one run,
# median of RUNS each, plus depot's peak RSS.
#   bench/ingest.sh [SIZE_MIB=512] [RUNS=5]
# Needs: zip, unzip, md5sum, GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-512}
runs=${2:-5}
root=${BENCH_DIR:-bench/out}
dep="$root/deposit-$size"
[ -f "$dep/MSEC_THEIA.zip" ] || bench/gen-deposit.sh "$dep" "$size" >/dev/null
cargo build --release -q
bin=target/release/depot
ws="$root/work"
rm -rf "$ws"; mkdir -p "$ws"

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
    (cd "$w/stage" && md5sum -c --quiet MD5SUMS)
    for z in "$w"/stage/MSEC_DAT_*.zip; do
        d="${z%.zip}"
        unzip -q "$z" -d "$d"
        (cd "$d" && md5sum -c --quiet MD5SUMS)
        rm "$z"
    done
    dups=$(cd "$w/stage" && find . -type f | tr '[:upper:]' '[:lower:]' | sort | uniq -d)
    [ -z "$dups" ]
    mv "$w/stage" "$w/final/release"
    local t1; t1=$(now)
    echo "$t1 - $t0" | bc -l
}

depot_ingest() {
    local w="$ws/depot" src="$1" fsync="$2"
    rm -rf "$w"; mkdir -p "$w/in"
    printf 'drop_root = "drop"\npublish_root = "publish"\n[publish]\nfsync = %s\n' "$fsync" > "$w/config.toml"
    cp "$src/MSEC_THEIA.zip" "$src/MSEC_THEIA.zip.md5" "$w/in/"
    sync
    local t0; t0=$(now)
    /usr/bin/time -f %M -o "$w/rss" "$bin" ingest "$w/in/MSEC_THEIA.zip" --producer MSEC --config "$w/config.toml" --quiet >/dev/null
    local t1; t1=$(now)
    echo "$(echo "$t1 - $t0" | bc -l) $(cat "$w/rss")"
}

echo "deposit: $(du -m "$dep/MSEC_THEIA.zip" | cut -f1) MiB archive, $size MiB unpacked; $runs runs each, interleaved"
: > "$ws/shell.t"; : > "$ws/depot.t"; : > "$ws/depot-nofsync.t"
for i in $(seq 1 "$runs"); do
    shell_pipeline "$dep" >> "$ws/shell.t"
    depot_ingest "$dep" true >> "$ws/depot.t"
    depot_ingest "$dep" false >> "$ws/depot-nofsync.t"
done
s=$(median < "$ws/shell.t")
d=$(cut -d' ' -f1 "$ws/depot.t" | median)
dn=$(cut -d' ' -f1 "$ws/depot-nofsync.t" | median)
rss=$(cut -d' ' -f2 "$ws/depot.t" "$ws/depot-nofsync.t" | sort -n | tail -1)
printf 'shell pipeline        median %.3f s\n' "$s"
printf 'depot ingest (fsync)  median %.3f s   speed-up %.2fx\n' "$d" "$(echo "$s / $d" | bc -l)"
printf 'depot ingest (no fsync) median %.3f s speed-up %.2fx\n' "$dn" "$(echo "$s / $dn" | bc -l)"
printf 'depot peak RSS        %.1f MiB\n' "$(echo "$rss / 1024" | bc -l)"
rm -rf "$ws"
