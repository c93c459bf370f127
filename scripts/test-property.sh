#!/usr/bin/env bash
# The accounting property test at any size: npm run test:property -- --runs 100000 [--seed S]
# (tap does not pass arguments through to a test file, so they travel as environment).
set -euo pipefail
cd "$(dirname "$0")/.."
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) export PROPERTY_RUNS="$2"; shift 2 ;;
    --seed) export PROPERTY_SEED="$2"; shift 2 ;;
    *) echo "unknown argument: $1 (use --runs N, --seed S)" >&2; exit 2 ;;
  esac
done
exec npx tap --timeout=0 --disable-coverage test/sql/property.test.ts
