-- Up Migration
-- Validation checkpoints (issue 21, SPEC.md §11 "History depth"): a leg's ledger replay as it
-- stood at one ledger id, written by validation after it replayed, so that the next validation
-- replays only the rows after it instead of the whole ledger. A cache of the ledger, never a
-- part of it: a validation returns the same result with or without one, and
-- validate_position(..., full => true) ignores them (sql/160_validate_position.sql).
--   ledger_id: the replay covers every ledger row of the leg with an id up to this one (fill
--     or reset), and no other; ids of one position only grow (its writers hold its row lock
--     from taking an id until commit), so no row below it can appear later
--   size, avg_price: what the replay gives at ledger_id
--   last_entry_at: the latest executed_at of those rows that speak about the size (R-17
--     step 4), which a reset does not end, so it cannot be read from the rows after one
-- One row per leg, rewritten in place: fillfactor leaves room for HOT updates.

create table if not exists position_checkpoints (
  position_id uuid not null references positions (id) on delete cascade,
  leg text not null check (leg in ('net', 'long', 'short')),
  ledger_id bigint not null,
  size numeric not null,
  avg_price numeric,
  last_entry_at timestamptz,
  written_at timestamptz not null default now(),
  primary key (position_id, leg)
) with (fillfactor = 80);

-- Down Migration
drop table if exists position_checkpoints;
