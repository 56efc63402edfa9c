#!/usr/bin/env bash
# depot's test command: installs what the tests need when it is missing,
# then runs the whole suite (`cargo test --workspace --locked`).
#
#   scripts/test.sh                  everything
#   scripts/test.sh --deps-only      only install what is missing
#   scripts/test.sh -- ARGS          extra arguments for cargo test
#
# How long: the first run on a fresh 2-core machine builds Garage (the S3
# server tests/s3.rs runs; not in Debian, `cargo install garage`: 13 to 21
# minutes, once, into ~/.cargo/bin) and depot's test build (about 10
# minutes); later runs take 3 to 5 minutes. Needs root for apt-get and for
# tests/transport.rs (system accounts and sshd chroots, inside a private
# mount namespace: the host's /etc is never changed).
set -euo pipefail
cd "$(dirname "$0")/.."

deps_only=false
if [ "${1:-}" = --deps-only ]; then deps_only=true; shift; fi
[ "${1:-}" = -- ] && shift

need() { command -v "$1" >/dev/null 2>&1; }
updated=false
apt_install() {
    if ! need apt-get; then
        echo "scripts/test.sh: cannot install $* (no apt-get): install it by hand" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $updated; then apt-get update -qq || true; updated=true; fi
    echo "scripts/test.sh: installing $*" >&2
    apt-get install -y -qq "$@"
}

echo "scripts/test.sh: a first run on a fresh machine takes 25 to 35 minutes (Garage's build, then depot's); later runs 3 to 5." >&2
# Integration tests start their own redis-server on a free loopback port.
need redis-server || apt_install redis-server
# tests/systemd.rs runs systemd-analyze, systemd-sysusers and systemd-tmpfiles.
need systemd-analyze || apt_install systemd
# rediss:// goes through native-tls (OpenSSL); tests make their own CA with openssl.
{ [ -e /usr/include/openssl/ssl.h ] && need pkg-config; } || apt_install libssl-dev pkg-config
need openssl || apt_install openssl
# tests/transport.rs: its own sshd, the real sftp/scp/ssh clients, rsync with
# rrsync (shipped with rsync, a python3 script) as the forced command, each
# test in a private mount namespace (unshare, util-linux).
[ -x /usr/sbin/sshd ] || apt_install openssh-server
{ need sftp && need scp && need ssh-keygen; } || apt_install openssh-client
{ need rsync && need rrsync; } || apt_install rsync
need python3 || apt_install python3
# tests/cli.rs makes a BagIt bag as a producer would: `zip -r bag.zip mybag/`.
need zip || apt_install zip
need unshare || apt_install util-linux
# tests/cli.rs renders the man pages with `man -l`.
need man || apt_install man-db
# tests/operate.rs checks the alert rules with promtool: only the tool, taken
# out of Debian's prometheus package (installing the package would start a
# Prometheus server).
need promtool || {
    d="$(mktemp -d)"
    chmod 755 "$d"
    if ! $updated; then apt-get update -qq || true; updated=true; fi
    (cd "$d" && apt-get download -qq prometheus)
    dpkg-deb --fsys-tarfile "$d"/prometheus_*.deb | tar -xO ./usr/bin/promtool >/usr/local/bin/promtool
    chmod 755 /usr/local/bin/promtool
    rm -rf "$d"
}
need cargo || { echo "scripts/test.sh: cargo is required (a Rust toolchain, https://rustup.rs)" >&2; exit 1; }
# tests/s3.rs runs its own Garage (S3) server, single node: not in Debian, so
# built from crates.io once (13 to 21 min on 2 cores) into ~/.cargo/bin,
# which the tests find on PATH. curl is the tests' own S3 client (its
# --aws-sigv4), to look at the bucket from outside depot.
export PATH="$HOME/.cargo/bin:$PATH"
if ! need garage; then
    echo "scripts/test.sh: building garage once (13 to 21 minutes on 2 cores)" >&2
    time cargo install garage --locked
fi
need curl || apt_install curl
# tests/pub.rs downloads releases with Debian's wget too (--content-disposition, -c).
need wget || apt_install wget
# tests/http.rs makes its users files with Apache's own htpasswd (-B, -m).
need htpasswd || apt_install apache2-utils
# tests/page.rs loads the web page in Debian's headless Chromium (--dump-dom,
# --screenshot).
need chromium || apt_install chromium
# tests/validators.rs: the real format checkers and virus scanner.
need ncgen || apt_install netcdf-bin
need fitsverify || apt_install fitsverify
need clamscan || apt_install clamav

# tests/moddav.rs runs Debian's Apache with mod_dav (the migration path).
# Installed without letting the package start its service on port 80: a
# policy-rc.d refusing every start for the install only (one already there,
# e.g. a container's, is put back as it was).
[ -x /usr/sbin/apache2 ] || {
    saved=""
    if [ -e /usr/sbin/policy-rc.d ]; then saved="$(mktemp)"; cp -p /usr/sbin/policy-rc.d "$saved"; fi
    restore_policy() { if [ -n "$saved" ]; then mv -f "$saved" /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi; }
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap restore_policy EXIT
    apt_install apache2
    restore_policy
    trap - EXIT
}

$deps_only && exit 0
cargo test --workspace --locked "$@"
