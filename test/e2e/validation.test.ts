// TC-025 and TC-026: periodic validation and validation through the API, black-box.
import t, { type Test } from 'tap';
import { writePositionsDirectly } from '../helpers/db.js';
import { startStack, acceptanceSummary, givenBuy } from '../helpers/stack.js';
import { waitFor } from '../helpers/wait.js';

const record = acceptanceSummary(t);
const acceptance = async (title: string, fn: (t: Test) => Promise<void>) => record(title, await t.test(title, fn));

await acceptance(
  'TC-025 periodic validation: every open position validated, the disagreeing one fixed from the ledger',
  async (t) => {
    const s = await startStack(t, { POSITION_MANAGER_VALIDATION_INTERVAL: '2' });
    for (const [asset, qty] of [
      ['VA1USDT', '1'],
      ['VA2USDT', '2'],
      ['VA3USDT', '3'],
    ] as const) {
      await givenBuy(s, asset, `tc25-${asset}`, qty, '100', `given ${asset}`);
    }
    // The precondition an operator can only create by hand: a stored size the ledger disagrees with.
    await writePositionsDirectly(s.db, "update positions set size = 5 where asset = 'VA2USDT'");
    await s.until('VA2USDT', (p) => p.size === '2', 'fixed from the ledger');
    const warn = await s.log(
      (l) => l.msg === 'periodic validation fixed a discrepancy' && l.asset === 'VA2USDT',
      'discrepancy logged',
    );
    t.match(warn, {
      level: 'warn',
      discrepancies: [{ field: 'size', stored: '5', expected: '2', authority: 'ledger' }],
    });
    const run = await waitFor(
      async () =>
        (
          await s.db.query(
            "select result from job_history_view where task = 'validate_all_positions' and (result->>'fixed')::int = 1",
          )
        ).rows[0],
      { what: 'job_history_view records the counts' },
    );
    t.match(run.result, { validated: 3, invalid: 1, fixed: 1 });
    const ev = await waitFor(
      () => s.events.updated.bodies().find((b) => b.asset === 'VA2USDT' && b.update_source === 'validation'),
      { what: 'event' },
    );
    t.equal(ev.size, '2');
  },
);

await acceptance(
  'TC-026 validation finds a discrepancy: the newer exchange report wins; an older one does not',
  async (t) => {
    const s = await startStack(t, { POSITION_MANAGER_ROLES: 'api,consumer,relay' });
    const past = (ms: number) => new Date(Date.now() - ms).toISOString();
    /** The exchange reports 1.2 @ 51000 as of 30 s ago; the average is replaced at once. */
    const reportOlder = async (symbol: string, what: string) => {
      await s.report({
        event_type: 'position',
        data: { symbol, side: 'Buy', size: '1.2', avgPrice: '51000', updatedTime: String(Date.now() - 30_000) },
      });
      await s.until(symbol, (p) => p.average_entry_price === '51000', what);
    };
    await givenBuy(s, 'BTCUSDT', 'tc26-0', '1.0', '50000', 'given 1.0 @ 50000', { executed_at: past(60_000) });
    await reportOlder('BTCUSDT', 'the average replaced at once');
    const r = await s.post('/api/v1/positions/BTCUSDT/validate');
    t.equal(r.status, 200);
    t.match(r.body, {
      is_valid: false,
      error_message: 'size 1 differs from exchange size 1.2',
      discrepancies: [{ field: 'size', stored: '1', expected: '1.2', authority: 'exchange' }],
      updated_position: { size: '1.2', average_entry_price: '51000' },
      checked_at: String,
    });
    await s.log(
      (l) => l.level === 'warn' && /^validation: size/.test(l.msg) && l.asset === 'BTCUSDT',
      'logs show the details',
    );

    await givenBuy(s, 'ETHUSDT', 'tc26-e0', '1.0', '50000', 'given 1.0 @ 50000, filled after the report below', {
      executed_at: past(1_000),
    });
    await reportOlder('ETHUSDT', 'average replaced');
    const older = await s.post('/api/v1/positions/ETHUSDT/validate');
    t.match(
      older.body,
      { is_valid: true, discrepancies: [] },
      'the report is older than the latest fill: the ledger size stands',
    );
    t.equal((await s.get('/api/v1/positions/ETHUSDT')).body.size, '1');
  },
);
