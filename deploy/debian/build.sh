#!/usr/bin/env bash
# Builds target/debian/switchyard_VERSION_ARCH.deb: the release binary, then the man page
# and shell completions made by that binary, then `cargo deb --no-build` (cargo-deb from
# crates.io: `cargo install cargo-deb`). Prints the package's path.
# PROFILE=dev packages the debug binary the test suite already built (tests/package.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo-deb >/dev/null || { echo "needs cargo-deb: cargo install cargo-deb" >&2; exit 1; }
profile=${PROFILE:-release}
case $profile in
  release) cargo build --release --locked >&2; bin=target/release/switchyard ;;
  dev) bin=target/debug/switchyard; [ -x "$bin" ] || cargo build --locked >&2 ;;
  *) echo "PROFILE must be release or dev" >&2; exit 1 ;;
esac
mkdir -p target/deb-assets
"$bin" man | gzip -9n > target/deb-assets/switchyard.1.gz
"$bin" completions bash > target/deb-assets/switchyard.bash
"$bin" completions zsh > target/deb-assets/_switchyard
"$bin" completions fish > target/deb-assets/switchyard.fish
gzip -9nc README.md > target/deb-assets/README.md.gz
gzip -9nc CHANGELOG.md > target/deb-assets/changelog.gz
"$bin" check deploy/debian/switchyard.yaml >&2
cargo deb --no-build --profile "$profile" 2>&1 | tail -1
