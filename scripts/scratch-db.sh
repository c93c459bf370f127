#!/usr/bin/env bash
# Development helper: (re)create a database NAME on the local server with every migration,
# graphile-worker's schema and every sql/ definition applied, for poking at it with psql.
# Usage: scripts/scratch-db.sh NAME   (then: psql -h 127.0.0.1 -U postgres NAME)
set -euo pipefail
name=${1:?database name}
cd "$(dirname "$0")/.."
psql=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q)
"${psql[@]}" -d postgres -c "drop database if exists \"$name\" with (force)" -c "create database \"$name\""
for f in migrations/*.sql; do sed '/^-- Down Migration/,$d' "$f" | "${psql[@]}" -d "$name"; done
npx graphile-worker -c "postgres://postgres@127.0.0.1:5432/$name" --schema-only >/dev/null
for f in sql/*.sql; do "${psql[@]}" -d "$name" -f "$f"; done
echo "ready: postgres://postgres@127.0.0.1:5432/$name"
