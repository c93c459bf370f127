-- Wire formats shared by every JSON a function returns (SPEC.md conventions 3-5):
-- decimals as canonical strings at 8 places, timestamps as ISO-8601 UTC with milliseconds.

create or replace function dec_out(x numeric) returns text
  language sql immutable parallel safe
  as $$ select trim_scale(round(x, 8))::text $$;

-- Stable, not immutable: to_char is stable, and PostgreSQL inlines an SQL function only when its
-- declared volatility is not stricter than its body's (an uninlined call is planned every time).
create or replace function ts_out(t timestamptz) returns text
  language sql stable parallel safe
  as $$ select to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

-- Every division is rounded to 10 places, half away from zero (ACCOUNTING.md §1).
-- The dividend gets 30 more places first: PostgreSQL picks the scale of a quotient itself
-- (sometimes only 12 places), and rounding that rounded quotient again to 10 can be off by one
-- in the last place (double rounding).
create or replace function div10(a numeric, b numeric) returns numeric
  language sql immutable parallel safe
  as $$ select round((a * 1.000000000000000000000000000000) / b, 10) $$;
