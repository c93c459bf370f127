// The relay's database cost per event (issue 23): what `pendingEvents` (read a window of pending
// events) and `markSent` (record the window sent) cost, without the broker.
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/relay.ts
//        [--n 20000] [--window 500] [--rounds 3] [--positions 200]
//
// Each round, on a scratch database: N position_updated events are enqueued (the payload of a
// real fill's event, ~1.5 KB, spread over --positions positions), VACUUM ANALYZE, then the relay's
// loop runs without publishing: read the oldest --window pending events, record them sent, until
// none is pending. Printed per round: µs per event of the enqueue (the writers' side, one
// _enqueue_events call), of the reads, of the marks, and reads + marks; the summary is the median
// round. The database is the shared test server: run it more than once
// and compare medians, the machine may be busy.
import { markSent, pendingEvents } from '../src/db/outbox.js';
import { args, benchDatabase, median, now, runBench, table } from './lib.js';

const opt = args({ n: 20_000, window: 500, rounds: 3, positions: 200 });
const N = Number(opt.n);
const WINDOW = Number(opt.window);

runBench(async (t) => {
  const db = await benchDatabase(t, 'pm_bench_relay', 2);
  await db.pool.query('select apply_order_fill($1::jsonb)', [
    JSON.stringify({
      execution_id: 'bench-1',
      order_id: 'bench-o-1',
      asset: 'BTCUSDT',
      side: 'Buy',
      execution_quantity: '0.125',
      execution_price: '64321.5',
    }),
  ]);
  const sample = (
    await db.pool.query<{ payload: string; bytes: number }>(
      `select payload::text as payload, octet_length(payload::text) as bytes
         from outbox where event_type = 'position_updated' order by id limit 1`,
    )
  ).rows[0]!;
  console.log(`payload: ${sample.bytes} bytes as text; ${N} events per round, windows of ${WINDOW}`);

  const rows: (string | number)[][] = [
    ['round', 'enqueue µs/event', 'read µs/event', 'mark µs/event', 'read + mark µs/event', 'windows'],
  ];
  const enqueues: number[] = [];
  const totals: number[] = [];
  const reads: number[] = [];
  const marks: number[] = [];
  for (let round = 1; round <= Number(opt.rounds); round++) {
    const t0 = now();
    await db.pool.query(
      `select _enqueue_events('position_updated', 'bench-trace', array(
         select $1::jsonb || jsonb_build_object('position_id', p.id)
           from generate_series(1, $2::int) i,
                lateral (select ('00000000-0000-4000-8000-' || lpad((i % $3::int)::text, 12, '0'))::uuid as id) p))`,
      [sample.payload, N, Number(opt.positions)],
    );
    const enqueue = now() - t0;
    await db.pool.query('vacuum analyze');
    let read = 0;
    let mark = 0;
    let windows = 0;
    for (;;) {
      const t0 = now();
      const events = await pendingEvents(db.pool, WINDOW);
      const t1 = now();
      read += t1 - t0;
      if (!events.length) break;
      await markSent(
        db.pool,
        events.map((e) => e.id),
      );
      mark += now() - t1;
      windows++;
    }
    const us = (x: number) => (x * 1000) / N;
    rows.push([
      round,
      us(enqueue).toFixed(1),
      us(read).toFixed(1),
      us(mark).toFixed(1),
      us(read + mark).toFixed(1),
      windows,
    ]);
    enqueues.push(us(enqueue));
    reads.push(us(read));
    marks.push(us(mark));
    totals.push(us(read + mark));
  }
  rows.push([
    'median',
    median(enqueues).toFixed(1),
    median(reads).toFixed(1),
    median(marks).toFixed(1),
    median(totals).toFixed(1),
    '',
  ]);
  table(rows);
});
