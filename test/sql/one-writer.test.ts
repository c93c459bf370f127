// SPEC.md R-32, one writer of `positions`: the statements today's trading system runs against
// `positions` (quoted below from dobryakov/ytrader-bybit) succeed but change nothing, each leaves
// one `foreign_write` audit row naming the writer and a NOTIFY; the service's own functions still
// write and close their window behind them; the worker logs the writer once a minute and
// /metrics counts every ignored write.
import pino from 'pino';
import t, { type Test } from 'tap';
import { foreignWriteLog } from '../../src/jobs/foreign-writes.js';
import { freshDatabase, ownClient as connect, writePositionsDirectly, type TestDb } from '../helpers/db.js';
import { rolesStarted, startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

// ---------------------------------------------------------------------------------------------
// The trading system's statements, verbatim (asyncpg placeholders are PostgreSQL's own).

/**
 * Order Manager, order-manager/src/services/position_manager.py: PositionManager.update_position
 * (every order fill, event_subscriber.py) and _update_position_from_computed (its validation
 * task) both run this upsert. With no row returned, `dict(row)` raises; update_position turns it
 * into DatabaseError, which event_subscriber logs (`position_update_from_order_fill_failed`)
 * without failing the order.
 */
const OM_UPSERT = `
                INSERT INTO positions (asset, size, average_entry_price, mode, last_updated)
                VALUES ($1, $2, $3, $4, NOW())
                ON CONFLICT (asset, mode)
                DO UPDATE SET
                    size = EXCLUDED.size,
                    average_entry_price = EXCLUDED.average_entry_price,
                    last_updated = NOW()
                RETURNING id, asset, size, average_entry_price, unrealized_pnl, realized_pnl,
                          mode, long_size, short_size, long_avg_price, short_avg_price,
                          last_updated, last_snapshot_at
            `;
/** Order Manager, same file: PositionManager.create_position_snapshot (its periodic snapshot task, main.py). */
const OM_SNAPSHOT_MARK = `
                UPDATE positions
                SET last_snapshot_at = $1
                WHERE id = $2
            `;
/**
 * The optimistic lock, position-manager/src/services/position_manager.py:
 * PositionManager.update_position_from_order_fill (the Python position manager of the trading
 * repository). `closed_at = {closed_at_expr}` is an f-string: NULL while the size stays non-zero.
 * On no row it logs `position_order_fill_optimistic_lock_conflict`, sleeps with back-off, reads
 * the row again and retries, and raises DatabaseError after the last retry.
 */
const PM_OPTIMISTIC_UPDATE = `
                        UPDATE positions
                        SET size = $1,
                            average_entry_price = $2,
                            realized_pnl = realized_pnl + $3,
                            version = version + 1,
                            last_updated = NOW(),
                            closed_at = NULL
                        WHERE asset = $4
                          AND mode = $5
                          AND version = $6
                        RETURNING id, asset, mode, size, average_entry_price, current_price,
                                  unrealized_pnl, realized_pnl,
                                  long_size, short_size, version,
                                  last_updated, closed_at, created_at
                    `;
/**
 * Same file and method, the first fill of an (asset, mode): on no row it assumes a concurrent
 * creator won (`position_order_fill_insert_conflict_retry`) and retries.
 */
const PM_INSERT_DO_NOTHING = `
                        INSERT INTO positions (
                            asset, mode, size, average_entry_price,
                            unrealized_pnl, realized_pnl,
                            current_price, version, last_updated, created_at
                        )
                        VALUES ($1, $2, $3, $4, 0, 0, NULL, $5, NOW(), NOW())
                        ON CONFLICT (asset, mode) DO NOTHING
                        RETURNING id, asset, mode, size, average_entry_price, current_price,
                                  unrealized_pnl, realized_pnl,
                                  long_size, short_size, version,
                                  last_updated, closed_at, created_at
                    `;

// ---------------------------------------------------------------------------------------------

const CHANNEL = 'position_manager_foreign_write';
let seq = 0;
const fill = (db: TestDb, f: Record<string, unknown>) =>
  db.query('select apply_order_fill($1::jsonb)', [JSON.stringify({ execution_id: `ow-${++seq}`, ...f })]);
const report = (db: TestDb, r: Record<string, unknown>) =>
  db.query('select apply_position_report($1::jsonb)', [
    JSON.stringify({ event_id: `owr-${++seq}`, event_type: 'position', ...r }),
  ]);
const all = async (db: TestDb) => (await db.query('select * from positions order by asset, mode')).rows;
const foreignCount = async (db: TestDb) =>
  Number((await db.query("select count(*) as n from position_events where kind = 'foreign_write'")).rows[0].n);
/** Everything the service writes besides the audit rows of foreign writes. */
const ownState = async (db: TestDb) =>
  (
    await db.query(`select (select count(*) from position_fills) as fills, (select count(*) from outbox) as outbox,
                          (select count(*) from inbox) as inbox, (select count(*) from position_snapshots) as snapshots,
                          (select count(*) from position_events where kind <> 'foreign_write') as events`)
  ).rows[0];

/** A second connection, as another service opens it. */

/** The notifications on the foreign-write channel, as a LISTEN connection receives them. */
async function notifications(t: Test, db: TestDb): Promise<any[]> {
  const seen: any[] = [];
  const c = await connect(t, db, 'one-writer-test-listener');
  c.on('notification', (n) => n.channel === CHANNEL && seen.push(JSON.parse(n.payload!)));
  await c.query(`listen ${CHANNEL}`);
  return seen;
}

t.test("Order Manager's writes succeed, change nothing, and are audited and announced", async (t) => {
  const db = await freshDatabase(t);
  await fill(db, { asset: 'BTCUSDT', side: 'Buy', execution_quantity: '1.0', execution_price: '50000' });
  await fill(db, {
    asset: 'BTCUSDT',
    side: 'Buy',
    execution_quantity: '0.5',
    execution_price: '51000',
    execution_fees: '1.5',
  });
  await report(db, { data: { symbol: 'BTCUSDT', side: 'Buy', size: '1.5', markPrice: '52000' } });
  await fill(db, { asset: 'ETHUSDT', side: 'Sell', execution_quantity: '2', execution_price: '3000' });
  await db.query("select create_position_snapshot('ETHUSDT')");
  const before = await all(db);
  const own = await ownState(db);
  const btc = before.find((p) => p.asset === 'BTCUSDT');
  const eth = before.find((p) => p.asset === 'ETHUSDT');
  t.equal(await foreignCount(db), 0, 'the service wrote all of this itself: no foreign write so far');

  const seen = await notifications(t, db);
  const om = await connect(t, db, 'order-manager');
  const who = (await om.query('select current_user::text as user, inet_client_addr()::text as addr')).rows[0];
  t.ok(who.addr, `a TCP client address (${who.addr})`);

  const attempts: {
    name: string;
    sql: string;
    params: unknown[];
    operation: string;
    asset: string;
    held?: { id: string; size: string; mode: string };
    attempted: Record<string, string | null> | null;
    /** Among changed_fields (an INSERT also differs in id, created_at, ...). */
    changed?: string[];
  }[] = [
    {
      name: "Order Manager's fill upsert of a held position (INSERT ... ON CONFLICT DO UPDATE)",
      sql: OM_UPSERT,
      params: ['BTCUSDT', '2.5', '50500', 'one-way'],
      operation: 'INSERT',
      asset: 'BTCUSDT',
      held: btc,
      attempted: { size: '2.5', average_entry_price: '50500', mode: 'one-way' },
      changed: ['size', 'average_entry_price'],
    },
    {
      name: "Order Manager's snapshot mark (UPDATE ... SET last_snapshot_at)",
      sql: OM_SNAPSHOT_MARK,
      params: ['2030-01-01T00:00:00Z', btc.id],
      operation: 'UPDATE',
      asset: 'BTCUSDT',
      held: btc,
      attempted: { size: btc.size, version: btc.version },
      changed: ['last_snapshot_at'],
    },
    {
      name: 'the optimistic-lock UPDATE at the current version',
      sql: PM_OPTIMISTIC_UPDATE,
      params: ['-3', '3100', '0', 'ETHUSDT', 'one-way', eth.version],
      operation: 'UPDATE',
      asset: 'ETHUSDT',
      held: eth,
      attempted: { size: '-3', average_entry_price: '3100', version: String(Number(eth.version) + 1) },
      changed: ['size', 'average_entry_price', 'version', 'last_updated'],
    },
    {
      name: 'INSERT ... ON CONFLICT DO NOTHING of a held position',
      sql: PM_INSERT_DO_NOTHING,
      params: ['ETHUSDT', 'one-way', '-1', '2900', 1],
      operation: 'INSERT',
      asset: 'ETHUSDT',
      held: eth,
      attempted: { size: '-1', average_entry_price: '2900', version: '1' },
      changed: ['size', 'average_entry_price', 'id'],
    },
    {
      name: "Order Manager's fill upsert of a new asset (a plain INSERT: no conflict)",
      sql: OM_UPSERT,
      params: ['NEWUSDT', '0.1', '10', 'one-way'],
      operation: 'INSERT',
      asset: 'NEWUSDT',
      attempted: { size: '0.1', average_entry_price: '10', mode: 'one-way' },
    },
    {
      name: 'INSERT ... ON CONFLICT DO NOTHING of a new asset',
      sql: PM_INSERT_DO_NOTHING,
      params: ['NEW2USDT', 'one-way', '4', '20', 1],
      operation: 'INSERT',
      asset: 'NEW2USDT',
      attempted: { size: '4', average_entry_price: '20' },
    },
    {
      name: 'a plain INSERT of a new asset',
      sql: "insert into positions (asset, mode, size, average_entry_price) values ('NEW3USDT', 'hedge', 0, null)",
      params: [],
      operation: 'INSERT',
      asset: 'NEW3USDT',
      attempted: { size: '0', mode: 'hedge' },
    },
    {
      name: 'a DELETE',
      sql: "delete from positions where asset = 'ETHUSDT'",
      params: [],
      operation: 'DELETE',
      asset: 'ETHUSDT',
      held: eth,
      attempted: null,
    },
  ];

  for (const a of attempts) {
    await t.test(a.name, async (t) => {
      const n0 = await foreignCount(db);
      const seen0 = seen.length;
      const r = await om.query(a.sql, a.params);
      t.equal(r.rowCount, 0, 'the statement succeeds and affects no row');
      t.same(r.rows, [], 'RETURNING gives nothing');
      t.equal(await foreignCount(db), n0 + 1, 'exactly one foreign_write audit row');
      const e = (await db.query("select * from position_events where kind = 'foreign_write' order by id desc limit 1"))
        .rows[0];
      t.match(e, {
        kind: 'foreign_write',
        source: 'manual',
        asset: a.asset,
        position_id: a.held ? a.held.id : null,
        after: null,
      });
      t.match(
        e.details,
        { operation: a.operation, user: who.user, application_name: 'order-manager', client_addr: who.addr },
        'the writer: current_user, application_name and client address',
      );
      if (a.held) t.equal(e.before.size, Number(a.held.size), '`before` is the row as it stays');
      else t.equal(e.before, null, 'no row held');
      if (a.attempted === null) t.equal(e.details.attempted, null, 'a DELETE attempts no values');
      else {
        const attempted = (
          await db.query('select key, value from jsonb_each_text($1::jsonb) where key = any($2)', [
            e.details.attempted,
            Object.keys(a.attempted),
          ])
        ).rows;
        t.same(Object.fromEntries(attempted.map((x) => [x.key, x.value])), a.attempted, 'the attempted values');
        for (const f of a.changed ?? [])
          t.ok(e.changed_fields.includes(f), `changed_fields has ${f} (${e.changed_fields.join(', ')})`);
        if (!a.held) t.ok(e.changed_fields.includes('size'), 'a new row: its fields are the changes');
      }
      if (a.sql === OM_SNAPSHOT_MARK)
        t.equal(
          (
            await db.query("select ($1::jsonb ->> 'last_snapshot_at')::timestamptz = '2030-01-01Z' as ok", [
              e.details.attempted,
            ])
          ).rows[0].ok,
          true,
          'the attempted last_snapshot_at',
        );
      await waitFor(() => seen.length > seen0, { what: 'the NOTIFY' });
      t.same(
        seen.at(-1),
        {
          user: who.user,
          application_name: 'order-manager',
          client_addr: who.addr,
          operation: a.operation,
          asset: a.asset,
          mode: a.held?.mode ?? (a.asset === 'NEW3USDT' ? 'hedge' : 'one-way'),
        },
        'the notification',
      );
    });
  }

  t.same(await all(db), before, 'every row unchanged: size, version, last_updated, last_snapshot_at, everything');
  t.same(await ownState(db), own, 'no fill, event, inbox, snapshot or outbox row either');
  t.equal(
    (await db.query("select count(*)::int as n from positions where asset like 'NEW%'")).rows[0].n,
    0,
    'no row appears',
  );
  t.equal(seen.length, attempts.length, 'one notification per attempt');

  await t.test(
    'the optimistic lock retrying as its code does: every try ignored and audited, the row never changes',
    async (t) => {
      const n0 = await foreignCount(db);
      for (let attempt = 0; attempt < 3; attempt++) {
        const current = (await om.query("select version from positions where asset = 'BTCUSDT' and mode = 'one-way'"))
          .rows[0];
        const r = await om.query(PM_OPTIMISTIC_UPDATE, ['9', '1', '0', 'BTCUSDT', 'one-way', current.version]);
        t.equal(r.rowCount, 0, `try ${attempt + 1}: no row (the caller sees an optimistic-lock conflict)`);
      }
      t.equal(await foreignCount(db), n0 + 3);
      t.same(await all(db), before);
    },
  );
});

t.test("the service's own paths still write, and each closes the window behind it", async (t) => {
  const db = await freshDatabase(t);
  const size = async (asset: string) =>
    (await db.query('select size, version from positions where asset = $1', [asset])).rows[0];

  await t.test('a fill, a report, a validation fix and a snapshot write positions', async (t) => {
    const p = (await fill(db, { asset: 'OWNUSDT', side: 'Buy', execution_quantity: '2', execution_price: '100' }))
      .rows[0].apply_order_fill;
    t.match(await size('OWNUSDT'), { size: '2', version: '1' }, 'a fill creates the row');
    await fill(db, { asset: 'OWNUSDT', side: 'Buy', execution_quantity: '1', execution_price: '100' });
    t.match(await size('OWNUSDT'), { size: '3', version: '2' }, 'a fill updates it');
    await report(db, { data: { symbol: 'OWNUSDT', side: 'Buy', size: '3', markPrice: '105' } });
    t.equal(
      (await db.query("select current_price from positions where asset = 'OWNUSDT'")).rows[0].current_price,
      '105',
      'a report marks it',
    );
    await report(db, { data: { symbol: 'OWNUSDT', side: 'Buy', size: '3', markPrice: '105' } });
    t.not(
      (await db.query("select exchange_state from positions where asset = 'OWNUSDT'")).rows[0].exchange_state,
      null,
      'an unchanged report keeps the exchange state (its own small UPDATE)',
    );
    const r = await writePositionsDirectly(db, "update positions set size = 7 where asset = 'OWNUSDT'");
    t.equal(r.rowCount, 1, 'writePositionsDirectly opens the window (tests that simulate corruption)');
    t.equal((await size('OWNUSDT')).size, '7');
    const v = (await db.query("select validate_position('OWNUSDT') as v")).rows[0].v;
    t.match(v, { is_valid: false, updated_position: { size: '3' } });
    t.equal((await size('OWNUSDT')).size, '3', 'validation fixes it from the ledger');
    t.equal(
      (await db.query("select last_snapshot_at from positions where asset = 'OWNUSDT'")).rows[0].last_snapshot_at,
      null,
    );
    await db.query("select create_position_snapshot('OWNUSDT')");
    t.not(
      (await db.query("select last_snapshot_at from positions where asset = 'OWNUSDT'")).rows[0].last_snapshot_at,
      null,
      'a snapshot sets last_snapshot_at',
    );
    await fill(db, { asset: 'OWNUSDT', side: 'Sell', execution_quantity: '1', execution_price: '110' });
    t.equal(await db.query('select snapshot_all_positions() as n').then((x) => x.rows[0].n), 1);
    const marked = (
      await db.query("select last_snapshot_at >= last_updated as ok from positions where asset = 'OWNUSDT'")
    ).rows[0];
    t.equal(marked.ok, true, 'snapshot_all_positions sets it too');
    t.equal(await foreignCount(db), 0, 'none of this is a foreign write');
    t.ok(p, 'apply_order_fill returns the row');
  });

  // In one transaction: the function, then a plain UPDATE of the same connection, which must be
  // ignored like any other foreign write (and the setting must not be 'on' any more).
  const fillSql = (execution_id: string, asset: string, execution_price: string) =>
    `select apply_order_fill('${JSON.stringify({ execution_id, asset, side: 'Buy', execution_quantity: '1', execution_price })}'::jsonb)`;
  const reportSql = (event_id: string, data: Record<string, string>) =>
    `select apply_position_report('${JSON.stringify({ event_id, event_type: 'position', data })}'::jsonb)`;
  const functions: [string, string][] = [
    ['apply_order_fill', fillSql('win-1', 'WINUSDT', '10')],
    ['apply_order_fill (an existing row)', fillSql('win-1b', 'WINUSDT', '12')],
    ['apply_order_fill (new row)', fillSql('win-2', 'WIN2USDT', '10')],
    [
      'apply_position_report (changed)',
      reportSql('win-r1', { symbol: 'WINUSDT', side: 'Buy', size: '2', markPrice: '11' }),
    ],
    [
      'apply_position_report (unchanged)',
      reportSql('win-r2', { symbol: 'WINUSDT', side: 'Buy', size: '2', markPrice: '11' }),
    ],
    [
      'apply_position_report (new row)',
      reportSql('win-r3', { symbol: 'WIN3USDT', side: 'Sell', size: '1', markPrice: '5', avgPrice: '5' }),
    ],
    ['validate_position', "select validate_position('WINUSDT')"],
    ['create_position_snapshot', "select create_position_snapshot('WINUSDT')"],
    ['snapshot_all_positions', 'select snapshot_all_positions()'],
    // R-31's mark prices (a Bybit tickers answer), a writer of positions too
    [
      'apply_mark_prices',
      `select apply_mark_prices(jsonb_build_object('retCode', 0, 'time', (extract(epoch from now()) * 1000)::bigint,
                             'result', jsonb_build_object('list', jsonb_build_array(jsonb_build_object('symbol', 'WINUSDT', 'markPrice', '13')))))`,
    ],
  ];
  await t.test('the window closes when the function returns', async (t) => {
    const c = await connect(t, db, 'same-transaction');
    for (const [name, sql] of functions) {
      const n0 = await foreignCount(db);
      await c.query('begin');
      try {
        await c.query(sql);
        const setting = (await c.query("select current_setting('position_manager.writer', true) as s")).rows[0].s;
        t.not(setting, 'on', `${name}: the window is closed when it returns`);
        const r = await c.query("update positions set size = 99 where asset = 'WINUSDT'");
        t.equal(r.rowCount, 0, `${name}: a plain UPDATE after it in the same transaction is ignored`);
        await c.query('commit');
      } catch (err) {
        await c.query('rollback');
        t.fail(`${name}: ${(err as Error).message}`);
      }
      t.not((await size('WINUSDT'))?.size, '99', `${name}: the size stays`);
      t.equal(await foreignCount(db), n0 + 1, `${name}: and is audited`);
    }
  });
});

t.test('the worker logs the writer once a minute, /metrics counts every foreign write', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, { asset: 'BTCUSDT', side: 'Buy', execution_quantity: '1', execution_price: '50000' });
  const svc = await startService(t, { databaseUrl: db.url, env: { POSITION_MANAGER_ROLES: 'api,worker' } });
  await rolesStarted(svc, ['worker']);
  await waitFor(
    () => svc.logs.some((l) => l.msg === 'listening for notifications' && l.channels?.includes(CHANNEL) && l.connected),
    { what: 'the worker listening on the foreign-write channel', timeoutMs: 20_000 },
  );
  const counter = async () => {
    const text = (await svc.request('GET', '/metrics', { key: null })).body as string;
    t.match(text, /^# TYPE position_manager_foreign_writes_total counter$/m, 'a counter');
    const m = /^position_manager_foreign_writes_total(?:\{[^}]*\})? (\d+)$/m.exec(text);
    return m ? Number(m[1]) : undefined;
  };
  t.equal(await counter(), 0, 'no foreign write yet');
  const lines = (app: string) =>
    svc.logs.filter(
      (l) => l.msg === 'another service wrote to positions; the write was not applied' && l.application_name === app,
    );

  const om = await connect(t, db, 'order-manager');
  const addr = (await om.query('select inet_client_addr()::text as a')).rows[0].a;
  await om.query(OM_UPSERT, ['BTCUSDT', '5', '1', 'one-way']);
  await waitFor(() => lines('order-manager').length === 1, { what: 'the warn line' });
  t.match(lines('order-manager')[0], {
    level: 'warn',
    user: 'postgres',
    application_name: 'order-manager',
    client_addr: addr,
    operation: 'INSERT',
    asset: 'BTCUSDT',
    mode: 'one-way',
    suppressed: 0,
  });
  t.equal(await counter(), 1, 'position_manager_foreign_writes_total 1');

  const btcId = (await db.query("select id from positions where asset = 'BTCUSDT'")).rows[0].id;
  await om.query(OM_SNAPSHOT_MARK, [new Date(), btcId]);
  await om.query("delete from positions where asset = 'BTCUSDT'");
  // Another writer; its line comes after the notifications above reached the worker (one connection, in order).
  const other = await connect(t, db, 'other-writer');
  await other.query("update positions set size = 0 where asset = 'BTCUSDT'");
  await waitFor(() => lines('other-writer').length === 1, { what: "the other writer's line" });
  t.equal(lines('order-manager').length, 1, 'the same writer within the minute: no second line');
  t.equal(await counter(), 4, 'but every write counts');
  t.equal(
    (await db.query("select size from positions where asset = 'BTCUSDT'")).rows[0].size,
    '1',
    'and none was applied',
  );
});

t.test('the log: once per writer per interval, the suppressed ones counted in the next line', async (t) => {
  const out: any[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void out.push(JSON.parse(s)) });
  const writes = foreignWriteLog(log, 300);
  t.teardown(() => writes.close());
  const w = (app: string, asset: string) => ({
    user: 'ytrader',
    application_name: app,
    client_addr: '10.0.0.7',
    operation: 'UPDATE',
    asset,
    mode: 'one-way',
  });
  writes.record(w('order-manager', 'A1USDT'));
  writes.record(w('order-manager', 'A2USDT'));
  writes.record(w('order-manager', 'A3USDT'));
  writes.record(w('model-service', 'B1USDT'));
  t.same(
    out.map((l) => [l.level, l.application_name, l.asset, l.suppressed]),
    [
      [40, 'order-manager', 'A1USDT', 0],
      [40, 'model-service', 'B1USDT', 0],
    ],
    'the first write of each writer is logged at once, at warn',
  );
  await waitFor(() => out.length === 3, { what: 'the line at the end of the interval' });
  t.match(
    out[2],
    {
      application_name: 'order-manager',
      asset: 'A3USDT',
      suppressed: 2,
      msg: 'another service wrote to positions; the write was not applied',
    },
    'the two not logged, with the latest of them',
  );
  writes.record(w('order-manager', 'A4USDT'));
  t.equal(out.length, 3, 'a write in the interval that began with that line: not logged yet');
  await waitFor(() => out.length === 4, { what: 'the next line' });
  t.match(out[3], { asset: 'A4USDT', suppressed: 1 }, 'reported at the end of that interval');
  await new Promise((r) => setTimeout(r, 400));
  t.equal(out.length, 4, 'nothing more to report: no line');
  writes.record(w('order-manager', 'A5USDT'));
  t.equal(out.length, 5);
  t.match(out[4], { asset: 'A5USDT', suppressed: 0 }, 'after a quiet interval the next write is logged at once');
});
