#!/usr/bin/env bash
# Generate a Theia-shaped deposit: MSEC_en.json, 12 dataset zips (half
# compressible CSV, half incompressible binary), MD5SUMS at both levels, and
# a <name>.md5 sidecar.  Usage: gen-deposit.sh OUT_DIR SIZE_MIB
# With SHA256=1, SHA256SUMS beside each MD5SUMS as well (bench/sha.sh).
set -euo pipefail
out=$1
size_mib=$2
P=MSEC
n=12
mkdir -p "$out"
out=$(realpath "$out")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
per=$(( size_mib * 1024 * 1024 / n ))
half=$(( per / 2 ))
datasets=""
for i in $(seq 1 $n); do
    d="$work/ds$i"
    mkdir -p "$d"
    # Sensor-like CSV (compresses about 3x): a 4 MiB block made by awk,
    # repeated (deflate's 32 KiB window never sees the repetition).
    awk -v lim=4194304 -v seed="$i" 'BEGIN { srand(seed); b = 0; t = 0;
        while (b < lim) { s = sprintf("%d,2026-01-01T%02d:%02d:%02d,%.4f,%.4f,%d\n", t, (t/3600)%24, (t/60)%60, t%60, rand()*100, rand()*10, int(rand()*1000));
            printf "%s", s; b += length(s); t++ } }' > "$work/block.csv"
    for _ in $(seq 0 $(( half / 4194304 ))); do cat "$work/block.csv"; done | head -c "$half" > "$d/${P}_OBS_${i}_1.csv" || true
    head -c "$half" /dev/urandom > "$d/${P}_OBS_${i}_2.bin"
    (cd "$d" && md5sum -- * > MD5SUMS)
    if [ "${SHA256:-0}" = 1 ]; then (cd "$d" && sha256sum -- *.csv *.bin > SHA256SUMS); fi
    (cd "$d" && zip -q -X "../${P}_DAT_${i}.zip" -- *)
    obs="{\"observationId\":\"${P}_OBS_${i}_1\",\"result\":{\"dataFile\":{\"name\":\"${P}_OBS_${i}_1.csv\"}}},{\"observationId\":\"${P}_OBS_${i}_2\",\"result\":{\"dataFile\":{\"name\":\"${P}_OBS_${i}_2.bin\"}}}"
    datasets="$datasets${datasets:+,}{\"datasetId\":\"${P}_DAT_${i}\",\"observations\":[$obs]}"
    rm -rf "$d"
done
printf '{"version":"1.1","producer":{"producerId":"%s","name":"bench"},"datasets":[%s]}\n' "$P" "$datasets" > "$work/${P}_en.json"
(cd "$work" && md5sum -- "${P}_en.json" ${P}_DAT_*.zip > MD5SUMS)
if [ "${SHA256:-0}" = 1 ]; then (cd "$work" && sha256sum -- "${P}_en.json" ${P}_DAT_*.zip > SHA256SUMS); fi
(cd "$work" && zip -q -X -0 "$out/${P}_THEIA.zip" -- "${P}_en.json" ${P}_DAT_*.zip *SUMS)
(cd "$out" && md5sum "${P}_THEIA.zip" > "${P}_THEIA.zip.md5")
ls -l "$out"
