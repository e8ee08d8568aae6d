#!/usr/bin/env bash
# Installs what the project needs on a fresh machine. Idempotent: quick when all is there.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "setup: installing the $component component"
    rustup component add "$component"
  fi
done
