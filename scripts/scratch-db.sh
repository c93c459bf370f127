#!/usr/bin/env bash
# Development helper: (re)create a database NAME on the local server and migrate it with the
# service's own migrate (npm run migrate: migrations recorded in pgmigrations, graphile-worker's
# schema, the sql/ definitions and their bookkeeping), so the service starts on it as on any
# database it created itself. Poke at it with psql.
# Usage: scripts/scratch-db.sh [--no-build] NAME   (then: psql -h 127.0.0.1 -U postgres NAME)
#   --no-build  use the existing dist/ (already built) instead of building first
set -euo pipefail
build=1
if [[ ${1:-} == --no-build ]]; then build=0; shift; fi
name=${1:?database name}
cd "$(dirname "$0")/.."
url="postgres://postgres@127.0.0.1:5432/$name"
psql=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q)
"${psql[@]}" -d postgres -c "drop database if exists \"$name\" with (force)" -c "create database \"$name\""
if ((build)); then npm run --silent build; fi
DATABASE_URL=$url node dist/src/db/migrate-cli.js
echo "ready: $url"
