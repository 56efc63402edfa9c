#!/usr/bin/env bash
# The HTTP door against what Theia runs today: Debian's Apache httpd with
# mod_dav, on this machine, same client (curl -T), plain HTTP on loopback,
# Basic auth from the same htpasswd file (bcrypt, `htpasswd -B`, default
# cost 5, for both servers).
#
#   1. Time for a 512 MiB PUT to be answered (curl's time_total), three
#      alternated rounds (Apache, depot, Apache, depot, ...), medians, and
#      the ratio Apache / depot (target >= 1.0x). depot answers once the
#      body is stored, hashed (MD5) and claimed as a deposit; Apache once it
#      is stored. The body is random bytes named MSEC_THEIA.zip: the later
#      ingest fails, which is not measured.
#   2. depot's peak RSS (VmHWM) with 8 concurrent 512 MiB uploads by 8
#      producers (target < 64 MiB).
#
# Usage: bench/http.sh [DEPOT_BINARY]   (default target/release/depot,
# or $CARGO_TARGET_DIR/release/depot). Needs apache2 (Debian's, with
# mod_dav_fs), htpasswd, redis-server, curl, python3, ~5 GiB in $TMPDIR.
# Run as root the Apache workers are www-data (its usual user). Everything
# started here is stopped by its pid and the temp dir removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

depot=${1:-${CARGO_TARGET_DIR:-target}/release/depot}
depot=$(realpath "$depot")
[ -x "$depot" ] || { echo "no depot binary at $depot (cargo build --release)" >&2; exit 1; }
[ -x /usr/sbin/apache2 ] || { echo "needs Debian's apache2 (/usr/sbin/apache2)" >&2; exit 1; }
MIB=${BENCH_MIB:-512}
ROUNDS=3
CONC=8
MODULES=/usr/lib/apache2/modules

T=$(mktemp -d)
chmod 755 "$T"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
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

# --- the body and the users file (the same for both servers) ---------------
head -c "$((MIB << 20))" /dev/urandom >"$T/MSEC_THEIA.zip"
producers=(MSEC BNCA BNCB BNCC BNCD BNCE BNCF BNCG)
htpasswd -c -b -B "$T/users" "${producers[0]}" pw 2>/dev/null
for p in "${producers[@]:1}"; do htpasswd -b -B "$T/users" "$p" pw 2>/dev/null; done
chmod 644 "$T/users"

# --- redis + depot -------------------------------------------------------------
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$T" >/dev/null &
pids+=($!)
wait_port "$rport"
dport=$(free_port)
mkdir -p "$T/depot/drop" "$T/depot/publish"
cp "$T/users" "$T/depot/users"
cat >"$T/depot/config.toml" <<EOF
drop_root = "drop"
publish_root = "publish"
[redis]
url = "redis://127.0.0.1:$rport"
[http]
listen = "127.0.0.1:$dport"
users_file = "users"
max_uploads_per_producer = 8
EOF
for p in "${producers[@]}"; do mkdir -p "$T/depot/drop/$p/new"; done
RUST_LOG=warn "$depot" run --config "$T/depot/config.toml" 2>"$T/depot.log" &
dpid=$!
pids+=($dpid)
wait_port "$dport"

# --- apache2 + mod_dav -------------------------------------------------------
aport=$(free_port)
A=$T/apache
mkdir -p "$A/lock" "$T/dav/MSEC/new"
chmod 777 "$A/lock" "$T/dav/MSEC/new"
{
    echo "ServerRoot \"$A\""
    echo "DefaultRuntimeDir \"$A\""
    echo "PidFile \"$A/apache2.pid\""
    echo "ErrorLog \"$A/error.log\""
    echo "Mutex file:$A default"
    echo "Listen 127.0.0.1:$aport"
    echo "ServerName 127.0.0.1"
    echo "User www-data"
    echo "Group www-data"
    for m in mpm_event authz_core authn_core authz_user auth_basic authn_file alias dav dav_fs; do
        echo "LoadModule ${m}_module $MODULES/mod_$m.so"
    done
    echo "DavLockDB \"$A/lock/davlock\""
    echo "Alias /data \"$T/dav\""
    echo "<Directory \"$T/dav\">"
    echo "  Dav On"
    echo "  AuthType Basic"
    echo "  AuthName depot-bench"
    echo "  AuthBasicProvider file"
    echo "  AuthUserFile \"$T/users\""
    echo "  Require valid-user"
    echo "</Directory>"
} >"$A/apache2.conf"
/usr/sbin/apache2 -DFOREGROUND -f "$A/apache2.conf" 2>"$A/stderr.log" &
pids+=($!)
wait_port "$aport"

# One PUT; prints curl's time_total, fails unless 201/204.
put() { # PORT USER
    local out
    out=$(curl -sS -u "$2:pw" -T "$T/MSEC_THEIA.zip" "http://127.0.0.1:$1/data/$2/new/" -o /dev/null -w '%{http_code} %{time_total}')
    case ${out%% *} in 201 | 204) echo "${out#* }" ;; *) echo "PUT on $1 answered ${out%% *}" >&2; tail -n 5 "$A/error.log" "$T/depot.log" >&2; exit 1 ;; esac
}
# Lets depot finish with the deposit (it fails: random bytes), then clears
# the producer's folders so each round starts alike.
settle_depot() {
    for _ in $(seq 600); do
        [ -z "$(find "$T/depot/drop" -path '*/new/*' -print -quit)" ] && break
        sleep 0.1
    done
    sleep 1
    for p in "${producers[@]}"; do rm -rf "$T/depot/drop/$p/previous" "$T/depot/drop/$p/rejected"; done
}

echo "load before: $(uptime)"
a=() d=()
for r in $(seq "$ROUNDS"); do
    sync
    ta=$(put "$aport" MSEC)
    rm -f "$T/dav/MSEC/new/MSEC_THEIA.zip"
    sync
    td=$(put "$dport" MSEC)
    settle_depot
    echo "round $r: apache ${ta}s  depot ${td}s"
    a+=("$ta") d+=("$td")
done
median() { printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"; }
ma=$(median "${a[@]}")
md=$(median "${d[@]}")
echo "median: apache ${ma}s  depot ${md}s  ratio apache/depot $(awk -v a="$ma" -v d="$md" 'BEGIN { printf "%.2f", a / d }')x (target >= 1.0x)"

hwm() { awk '/^VmHWM/ { print $2 }' "/proc/$dpid/status"; }
echo "depot VmHWM before the concurrent uploads: $(($(hwm) / 1024)) MiB"
cpids=()
for p in "${producers[@]}"; do
    put "$dport" "$p" >"$T/conc-$p.time" &
    cpids+=($!)
done
peak=0
alive() { for c in "${cpids[@]}"; do kill -0 "$c" 2>/dev/null && return 0; done; return 1; }
while alive; do
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$dpid/status")
    [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.1
done
for c in "${cpids[@]}"; do wait "$c"; done
echo "$CONC concurrent ${MIB} MiB uploads: times $(cat "$T"/conc-*.time | tr '\n' ' ')"
echo "depot RSS peak while they ran: $((peak / 1024)) MiB sampled, VmHWM $(($(hwm) / 1024)) MiB (target < 64 MiB)"
settle_depot
echo "load after: $(uptime)"
