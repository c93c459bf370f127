#!/usr/bin/env bash
# The reliability suite at any size: npm run test:reliability -- --events 100000 [--seed S]
# (tap does not pass arguments to test files, so they travel as environment).
set -euo pipefail
cd "$(dirname "$0")/.."
while [ $# -gt 0 ]; do
  case "$1" in
    --events) export RELIABILITY_FILLS="$2"; shift 2 ;;
    --requests) export RELIABILITY_HTTP_REQUESTS="$2"; shift 2 ;;
    --seed) export RELIABILITY_SEED="$2"; shift 2 ;;
    *) echo "unknown argument: $1 (use --events N, --requests N, --seed S)" >&2; exit 2 ;;
  esac
done
npm run build --silent
exec npx tap --timeout=0 --disable-coverage 'test/reliability/*.test.ts'
