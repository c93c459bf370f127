// Snapshot runs in chunks (SPEC.md R-26, §6.2): each chunk its own transaction, all of one run
// sharing one snapshot_timestamp and one total exposure; two sessions sharing a run snapshot
// every due position exactly once; a position changed while the run waits for it is snapshotted
// at the version it then holds; the events carry the fields of §6.2.
import t from 'tap';
import { Decimal } from 'decimal.js';
import { migrate } from '../../src/db/migrate.js';
import { snapshotAllPositions } from '../../src/db/positions.js';
import {
  firstRow as one,
  freshDatabase,
  ownClient as connect,
  type Queryable as Db,
  type TestDb,
  writePositionsDirectly,
} from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';

let seq = 0;
const fillJson = (asset: string, side: string, qty: string, price: string) =>
  JSON.stringify({ execution_id: `sc-${++seq}`, asset, side, execution_quantity: qty, execution_price: price });
const fill = (db: Db, asset: string, side: string, qty: string, price: string) =>
  db.query('select apply_order_fill($1::jsonb)', [fillJson(asset, side, qty, price)]);

const run = (c: Db, args: string, params: unknown[] = []) =>
  one(c, `call snapshot_all_positions_chunked(${args}, result => null)`, params).then((r) => r.result);

// n one-way positions 'S<i>USDT' written directly (as bench/scale.ts does): every tenth closed
async function positions(db: TestDb, n: number): Promise<void> {
  await writePositionsDirectly(
    db,
    `insert into positions (asset, mode, size, average_entry_price, average_entry_price_source, current_price,
                            current_price_at, unrealized_pnl, realized_pnl, total_fees, opened_at, closed_at,
                            created_at, last_updated, version)
     select 'S' || i || 'USDT', 'one-way', s.size, 100 + i, 'fills', 101 + i, now(),
            s.size * 1, 0, 0, case when s.size <> 0 then now() - interval '1 hour' end,
            case when s.size = 0 then now() - interval '1 hour' end, now() - interval '1 day', now() - interval '1 hour', 1
       from generate_series(1, $1::int) i
      cross join lateral (select case when i % 10 = 0 then 0 else (i % 7 + 1) * 0.5 end as size) s`,
    [n],
  );
}

t.test('chunks: one snapshot_timestamp and one total exposure, each chunk committed on its own', async (t) => {
  const db = await freshDatabase(t);
  for (const [i, a] of ['AAAUSDT', 'BBBUSDT', 'CCCUSDT', 'DDDUSDT', 'EEEUSDT', 'ZZZUSDT'].entries())
    await fill(db, a, 'Buy', String(i + 1), '100');
  const before = await one(db, 'select _portfolio_total_exposure()::text as total');

  // a fill of the last position in key order, uncommitted while the run starts: the run goes past
  // it (its first pass skips locked rows), commits its chunks, then waits for it
  const writer = await connect(t, db);
  const runner = await connect(t, db);
  await writer.query('begin');
  await fill(writer, 'ZZZUSDT', 'Buy', '4', '100');
  const pid = (await one(runner, 'select pg_backend_pid() as pid')).pid;
  const writerPid = (await one(writer, 'select pg_backend_pid() as pid')).pid;
  const running = run(runner, "trace_id => 'run-chunks', chunk_size => 2");
  await waitFor(async () => (await one(db, 'select pg_blocking_pids($1) as b', [pid])).b.includes(writerPid), {
    what: 'the run waiting for the uncommitted fill',
    timeoutMs: 30_000,
  });
  t.equal(
    Number((await one(db, "select count(*) as n from position_snapshots where trace_id = 'run-chunks'")).n),
    5,
    'the chunks before the wait are committed',
  );
  await fill(db, 'AAAUSDT', 'Buy', '1', '100'); // would block if the run still held the first chunk's lock
  await writer.query('commit');
  const result = await running;
  t.match(result, { snapshots: 6, chunks: 4, total_exposure: before.total });

  const shots = (
    await db.query(
      `select asset, snapshot_timestamp::text as at, created_at::text as created, position_size_norm, snapshot_data, size
         from position_snapshots where trace_id = 'run-chunks' order by asset`,
    )
  ).rows;
  t.equal(new Set(shots.map((s) => s.at)).size, 1, 'one snapshot_timestamp');
  t.equal(
    (await one(db, 'select $1::timestamptz = $2::timestamptz as same', [shots[0].at, result.snapshot_timestamp])).same,
    true,
    'the one the run reports, exactly',
  );
  t.ok(new Set(shots.map((s) => s.created)).size >= 3, 'written by several transactions');
  // every position_size_norm is its exposure over the total taken at the start, the changed
  // ZZZUSDT's too (so the norms no longer add up to 1)
  const total = new Decimal(before.total);
  for (const s of shots) {
    const expected = new Decimal(s.snapshot_data.exposure_usdt).div(total).toDecimalPlaces(10, Decimal.ROUND_HALF_UP);
    t.equal(s.position_size_norm, expected.toFixed(10), `${s.asset}: exposure / the run's total`);
    t.equal(
      s.snapshot_data.position_size_norm,
      expected.toFixed(8).replace(/\.?0+$/, ''),
      `${s.asset}: in its JSON too`,
    );
  }
  const zzz = shots.find((s) => s.asset === 'ZZZUSDT');
  const row = await one(
    db,
    "select size::text, version, last_snapshot_at::text from positions where asset = 'ZZZUSDT'",
  );
  t.equal(zzz.size, '10', 'the position changed during the run is snapshotted at the version the run locked');
  t.equal(zzz.snapshot_data.version, Number(row.version), 'its JSON is of that same version');
  t.equal(row.last_snapshot_at, zzz.at, 'and last_snapshot_at is the run’s snapshot_timestamp');
  t.equal(
    (await one(db, 'select snapshot_all_positions() as n')).n,
    6,
    'a later run snapshots the open positions again',
  );
});

t.test('two sessions sharing a run snapshot every due position exactly once', async (t) => {
  const db = await freshDatabase(t);
  await positions(db, 400);
  const due = Number(
    (await one(db, 'select count(*) as n from positions where gross_size > 0 or last_snapshot_at is null')).n,
  );
  t.equal(due, 400, 'open ones and closed ones never snapshotted');
  const start = await one(db, 'select now()::text as at, _portfolio_total_exposure()::text as total');
  const [a, b, w] = [await connect(t, db), await connect(t, db), await connect(t, db)];
  // a writer changing positions meanwhile, one transaction per fill
  let writing = true;
  const writes = (async () => {
    let n = 0;
    while (writing) await fill(w, `S${1 + ((n++ * 37) % 400)}USDT`, 'Buy', '0.5', '100');
    return n;
  })();
  const args = "trace_id => 'shared', chunk_size => 7, snapshot_at => $1, total_exposure => $2";
  const results = await Promise.all([run(a, args, [start.at, start.total]), run(b, args, [start.at, start.total])]);
  writing = false;
  t.ok((await writes) > 0, 'the writer wrote during the run');
  t.equal(results[0].snapshots + results[1].snapshots, due, 'between them, every due position');
  t.comment(`shares: ${results[0].snapshots} and ${results[1].snapshots}`);
  const counts = await one(
    db,
    `select count(*)::int as shots, count(distinct position_id)::int as positions, count(distinct snapshot_timestamp)::int as ts
       from position_snapshots where trace_id = 'shared'`,
  );
  t.same(counts, { shots: due, positions: due, ts: 1 }, 'each once, all with one snapshot_timestamp');
  const events = await one(
    db,
    `select count(*)::int as n, count(distinct payload ->> 'snapshot_id')::int as ids from outbox
      where event_type = 'position_snapshot_created' and trace_id = 'shared'`,
  );
  t.same(events, { n: due, ids: due }, 'one event per snapshot');
  t.equal(
    Number(
      (
        await one(
          db,
          `select count(*) as n from position_snapshots s join positions p on p.id = s.position_id
            where s.trace_id = 'shared' and (s.snapshot_data ->> 'version')::bigint = p.version
              and p.last_snapshot_at is distinct from s.snapshot_timestamp`,
        )
      ).n,
    ),
    0,
    'every position still at its snapshotted version is marked with the run',
  );
  t.equal(
    (
      await one(
        db,
        "select count(*)::int as n from position_snapshots where trace_id = 'shared' and trigger <> 'scheduled'",
      )
    ).n,
    0,
  );
  t.match(await run(a, args, [start.at, start.total]), { snapshots: 0 }, 'the run, called again, finds it all done');
});

t.test('psql: snapshot_all_positions() is one call in the caller’s transaction', async (t) => {
  const db = await freshDatabase(t);
  await positions(db, 30);
  const c = await connect(t, db);
  await c.query('begin');
  t.equal((await one(c, 'select snapshot_all_positions() as n')).n, 30);
  const r = await one(
    c,
    'select count(distinct snapshot_timestamp)::int as ts, bool_and(snapshot_timestamp = now()) as now from position_snapshots',
  );
  t.same(r, { ts: 1, now: true }, 'stamped with the transaction time');
  await c.query('rollback');
  t.equal((await one(db, 'select count(*)::int as n from position_snapshots')).n, 0, 'nothing committed of its own');
  await t.rejects(db.query('call snapshot_all_positions_chunked(chunk_size => 0, result => null)'), { code: '22023' });
});

t.test('position_snapshot_created carries what SPEC §6.2 says', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'BTCUSDT', 'Buy', '0.5', '50000');
  await db.query(`select apply_position_report($1::jsonb)`, [
    JSON.stringify({
      event_type: 'position',
      event_id: 'ev-1',
      payload: { symbol: 'BTCUSDT', side: 'Buy', size: '0.5', markPrice: '51000' },
    }),
  ]);
  await db.query(`select apply_order_fill($1::jsonb)`, [
    JSON.stringify({
      execution_id: 'sc-h1',
      asset: 'ETHUSDT',
      side: 'Buy',
      execution_quantity: '2',
      execution_price: '3000',
      mode: 'hedge',
    }),
  ]);
  await db.query(`select apply_order_fill($1::jsonb)`, [
    JSON.stringify({
      execution_id: 'sc-h2',
      asset: 'ETHUSDT',
      side: 'Sell',
      execution_quantity: '1',
      execution_price: '3100',
      mode: 'hedge',
    }),
  ]);
  t.equal((await one(db, "select mode from positions where asset = 'ETHUSDT'")).mode, 'hedge', 'a hedge position too');
  const result = await run(db, "trace_id => 'tr-62', chunk_size => 1");
  t.match(result, { snapshots: 2, chunks: 2 });
  const events = (
    await db.query(
      `select o.event_id, o.routing_key, o.event_type, o.trace_id, o.payload, snapshot_json(s) as snapshot
         from outbox o join position_snapshots s on s.id = (o.payload ->> 'snapshot_id')::uuid
        where o.event_type = 'position_snapshot_created' order by o.id`,
    )
  ).rows;
  t.same(
    events.map((e) => e.payload.asset),
    ['BTCUSDT', 'ETHUSDT'],
    'one per snapshot, in (asset, mode) order',
  );
  for (const e of events) {
    const s = e.snapshot;
    t.equal(e.routing_key, 'position-manager.position_snapshot_created');
    t.match(e.payload, {
      event_id: e.event_id,
      event_type: 'position_snapshot_created',
      trace_id: 'tr-62',
      timestamp: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
    });
    const flat = [
      'position_id',
      'asset',
      'size',
      'average_entry_price',
      'unrealized_pnl',
      'realized_pnl',
      'mode',
      'long_size',
      'short_size',
      'unrealized_pnl_pct',
      'time_held_minutes',
      'position_size_norm',
      'snapshot_timestamp',
    ];
    for (const f of flat) t.same(e.payload[f], s[f], `${s.asset}: ${f} is the snapshot's`);
    t.equal(e.payload.snapshot_id, s.id);
    t.same(e.payload.snapshot, s, `${s.asset}: snapshot is the full Snapshot object`);
    t.equal(s.snapshot_timestamp, events[0].snapshot.snapshot_timestamp, 'one snapshot_timestamp for the run');
    t.equal(typeof s.size, 'string', 'decimals as strings');
    t.same(
      Object.keys(s.snapshot_data).sort(),
      Object.keys(await one(db, 'select position_json(p) as j from positions p limit 1').then((r) => r.j)).sort(),
      'snapshot_data is the Position object',
    );
  }
  const eth = events[1].payload;
  t.match(eth, { mode: 'hedge', long_size: '2', short_size: '1', size: '1' });
  t.match(eth.snapshot.snapshot_data, { legs: { long: { size: '2' }, short: { size: '1' } } });
  const btc = events[0].payload;
  t.match(btc, {
    mode: 'one-way',
    size: '0.5',
    long_size: null,
    short_size: null,
    snapshot: { snapshot_data: { current_price: '51000' } },
  });
  t.ok(
    new Decimal(btc.position_size_norm).plus(eth.position_size_norm).minus(1).abs().lte('0.00000001'),
    'position_size_norm over the one total exposure (1 to the last place emitted)',
  );
});

t.test('closed positions already snapshotted are not due again; a closed one that changed is', async (t) => {
  const db = await freshDatabase(t);
  await positions(db, 200);
  // the runs a day apart, so that their snapshots lie in day partitions of their own; ahead of
  // now, so that only the version tells the change below (its last_updated precedes them all)
  const runAt = (days: number) =>
    run(db, `trace_id => 'closed-${days}', snapshot_at => now() + make_interval(days => ${days})`);
  t.match(await runAt(1), { snapshots: 200 }, 'the first run: every position, the 20 closed ones too');
  t.match(await runAt(2), { snapshots: 180 }, 'the second: the open ones only');
  t.match(await runAt(3), { snapshots: 180 }, 'the third: the open ones only');
  t.equal(
    (await one(db, "select count(*)::int as n from position_snapshots where asset = 'S10USDT'")).n,
    1,
    'a closed position: its one snapshot',
  );
  t.equal(
    (
      await one(
        db,
        `select count(*)::int as n from positions
          where gross_size = 0 and last_snapshot_version is distinct from version`,
      )
    ).n,
    0,
    'each closed row keeps the version it was snapshotted at',
  );

  // reopened and closed again: a change since its last snapshot, though closed at both
  await fill(db, 'S10USDT', 'Buy', '1', '100');
  await fill(db, 'S10USDT', 'Sell', '1', '101');
  const c = await connect(t, db);
  await c.query('begin');
  t.equal((await one(c, 'select snapshot_all_positions() as n')).n, 181, 'the open ones and the changed closed one');
  // the decision is the row's: the run reads no snapshot (every day partition it probed per
  // closed row cost seconds at 10,000 of them)
  t.equal(
    (
      await one(
        c,
        `select coalesce(sum(pg_stat_get_xact_numscans(i.inhrelid)), 0)::int as n
           from pg_inherits i where i.inhparent = 'position_snapshots'::regclass`,
      )
    ).n,
    0,
    'no scan of position_snapshots',
  );
  await c.query('commit');
  const last = await one(
    db,
    `select s.size::text, (s.snapshot_data ->> 'version')::bigint as version, p.version as row_version
       from position_snapshots s join positions p on p.id = s.position_id
      where s.asset = 'S10USDT' order by s.created_at desc limit 1`,
  );
  t.same(last, { size: '0', version: '3', row_version: '3' }, 'snapshotted at the version of its second close');
  t.equal((await one(db, 'select snapshot_all_positions() as n')).n, 180, 'and then not again');
});

t.test('migration 20 takes each row’s last snapshotted version from its snapshots, and runs again', async (t) => {
  const db = await freshDatabase(t);
  await positions(db, 30);
  await run(db, "trace_id => 'before', snapshot_at => now() + interval '1 day'");
  // closed at both ends, changed in between: due by its version alone
  await fill(db, 'S10USDT', 'Buy', '1', '100');
  await fill(db, 'S10USDT', 'Sell', '1', '101');
  // as a database before migration 20 holds them
  await writePositionsDirectly(db, 'update positions set last_snapshot_version = null');
  await db.query("delete from pgmigrations where name >= '1000000000020'");
  t.same((await migrate(db.url)).migrationsApplied.slice(0, 1), ['1000000000020_last-snapshot-version']);
  const rows = await one(
    db,
    `select count(*) filter (where last_snapshot_version = 1)::int as at_1,
            count(*) filter (where last_snapshot_version is null)::int as none,
            (select version from positions where asset = 'S10USDT') as s10
       from positions`,
  );
  t.same(rows, { at_1: 30, none: 0, s10: '3' }, 'the version of each row’s latest snapshot');
  t.equal(
    (await one(db, 'select snapshot_all_positions() as n')).n,
    28,
    'the 27 open ones and the closed one changed since; the other closed ones not again',
  );
});

t.test('a retry of the failed snapshot job resumes its run: each position once, one event each', async (t) => {
  const db = await freshDatabase(t);
  await positions(db, 1200);
  // the scheduled job's attempts, as the worker records them (graphile-worker retries under the job's id)
  const attempt = (n: number) =>
    db.query("select job_run_start('snapshot_all_positions', 4242, 'snapshot_all_positions', '{}', $1, $2)", [
      n,
      `attempt-${n}`,
    ]);
  // the first attempt fails in its second chunk of 500, after the first was committed
  const doomed = (await one(db, 'select asset from positions order by asset, mode offset 700 limit 1')).asset;
  await db.query(`create function snapshot_test_boom() returns trigger language plpgsql as $$
    begin raise exception 'boom'; end $$`);
  await db.query(`create trigger boom before update of last_snapshot_at on positions for each row
    when (new.asset = '${doomed}') execute function snapshot_test_boom()`);
  await attempt(1);
  await t.rejects(snapshotAllPositions(db, 'attempt-1', '4242'), /boom/);
  await db.query("select job_run_finish(id, 'failure', 'boom') from job_runs where trace_id = 'attempt-1'");
  t.equal(
    (await one(db, 'select count(*)::int as n from position_snapshots')).n,
    500,
    'the failed attempt committed its first chunk',
  );
  await db.query('drop trigger boom on positions');

  await attempt(2);
  const first = (await one(db, "select result from job_runs where trace_id = 'attempt-1'")).result;
  const retry = await snapshotAllPositions(db, 'attempt-2', '4242');
  t.match(
    retry,
    { snapshots: 700, snapshot_timestamp: first.snapshot_timestamp, total_exposure: first.total_exposure },
    'the retry: the run of the failed attempt, the positions it did not reach',
  );
  const counts = await one(
    db,
    `select count(*)::int as shots, count(distinct position_id)::int as positions,
            count(distinct snapshot_timestamp)::int as ts from position_snapshots`,
  );
  t.same(counts, { shots: 1200, positions: 1200, ts: 1 }, 'each position once, with one snapshot_timestamp');
  t.same(
    await one(
      db,
      `select count(*)::int as n, count(distinct payload ->> 'position_id')::int as positions from outbox
        where event_type = 'position_snapshot_created'`,
    ),
    { n: 1200, positions: 1200 },
    'one event per position',
  );

  // the next job of the chain is a run of its own
  await db.query("select job_run_start('snapshot_all_positions', 4243, 'snapshot_all_positions', '{}', 1, 'next')");
  const next = await snapshotAllPositions(db, 'next', '4243');
  t.equal(next.snapshots, 1080, 'the open positions again');
  t.not(next.snapshot_timestamp, first.snapshot_timestamp, 'at a timestamp of its own');
});
