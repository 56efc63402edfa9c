#!/usr/bin/env bash
# The Debian package: builds depot, writes the man pages and the shell
# completions where Cargo.toml's [package.metadata.deb] assets expect them
# (target/assets/), then `cargo deb`. Needs cargo-deb (`cargo install
# cargo-deb --locked`, once). The package is target/debian/depot_*.deb.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || { echo "scripts/deb.sh: cargo install cargo-deb --locked, first" >&2; exit 1; }
cargo build --release --locked
rm -rf target/assets
./target/release/depot man target/assets/man
gzip -9n target/assets/man/man1/*.1 target/assets/man/man5/*.5
mkdir -p target/assets/completions
./target/release/depot completions bash >target/assets/completions/depot
./target/release/depot completions zsh >target/assets/completions/_depot
./target/release/depot completions fish >target/assets/completions/depot.fish
cargo deb --locked
ls target/debian/depot_*.deb
