// The CHECK constraints of positions, position_fills, position_events and inbox. Migration 13
// rewrote them (issue 23: fewer stored expressions for every write); the schema must still refuse
// every row the rules of migrations 1, 9 and 10 refused, psql included, and nothing else. The
// rules are written out below as those migrations had them, one constraint each: every case
// breaks exactly one rule (checked against the written-out rules first), so that dropping any
// rule from the schema fails the test; random rows then compare the schema with all the rules.
import t from 'tap';
import { freshDatabase, type TestDb, writePositionsDirectly } from '../helpers/db.js';
import { rng } from '../helpers/random.js';

type Row = Record<string, string | null>;

/** The rules as migrations 1, 9 and 10 wrote them, one CHECK constraint each. */
const RULES: Record<string, Record<string, string>> = {
  positions: {
    asset_format: `asset ~ '^[A-Z0-9]{2,20}$'`,
    mode_check: `mode in ('one-way', 'hedge')`,
    legs_shape: `case when mode = 'hedge'
      then long_size is not null and short_size is not null and long_size >= 0 and short_size >= 0
           and size = long_size - short_size
      else long_size is null and short_size is null and long_avg_price is null and short_avg_price is null
           and long_unrealized_pnl is null and short_unrealized_pnl is null
           and long_realized_pnl is null and short_realized_pnl is null
    end`,
    hedge_pnl_sums: `mode <> 'hedge' or (
      unrealized_pnl = coalesce(long_unrealized_pnl, 0) + coalesce(short_unrealized_pnl, 0)
      and realized_pnl = coalesce(long_realized_pnl, 0) + coalesce(short_realized_pnl, 0))`,
    avg_positive: `average_entry_price is null or average_entry_price > 0`,
    leg_avg_positive: `(long_avg_price is null or long_avg_price > 0) and (short_avg_price is null or short_avg_price > 0)`,
    price_positive: `current_price is null or current_price > 0`,
    fees_nonnegative: `total_fees >= 0`,
    closed_iff_flat: `(closed_at is null) =
      (case when mode = 'hedge' then coalesce(long_size, 0) + coalesce(short_size, 0) else abs(size) end > 0)`,
    flat_no_unrealized: `closed_at is null or unrealized_pnl = 0`,
    avg_source_check: `average_entry_price_source in ('fills', 'exchange')`,
    price_source_check: `current_price_source in ('report', 'ticker', 'fill')`,
    version_positive: `version >= 1`,
  },
  position_fills: {
    kind_check: `kind in ('fill', 'reset')`,
    leg_check: `leg in ('net', 'long', 'short')`,
    side_check: `side in ('Buy', 'Sell')`,
    fee_check: `fee >= 0`,
    leg_mode: `(mode = 'hedge') = (leg <> 'net')`,
    shape: `case kind
      when 'fill' then side is not null and quantity > 0 and price > 0
      else reset_size is not null and (reset_avg_price is null or reset_avg_price > 0)
           and (leg = 'net' or reset_size >= 0)
    end`,
  },
  position_events: {
    source_check: `source in ('order_execution', 'websocket', 'validation', 'manual', 'exchange_rest')`,
    kind_check: `kind in ('created', 'fill', 'report', 'report_stale', 'size_discrepancy', 'validation_fix',
                          'closed', 'reopened', 'avg_price_replaced', 'foreign_write')`,
    position_required: `position_id is not null or kind = 'foreign_write'`,
  },
  inbox: {
    outcome_check: `outcome in ('applied', 'no_op', 'stale', 'other_shape')`,
  },
};

const AT = '2026-12-01T10:00:00Z';
const ONE_WAY_OPEN: Row = {
  mode: 'one-way',
  size: '2',
  average_entry_price: '100',
  average_entry_price_source: 'fills',
  current_price: '105',
  current_price_at: AT,
  current_price_source: 'fill',
  unrealized_pnl: '10',
  realized_pnl: '5',
  total_fees: '1',
  opened_at: AT,
  closed_at: null,
  version: '3',
};
const ONE_WAY_CLOSED: Row = {
  ...ONE_WAY_OPEN,
  size: '0',
  average_entry_price: null,
  average_entry_price_source: null,
  unrealized_pnl: '0',
  opened_at: null,
  closed_at: AT,
};
const HEDGE_OPEN: Row = {
  ...ONE_WAY_OPEN,
  mode: 'hedge',
  size: '1',
  long_size: '3',
  short_size: '2',
  long_avg_price: '100',
  short_avg_price: '110',
  long_unrealized_pnl: '1',
  short_unrealized_pnl: '2',
  unrealized_pnl: '3',
  long_realized_pnl: '3',
  short_realized_pnl: '4',
  realized_pnl: '7',
};
const HEDGE_CLOSED: Row = {
  ...HEDGE_OPEN,
  size: '0',
  long_size: '0',
  short_size: '0',
  long_avg_price: null,
  short_avg_price: null,
  long_unrealized_pnl: '0',
  short_unrealized_pnl: '0',
  unrealized_pnl: '0',
  average_entry_price: null,
  average_entry_price_source: null,
  opened_at: null,
  closed_at: AT,
};
const LEG_COLUMNS = [
  'long_size',
  'short_size',
  'long_avg_price',
  'short_avg_price',
  'long_unrealized_pnl',
  'short_unrealized_pnl',
  'long_realized_pnl',
  'short_realized_pnl',
];

/** [the one rule the row breaks (null: none), the row]. */
type Case = [string | null, Row];
const POSITION_CASES: Case[] = [
  [null, ONE_WAY_OPEN],
  [null, ONE_WAY_CLOSED],
  [null, HEDGE_OPEN],
  [null, HEDGE_CLOSED],
  [
    null,
    {
      ...ONE_WAY_OPEN,
      average_entry_price: null,
      average_entry_price_source: null,
      current_price: null,
      current_price_source: null,
      current_price_at: null,
    },
  ],
  [null, { ...HEDGE_OPEN, long_unrealized_pnl: null, unrealized_pnl: '2', long_realized_pnl: null, realized_pnl: '4' }],
  [null, { ...ONE_WAY_OPEN, size: '-2', version: '1', total_fees: '0' }],
  ['asset_format', { ...ONE_WAY_OPEN, asset: 'btcusdt' }],
  ['asset_format', { ...ONE_WAY_OPEN, asset: 'B' }],
  ['asset_format', { ...ONE_WAY_OPEN, asset: 'BTC-USDT' }],
  ['mode_check', { ...ONE_WAY_OPEN, mode: 'cross' }],
  ['legs_shape', { ...HEDGE_OPEN, long_size: null }],
  ['legs_shape', { ...HEDGE_OPEN, short_size: null }],
  ['legs_shape', { ...HEDGE_OPEN, long_size: '-1', size: '-3' }],
  ['legs_shape', { ...HEDGE_OPEN, short_size: '-1', size: '4' }],
  ['legs_shape', { ...HEDGE_OPEN, size: '2' }],
  ...LEG_COLUMNS.map((c): Case => ['legs_shape', { ...ONE_WAY_OPEN, [c]: '1' }]),
  ['hedge_pnl_sums', { ...HEDGE_OPEN, unrealized_pnl: '4' }],
  ['hedge_pnl_sums', { ...HEDGE_OPEN, long_unrealized_pnl: null }],
  ['hedge_pnl_sums', { ...HEDGE_OPEN, realized_pnl: '8' }],
  ['hedge_pnl_sums', { ...HEDGE_OPEN, short_realized_pnl: null }],
  ['avg_positive', { ...ONE_WAY_OPEN, average_entry_price: '0' }],
  ['avg_positive', { ...ONE_WAY_OPEN, average_entry_price: '-1' }],
  ['leg_avg_positive', { ...HEDGE_OPEN, long_avg_price: '0' }],
  ['leg_avg_positive', { ...HEDGE_OPEN, short_avg_price: '-5' }],
  ['price_positive', { ...ONE_WAY_OPEN, current_price: '0' }],
  ['price_positive', { ...HEDGE_OPEN, current_price: '-105' }],
  ['fees_nonnegative', { ...ONE_WAY_OPEN, total_fees: '-0.01' }],
  ['closed_iff_flat', { ...ONE_WAY_OPEN, closed_at: AT, unrealized_pnl: '0' }],
  ['closed_iff_flat', { ...ONE_WAY_CLOSED, closed_at: null }],
  [
    'closed_iff_flat',
    { ...HEDGE_OPEN, closed_at: AT, long_unrealized_pnl: '0', short_unrealized_pnl: '0', unrealized_pnl: '0' },
  ],
  ['closed_iff_flat', { ...HEDGE_CLOSED, closed_at: null }],
  ['closed_iff_flat', { ...HEDGE_CLOSED, long_size: '1', size: '1', closed_at: AT }],
  ['flat_no_unrealized', { ...ONE_WAY_CLOSED, unrealized_pnl: '1' }],
  ['flat_no_unrealized', { ...HEDGE_CLOSED, long_unrealized_pnl: '-1', unrealized_pnl: '-1' }],
  ['avg_source_check', { ...ONE_WAY_OPEN, average_entry_price_source: 'guess' }],
  ['price_source_check', { ...ONE_WAY_OPEN, current_price_source: 'oracle' }],
  ['version_positive', { ...ONE_WAY_OPEN, version: '0' }],
];

const FILL: Row = {
  asset: 'FILLUSDT',
  mode: 'one-way',
  kind: 'fill',
  leg: 'net',
  side: 'Buy',
  quantity: '1',
  price: '100',
  fee: '0.1',
};
const RESET: Row = {
  asset: 'FILLUSDT',
  mode: 'hedge',
  kind: 'reset',
  leg: 'long',
  reset_size: '2',
  reset_avg_price: '100',
  fee: '0',
};
const FILL_CASES: Case[] = [
  [null, FILL],
  [null, RESET],
  [null, { ...RESET, mode: 'one-way', leg: 'net', reset_size: '-2', reset_avg_price: null, side: 'Sell' }],
  [null, { ...FILL, mode: 'hedge', leg: 'short', side: 'Sell', fee: '0' }],
  ['kind_check', { ...RESET, kind: 'adjust' }],
  ['leg_check', { ...RESET, leg: 'both' }],
  ['side_check', { ...FILL, side: 'BUY' }],
  ['side_check', { ...RESET, side: 'buy' }],
  ['fee_check', { ...FILL, fee: '-1' }],
  ['leg_mode', { ...FILL, leg: 'long' }],
  ['leg_mode', { ...FILL, mode: 'hedge' }],
  ['leg_mode', { ...RESET, leg: 'net' }],
  ['shape', { ...FILL, side: null }],
  ['shape', { ...FILL, quantity: '0' }],
  ['shape', { ...FILL, price: '-1' }],
  ['shape', { ...RESET, reset_size: null }],
  ['shape', { ...RESET, reset_avg_price: '0' }],
  ['shape', { ...RESET, reset_size: '-1' }],
];

const EVENT: Row = { asset: 'FILLUSDT', mode: 'one-way', source: 'order_execution', kind: 'fill' };
const EVENT_CASES: Case[] = [
  [null, EVENT],
  [null, { ...EVENT, position_id: null, source: 'manual', kind: 'foreign_write' }],
  ['source_check', { ...EVENT, source: 'robot' }],
  ['kind_check', { ...EVENT, kind: 'bogus' }],
  ['position_required', { ...EVENT, position_id: null }],
];

const INBOX_CASES: Case[] = [
  [null, { source: 'q', outcome: 'other_shape' }],
  ['outcome_check', { source: 'q', outcome: 'bogus' }],
];

/** The rules of `table` that these rows break (false, not null), row by row. */
async function brokenRules(db: TestDb, table: string, rows: Row[]): Promise<string[][]> {
  const checks = Object.entries(RULES[table]!)
    .map(([name, rule]) => `case when not (${rule}) then '${name}' end`)
    .join(', ');
  const r = await db.query<{ broken: string[] }>(
    `select array_remove(array[${checks}], null) as broken
       from jsonb_populate_recordset(null::${table}, $1) with ordinality x order by ordinality`,
    [JSON.stringify(rows)],
  );
  return r.rows.map((x) => x.broken);
}

/** Writes the row into `table` as psql would (for positions, in the service's own window). */
async function write(db: TestDb, table: string, row: Row): Promise<void> {
  const columns = Object.keys(row).join(', ');
  const sql = `insert into ${table} (${columns}) select ${columns} from jsonb_populate_record(null::${table}, $1)`;
  if (table === 'positions') await writePositionsDirectly(db, sql, [JSON.stringify(row)]);
  else await db.query(sql, [JSON.stringify(row)]);
}

/** Rewrites the stored row `id` of positions into `row` (leg columns it lacks: null), as a fill's UPDATE does. */
async function rewrite(db: TestDb, id: string, row: Row): Promise<void> {
  const full: Row = { ...Object.fromEntries(LEG_COLUMNS.map((c) => [c, null])), ...row };
  const columns = Object.keys(full).join(', ');
  await writePositionsDirectly(
    db,
    `update positions set (${columns}) = (select ${columns} from jsonb_populate_record(null::positions, $1)) where id = $2`,
    [JSON.stringify(full), id],
  );
}

const db = await freshDatabase(t);
let seq = 0;
const asset = () => `T${++seq}USDT`;
const positionId = (
  await writePositionsDirectly<{ id: string }>(
    db,
    `insert into positions (asset, closed_at) values ('FILLUSDT', now()) returning id`,
  )
).rows[0]!.id;

for (const [table, cases, fresh] of [
  ['positions', POSITION_CASES, (row: Row) => ({ asset: asset(), ...row })],
  ['position_fills', FILL_CASES, (row: Row) => ({ position_id: positionId, ...row })],
  ['position_events', EVENT_CASES, (row: Row) => ({ position_id: positionId, ...row })],
  ['inbox', INBOX_CASES, (row: Row) => ({ message_key: `k${++seq}`, ...row })],
] as const) {
  t.test(`${table}: each rule refuses the row that breaks it (23514), valid rows are stored`, async (t) => {
    const rows = cases.map(([, row]) => fresh(row));
    const broken = await brokenRules(db, table, rows);
    t.same(
      broken,
      cases.map(([rule]) => (rule ? [rule] : [])),
      'each case breaks exactly its rule of the written-out ones',
    );
    t.same(
      new Set(cases.map(([rule]) => rule).filter((r) => r !== null)),
      new Set(Object.keys(RULES[table]!)),
      'every rule has a case',
    );
    for (const [i, [rule]] of cases.entries()) {
      const row = rows[i]!;
      const what = `${rule ?? 'valid'}: ${JSON.stringify(cases[i]![1])}`;
      if (rule === null) await t.resolves(write(db, table, row), `stored, ${what}`);
      else await t.rejects(write(db, table, row), { code: '23514' }, `refused, ${what}`);
    }
  });
}

t.test('positions: an UPDATE into a row that breaks a rule is refused too, as a fill writes', async (t) => {
  const { id } = (
    await writePositionsDirectly<{ id: string }>(
      db,
      `insert into positions (asset, closed_at) values ($1, now()) returning id`,
      [asset()],
    )
  ).rows[0]!;
  for (const [rule, row] of POSITION_CASES) {
    if (rule === null) await t.resolves(rewrite(db, id, row), `stored: ${JSON.stringify(row)}`);
    else await t.rejects(rewrite(db, id, row), { code: '23514' }, `${rule} refused: ${JSON.stringify(row)}`);
  }
});

// Random rows near the rules' edges (nulls, zero, negatives, NaN, infinities, other words),
// valid ones often enough that both answers are common. The schema's constraints, whatever
// their number and names, must refuse exactly the rows that break a written-out rule.
const rand = rng(23_013);
const pick = <T>(...xs: T[]): T => xs[Math.floor(rand() * xs.length)]!;
const odd = (p: number) => rand() < p;
const num = (x: number) => String(x);
const edge = () => pick<string | null>(null, '-1', '0', '1', '2', 'NaN', 'Infinity', '-Infinity');

function randomPosition(): Row {
  const mode = pick('one-way', 'one-way', 'hedge', 'hedge', 'hedge', 'cross');
  const hedge = mode === 'hedge';
  const long = odd(0.08) ? edge() : hedge ? pick('0', '1', '2') : null;
  const short = odd(0.08) ? edge() : hedge ? pick('0', '2') : null;
  const legs = long !== null && short !== null && !/n/i.test(long + short);
  const size = odd(0.08) ? (edge() ?? '0') : hedge && legs ? num(+long - +short) : pick('0', '1', '-1');
  const flat = hedge ? +(long ?? 0) + +(short ?? 0) === 0 : Number(size) === 0;
  const closed = odd(0.08) ? pick(null, AT) : flat ? AT : null;
  const legPnl = () => (odd(0.05) ? edge() : hedge ? (closed ? pick(null, '0') : pick(null, '0', '1')) : null);
  const [lu, su, lr, sr] = [legPnl(), legPnl(), legPnl(), legPnl()];
  const sum = (a: string | null, b: string | null) => (/n/i.test(`${a}${b}`) ? '0' : num(+(a ?? 0) + +(b ?? 0)));
  const price = () => (odd(0.04) ? edge() : pick(null, '100', '0.5'));
  return {
    asset: odd(0.04) ? pick('btcusdt', 'B', 'BTC-USDT', 'BTCUSDT ') : 'BTCUSDT',
    mode,
    size,
    long_size: long,
    short_size: short,
    long_avg_price: hedge || odd(0.04) ? price() : null,
    short_avg_price: hedge || odd(0.04) ? price() : null,
    long_unrealized_pnl: lu,
    short_unrealized_pnl: su,
    long_realized_pnl: lr,
    short_realized_pnl: sr,
    unrealized_pnl: odd(0.06) ? (edge() ?? '0') : hedge ? sum(lu, su) : closed ? '0' : pick('0', '3'),
    realized_pnl: odd(0.06) ? (edge() ?? '0') : hedge ? sum(lr, sr) : pick('0', '-4'),
    average_entry_price: price(),
    current_price: price(),
    total_fees: odd(0.05) ? (edge() ?? '0') : pick('0', '1'),
    version: odd(0.05) ? pick('0', '-1') : pick('1', '7'),
    average_entry_price_source: odd(0.04) ? pick('Fills', '') : pick(null, 'fills', 'exchange'),
    current_price_source: odd(0.04) ? pick('mark', '') : pick(null, 'report', 'ticker', 'fill'),
    closed_at: closed,
  };
}

function randomFill(): Row {
  const mode = pick('one-way', 'hedge', odd(0.1) ? 'other' : 'hedge');
  const kind = odd(0.06) ? pick('adjust', '') : pick('fill', 'reset');
  const leg = odd(0.1) ? pick('net', 'long', 'short', 'both') : mode === 'hedge' ? pick('long', 'short') : 'net';
  const fill = kind === 'fill';
  return {
    asset: 'BTCUSDT',
    mode,
    kind,
    leg,
    side: odd(0.08) ? pick(null, 'BUY', 'sell', '') : fill ? pick('Buy', 'Sell') : pick(null, null, 'Buy'),
    quantity: odd(0.1) ? edge() : fill ? pick('1', '0.5') : null,
    price: odd(0.1) ? edge() : fill ? '100' : null,
    fee: odd(0.06) ? pick('-1', '-0.01', 'NaN') : pick('0', '0.1'),
    reset_size: odd(0.1) ? edge() : fill ? null : leg === 'net' ? pick('-2', '0', '2') : pick('0', '2'),
    reset_avg_price: odd(0.1) ? edge() : fill ? null : pick(null, '100'),
  };
}

function randomEvent(): Row {
  const kind = odd(0.08) ? pick('bogus', 'Fill', '') : pick('fill', 'created', 'report', 'closed', 'foreign_write');
  return {
    asset: 'BTCUSDT',
    mode: 'one-way',
    source: odd(0.08) ? pick('robot', 'Manual', '') : pick('order_execution', 'websocket', 'manual', 'exchange_rest'),
    kind,
    position_id: odd(0.15) || kind === 'foreign_write' ? pick(null, positionId) : positionId,
  };
}

const randomInbox = (): Row => ({
  source: 'q',
  message_key: 'k',
  outcome: pick('applied', 'no_op', 'stale', 'other_shape', 'bogus', 'Applied', ''),
});

for (const [table, generate] of [
  ['positions', randomPosition],
  ['position_fills', randomFill],
  ['position_events', randomEvent],
  ['inbox', randomInbox],
] as const) {
  t.test(`${table}: the schema refuses exactly the random rows that break a rule`, async (t) => {
    const rows = Array.from({ length: 4000 }, generate);
    const schema = (
      await db.query<{ checks: string }>(
        `select string_agg(format('coalesce(%s, true)', regexp_replace(pg_get_constraintdef(oid), '^CHECK ', '')), ' and ') as checks
           from pg_constraint where conrelid = $1::regclass and contype = 'c'`,
        [table],
      )
    ).rows[0]!.checks;
    const rules = Object.values(RULES[table]!)
      .map((r) => `coalesce((${r}), true)`)
      .join(' and ');
    const r = await db.query<{ n: string; accepted: boolean; stored: boolean }>(
      `select ordinality as n, ${rules} as accepted, ${schema} as stored
         from jsonb_populate_recordset(null::${table}, $1) with ordinality x order by ordinality`,
      [JSON.stringify(rows)],
    );
    const differ = r.rows.filter((x) => x.accepted !== x.stored).map((x) => ({ ...x, row: rows[Number(x.n) - 1] }));
    t.same(differ.slice(0, 5), [], 'no row where the schema and the rules differ');
    const accepted = r.rows.filter((x) => x.accepted).length;
    t.ok(accepted > 400 && accepted < 3600, `both answers common: ${accepted} of 4000 rows pass the rules`);
  });
}
