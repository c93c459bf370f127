-- Reading messages into typed values. Every rejection is SQLSTATE 22023 with the message
-- '<field>: <problem>' and COLUMN = field, so consumers can dead-letter with a reason and the
-- API can name the field (docs/CONTRACTS.md).
-- Names starting with `_` are private to sql/ (docs/CONTRACTS.md); the others are the contract.

create or replace function _bad_input(field text, problem text) returns void
  language plpgsql immutable
  as $$
begin
  raise exception '%: %', field, problem using errcode = '22023', column = field;
end $$;

-- A JSON value as text, with null, JSON null and '' all meaning "absent".
create or replace function _input_text(j jsonb, field text) returns text
  language sql immutable parallel safe
  as $$
    select case when j is null or jsonb_typeof(j -> field) is null or jsonb_typeof(j -> field) = 'null' then null
                when jsonb_typeof(j -> field) = 'string' then nullif(j ->> field, '')
                else j ->> field end
  $$;

create or replace function _input_bounded_text(j jsonb, field text, max_len integer) returns text
  language plpgsql immutable
  as $$
declare raw text := _input_text(j, field);
begin
  if raw is null or length(raw) <= max_len then return raw; end if;
  perform _bad_input(field, format('at most %s characters', max_len));
  return null;
end $$;

create or replace function _input_bool(j jsonb, field text) returns boolean
  language plpgsql immutable
  as $$
declare raw text := lower(_input_text(j, field));
begin
  if raw is null then return null; end if;
  if raw in ('true', 'false') then return raw::boolean; end if;
  perform _bad_input(field, 'must be true or false');
  return null;
end $$;

-- A decimal given as a JSON number (exact: jsonb numbers are numeric) or a string in plain or
-- exponent notation (Python's Decimal prints "0E-8"; an exponent of at most 4 digits keeps any
-- such text within numeric's range, so no cast can overflow). Absent → null.
create or replace function _input_decimal(j jsonb, field text, max_scale integer default null) returns numeric
  language plpgsql immutable
  as $$
declare
  raw text := _input_text(j, field);
  v numeric;
begin
  if raw is null then return null; end if;
  if jsonb_typeof(j -> field) not in ('number', 'string') then
    perform _bad_input(field, 'must be a decimal');
  end if;
  if length(raw) > 40 or raw !~ '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,4})?$' then
    perform _bad_input(field, format('must be a decimal, got %s', left(raw, 40)));
  end if;
  v := raw::numeric;
  if max_scale is not null and scale(v) > max_scale and v <> round(v, max_scale) then
    perform _bad_input(field, format('at most %s fractional digits', max_scale));
  end if;
  -- No market has such figures; "9e9999" would put 10,000 digits into every event and total.
  if abs(v) >= 1e30 then perform _bad_input(field, format('is out of range (at least 1e30), got %s', left(raw, 40))); end if;
  if scale(v) > 30 then
    if v <> round(v, 30) then perform _bad_input(field, 'at most 30 fractional digits'); end if;
    v := trim_scale(v); -- "0E-9999": only zeros beyond
  end if;
  return v;
end $$;

-- ISO-8601 with or without offset (no offset = UTC), or an epoch in milliseconds or seconds.
create or replace function _input_timestamp(j jsonb, field text) returns timestamptz
  language plpgsql stable
  as $$
declare
  raw text := _input_text(j, field);
  v timestamptz;
begin
  if raw is null then return null; end if;
  if raw ~ '^\d{1,16}(\.\d+)?$' then
    -- epoch: milliseconds from 10^11 on (Bybit's updatedTime), seconds below (convention 5)
    v := to_timestamp(case when raw::numeric >= 1e11 then raw::numeric / 1000 else raw::numeric end);
  elsif raw !~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|z|[+-]\d{2}(:?\d{2})?)?$' then
    perform _bad_input(field, format('must be an ISO-8601 timestamp or an epoch, got %s', left(raw, 40)));
  elsif raw ~ '(Z|z|[+-]\d{2}(:?\d{2})?)$' and raw ~ 'T|\s\d' then
    v := raw::timestamptz;
  else
    v := raw::timestamp at time zone 'UTC';
  end if;
  -- every time is written back as ISO-8601 with a four-digit year (SPEC.md §2 convention 5)
  if v >= '10000-01-01T00:00:00Z' or v < '0001-01-01T00:00:00Z' then
    perform _bad_input(field, format('is outside the years 0001 to 9999, got %s', left(raw, 40)));
  end if;
  return v;
exception when datetime_field_overflow or invalid_datetime_format or invalid_time_zone_displacement_value then
  perform _bad_input(field, format('is not a valid time, got %s', left(raw, 40)));
  return null;
end $$;

create or replace function _input_asset(raw text, field text default 'asset') returns text
  language plpgsql immutable
  as $$
begin
  if raw is null then perform _bad_input(field, 'is required'); end if;
  -- ASCII before upper(): upper() folds some other letters onto ASCII ones (ſ → S, ı → I)
  if raw !~ '^[A-Za-z0-9]{2,20}$' then
    perform _bad_input(field, format('must be 2-20 letters or digits, got %s', left(raw, 40)));
  end if;
  return upper(raw);
end $$;

create or replace function _input_mode(raw text, field text default 'mode') returns text
  language plpgsql immutable
  as $$
begin
  if raw is null then return 'one-way'; end if;
  if lower(raw) not in ('one-way', 'hedge') then
    perform _bad_input(field, format('must be one-way or hedge, got %s', left(raw, 40)));
  end if;
  return lower(raw);
end $$;

-- +1 for Buy, -1 for Sell.
create or replace function _input_side(raw text, field text default 'side') returns integer
  language plpgsql immutable
  as $$
begin
  if raw is null then perform _bad_input(field, 'is required'); end if;
  case lower(raw)
    when 'buy' then return 1;
    when 'sell' then return -1;
    else perform _bad_input(field, format('must be Buy or Sell, got %s', left(raw, 40)));
  end case;
  return null;
end $$;

-- A report field: the first present value among its names, then the same names in the report's
-- `raw` record (the Gateway forwards Bybit's record there, SPEC.md §4.3).
create or replace function _report_value(item jsonb, names text[]) returns jsonb
  language plpgsql immutable
  as $$
declare
  src jsonb;
  name text;
begin
  -- PL/pgSQL, not an SQL query: a report reads a dozen fields, and an SQL function with a FROM
  -- clause is not inlined, so it would be planned again for every field of every report
  foreach src in array array[item, case when jsonb_typeof(item -> 'raw') = 'object' then item -> 'raw' end] loop
    continue when src is null;
    foreach name in array names loop
      if jsonb_typeof(src -> name) is not null and jsonb_typeof(src -> name) <> 'null' and src ->> name <> '' then
        return src -> name;
      end if;
    end loop;
  end loop;
  return null;
end $$;

create or replace function _report_decimal(item jsonb, names text[], max_scale integer default null) returns numeric
  language sql immutable
  as $$ select _input_decimal(jsonb_build_object(names[1], _report_value(item, names)), names[1], max_scale) $$;

create or replace function _report_timestamp(item jsonb, names text[]) returns timestamptz
  language sql stable
  as $$ select _input_timestamp(jsonb_build_object(names[1], _report_value(item, names)), names[1]) $$;

-- What the transport knows about a message, passed by the consumers beside the body as
-- {source, message_key, body_key, received_at, trace_id}; a psql call passes none of it.
-- trace_id: the body's own first (SPEC.md §6.2), then the transport's, else a new one.
create or replace function _input_meta(meta jsonb, body jsonb,
  out source text, out received_at timestamptz, out trace_id text, out message_key text, out body_key text)
  language plpgsql
  as $$
declare
  given jsonb := case when jsonb_typeof(meta) = 'object' then meta else '{}' end;
begin
  source := coalesce(given ->> 'source', 'manual');
  received_at := coalesce((given ->> 'received_at')::timestamptz, now());
  trace_id := coalesce(_input_bounded_text(body, 'trace_id', 128), given ->> 'trace_id', gen_random_uuid()::text);
  message_key := given ->> 'message_key';
  body_key := given ->> 'body_key';
end $$;

-- R-3 fallback key: SHA-256 (hex) of the body's RFC 8785 canonical JSON. The consumers compute it
-- from the message text (src/messaging/body-key.ts) and pass it as meta's body_key; without it (a
-- direct SQL call) jsonb's text stands in for it: keys sorted, numbers as written.
create or replace function _body_hash(body jsonb) returns text
  language sql stable parallel safe
  as $$ select encode(sha256(convert_to(body::text, 'UTF8')), 'hex') $$;
