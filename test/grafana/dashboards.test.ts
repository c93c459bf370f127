// Every Grafana panel query runs as grafana_reader against a populated database and returns the
// columns its panel uses; dashboards read only the views of SPEC.md §9 (never base tables).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { GRAFANA_VIEWS } from '../helpers/ledger-names.js';

const DASHBOARDS_DIR = join(import.meta.dirname, '..', '..', 'grafana', 'dashboards');
const EXPECTED_FILES = [
  'portfolio-management.json',
  'position-manager-jobs.json',
  'positions.json',
  'validation-audit.json',
];
const DATASOURCE_UID = 'position-manager';

// The relations grafana_reader may select (sql/900_grafana_grants.sql).
const VIEWS = new Set<string>([...GRAFANA_VIEWS, 'portfolio_asset_totals_view']);
const BASE_TABLE =
  /\b(from|join)\s+(positions|position_fills|position_events|position_snapshots|inbox|outbox|job_runs|portfolio_metrics_history|graphile_worker\.)\b/i;

interface Target {
  refId: string;
  rawSql?: string;
  format?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id?: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
  options?: Record<string, any>;
  fieldConfig?: { overrides?: { matcher: { id: string; options: string } }[] };
  transformations?: { id: string; options: Record<string, any> }[];
}
interface Variable {
  name: string;
  type: string;
  query?: string | { rawSql?: string };
  definition?: string;
  current?: { value?: string | string[] };
  includeAll?: boolean;
  multi?: boolean;
  allValue?: string;
}
interface Dashboard {
  uid: string;
  title: string;
  tags: string[];
  time: { from: string; to: string };
  refresh: string;
  panels: Panel[];
  templating: { list: Variable[] };
}

const files = readdirSync(DASHBOARDS_DIR)
  .filter((f) => f.endsWith('.json'))
  .sort();
const dashboards = files.map((file) => ({
  file,
  d: JSON.parse(readFileSync(join(DASHBOARDS_DIR, file), 'utf8')) as Dashboard,
}));

/** Every panel, including the panels of collapsed rows. */
function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

const sqlVariables = (d: Dashboard) =>
  d.templating.list.filter((v) => v.type === 'query' && (typeof v.query === 'string' ? v.query : v.query?.rawSql));
const variableSql = (v: Variable) => (typeof v.query === 'string' ? v.query : v.query!.rawSql!);

// The dashboard time range as the test sees it: generous on both sides of the seed.
const FROM = new Date(Date.now() - 24 * 3600_000).toISOString();
const TO = new Date(Date.now() + 3600_000).toISOString();

/**
 * Grafana's macros and template variables replaced the way Grafana's PostgreSQL datasource does
 * it. Values: name -> value; a variable with includeAll or multi is quoted unless formatted :raw,
 * and the All value is the variable's allValue, inserted as it is.
 */
function interpolate(sql: string, d: Dashboard, values: Record<string, string>): string {
  const timeRange = `between now() - interval '24 hours' and now() + interval '1 hour'`;
  let s = sql
    .replace(/\$__timeFilter\(\s*([^)]+?)\s*\)/g, (_, col) => `${col} ${timeRange}`)
    .replace(/\$__timeGroupAlias\(\s*([^,)]+?)\s*,[^)]*\)/g, (_, col) => `date_trunc('minute', ${col}) as time`)
    .replace(/\$__timeGroup\(\s*([^,)]+?)\s*,[^)]*\)/g, (_, col) => `date_trunc('minute', ${col})`)
    .replace(/\$__timeFrom\(\)/g, `'${FROM}'`)
    .replace(/\$__timeTo\(\)/g, `'${TO}'`)
    .replace(/\$__interval_ms\b/g, '60000')
    .replace(/\$__interval\b/g, "'1m'");
  const variable = (name: string) => d.templating.list.find((v) => v.name === name);
  const value = (name: string, format: string | undefined, whole: string) => {
    const v = variable(name);
    if (!v || !(name in values)) throw new Error(`no value for template variable ${whole}`);
    const val = values[name]!;
    if (v.includeAll && val === v.allValue) return val;
    if (format === 'raw' || !(v.includeAll || v.multi)) return val;
    return `'${val.replace(/'/g, "''")}'`;
  };
  s = s
    .replace(/\$\{(\w+)(?::(\w+))?\}/g, (whole, name, format) => value(name, format, whole))
    .replace(/\$(?!__)(\w+)/g, (whole, name) => value(name, undefined, whole));
  const left = s.match(/\$__\w+|\$\{?\w+/);
  if (left) throw new Error(`unreplaced macro or variable ${left[0]}`);
  return s;
}

/** The values of a dashboard's variables: their defaults, then the given ones. */
function variableValues(d: Dashboard, given: Record<string, string>): Record<string, string> {
  const values: Record<string, string> = {};
  for (const v of d.templating.list) {
    const cur = Array.isArray(v.current?.value) ? v.current.value[0] : v.current?.value;
    if (cur !== undefined) values[v.name] = cur === '$__all' && v.allValue !== undefined ? v.allValue : cur;
  }
  return { ...values, ...given };
}

/** The variable combinations every query of the dashboard runs with. */
function variableSets(d: Dashboard): Record<string, string>[] {
  if (d.templating.list.some((v) => v.name === 'asset'))
    return [variableValues(d, { asset: 'All' }), variableValues(d, { asset: 'BTCUSDT' })];
  return [variableValues(d, {})];
}

async function asReader(db: TestDb, sql: string) {
  const c = await db.pool.connect();
  try {
    await c.query('set role grafana_reader');
    try {
      return await c.query(sql);
    } finally {
      await c.query('reset role');
    }
  } finally {
    c.release();
  }
}

/** The columns a panel refers to by name (field overrides, x field, reduce fields, sorting, transforms). */
function referencedColumns(panel: Panel, target: Target): { names: string[]; patterns: RegExp[] } {
  const names: string[] = [];
  const patterns: RegExp[] = [];
  const frameFields = panel.targets!.length === 1 || target.refId === 'A';
  if (frameFields) {
    for (const o of panel.fieldConfig?.overrides ?? []) if (o.matcher.id === 'byName') names.push(o.matcher.options);
    if (panel.options?.xField) names.push(panel.options.xField);
    for (const s of panel.options?.sortBy ?? []) names.push(s.displayName);
    const fields = panel.options?.reduceOptions?.fields;
    if (fields) {
      const m = /^\/(.*)\/$/.exec(fields);
      if (m) patterns.push(new RegExp(m[1]!));
      else names.push(fields);
    }
    for (const tr of panel.transformations ?? []) {
      if (tr.id === 'organize')
        names.push(...Object.keys(tr.options.indexByName ?? {}), ...Object.keys(tr.options.renameByName ?? {}));
    }
  }
  for (const tr of panel.transformations ?? []) {
    if (tr.id === 'configFromData' && tr.options.configRefId === target.refId)
      names.push(...(tr.options.mappings ?? []).map((m: { fieldName: string }) => m.fieldName));
  }
  return { names, patterns };
}

// Queries that may legitimately return no rows with the seed below; everything else must.
// - With asset = BTCUSDT: "Closed Positions" (the seed's BTCUSDT position is open).
const MAY_BE_EMPTY = (dashboard: string, panel: string, values: Record<string, string>) =>
  dashboard === 'Positions' && panel === 'Closed Positions' && values.asset === 'BTCUSDT';

async function seed(db: TestDb) {
  const fill = (body: Record<string, unknown>) =>
    db.query('select apply_order_fill($1::jsonb)', [JSON.stringify(body)]);
  const report = (body: Record<string, unknown>) =>
    db.query('select apply_position_report($1::jsonb)', [JSON.stringify(body)]);
  // One-way BTCUSDT long, marked by a report.
  await fill({ execution_id: 'g1', asset: 'BTCUSDT', side: 'Buy', execution_quantity: '1', execution_price: '50000' });
  await report({
    event_type: 'position',
    event_id: 'r1',
    data: { symbol: 'BTCUSDT', side: 'Buy', size: '1', markPrice: '50100', unrealisedPnl: '100' },
  });
  // Hedge ETHUSDT: a long and a short leg.
  await fill({
    execution_id: 'g2',
    asset: 'ETHUSDT',
    mode: 'hedge',
    side: 'Buy',
    execution_quantity: '2',
    execution_price: '3000',
    position_idx: 1,
  });
  await fill({
    execution_id: 'g3',
    asset: 'ETHUSDT',
    mode: 'hedge',
    side: 'Sell',
    execution_quantity: '1',
    execution_price: '3010',
    position_idx: 2,
  });
  // SOLUSDT opened and closed: a closed position with realized PnL.
  await fill({ execution_id: 'g4', asset: 'SOLUSDT', side: 'Buy', execution_quantity: '10', execution_price: '100' });
  await fill({ execution_id: 'g5', asset: 'SOLUSDT', side: 'Sell', execution_quantity: '10', execution_price: '110' });
  // XRPUSDT short; the exchange reports another size (size_discrepancy), validation adopts it (validation_fix).
  await fill({ execution_id: 'g6', asset: 'XRPUSDT', side: 'Sell', execution_quantity: '100', execution_price: '0.5' });
  await report({
    event_type: 'position',
    event_id: 'r2',
    data: { symbol: 'XRPUSDT', side: 'Sell', size: '150', markPrice: '0.49' },
  });
  await db.query("select validate_position('XRPUSDT', 'one-way', true)");

  await db.query("select create_position_snapshot('BTCUSDT')");
  await db.query('select snapshot_all_positions()');
  await db.query('select sample_portfolio_metrics()');
  await db.query('select sample_portfolio_metrics()');
  await db.query('select refresh_materialized_views()');

  // Job history: successful validation runs and a failed snapshot run.
  await db.query(`select job_run_finish(job_run_start('validate_all_positions', null, null, '{}', 1, 't'), 'success', null,
                  '{"validated": 3, "invalid": 0, "fixed": 0}')`);
  await db.query(`select job_run_finish(job_run_start('validate_position', null, 'validate:XRPUSDT:one-way',
                  '{"asset":"XRPUSDT","mode":"one-way"}', 1, 't2'), 'success', null, '{"is_valid": false}')`);
  await db.query(`select job_run_finish(job_run_start('snapshot_all_positions', null, 'snapshot_all_positions', '{}', 1, 't3'),
                  'failure', 'connection reset', null)`);
  // The queue: a pending job in an hour.
  await db.query(`select graphile_worker.add_job('validate_position', '{"asset":"BTCUSDT","mode":"one-way"}'::json,
                  run_at => now() + interval '1 hour')`);
}

t.test('the four dashboards exist with unique uids and the common settings', async (t) => {
  t.same(
    EXPECTED_FILES.filter((f) => !files.includes(f)),
    [],
    'every expected dashboard file exists',
  );
  const uids = dashboards.map(({ d }) => d.uid);
  t.equal(new Set(uids).size, uids.length, `unique uids: ${uids.join(', ')}`);
  for (const { file, d } of dashboards) {
    t.ok(d.uid && d.title, `${file}: uid and title`);
    t.ok(d.tags.includes('position-manager'), `${d.title}: tag position-manager`);
    t.same(d.time, { from: 'now-24h', to: 'now' }, `${d.title}: last 24 hours`);
    t.equal(d.refresh, '30s', `${d.title}: refresh 30s`);
    const ids = allPanels(d.panels).map((p) => p.id);
    t.equal(new Set(ids).size, ids.length, `${d.title}: unique panel ids`);
  }
  t.same(
    dashboards.map(({ d }) => d.title).sort(),
    ['Portfolio Management', 'Position Manager Jobs', 'Positions', 'Validation & Audit'],
    'titles',
  );
  // The risk threshold lines (SPEC.md §9) are dashboard variables with these defaults.
  const portfolio = dashboards.find(({ d }) => d.title === 'Portfolio Management')!.d;
  t.match(
    variableValues(portfolio, {}),
    { max_position_size_ratio: '0.8', take_profit_pct: '3.0' },
    'threshold variables',
  );
  const positions = dashboards.find(({ d }) => d.title === 'Positions')!.d;
  t.match(
    positions.templating.list.find((v) => v.name === 'asset'),
    { type: 'query', includeAll: true, allValue: 'All' },
    'the asset variable offers All',
  );
});

t.test('panels read only the views, through the provisioned datasource', async (t) => {
  for (const { d } of dashboards) {
    const sources: [string, string][] = [];
    for (const p of allPanels(d.panels)) {
      if (p.type === 'row') continue;
      t.equal(p.datasource?.uid, DATASOURCE_UID, `${d.title} / ${p.title}: datasource`);
      t.ok(p.targets?.length, `${d.title} / ${p.title}: has queries`);
      for (const q of p.targets ?? []) {
        t.equal(q.datasource?.uid, DATASOURCE_UID, `${d.title} / ${p.title} / ${q.refId}: datasource`);
        t.ok(q.rawSql, `${d.title} / ${p.title} / ${q.refId}: raw SQL`);
        if (q.rawSql) sources.push([`${p.title} / ${q.refId}`, q.rawSql]);
      }
    }
    for (const v of sqlVariables(d)) sources.push([`variable ${v.name}`, variableSql(v)]);
    for (const [name, sql] of sources) {
      t.notMatch(sql, BASE_TABLE, `${d.title} / ${name}: no base table`);
      const relations = [...sql.matchAll(/\b(?:from|join)\s+([a-z_][\w.]*)\b(?!\s*\()/gi)].map((m) =>
        m[1]!.toLowerCase(),
      );
      t.ok(relations.length > 0, `${d.title} / ${name}: reads a view`);
      t.same(
        relations.filter((r) => !VIEWS.has(r)),
        [],
        `${d.title} / ${name}: only views (${relations.join(', ')})`,
      );
    }
  }
  t.notMatch(
    'select * from positions_view join position_events_view using (asset)',
    BASE_TABLE,
    'views do not look like tables',
  );
  t.match('select * from  graphile_worker.jobs', BASE_TABLE, 'the check sees graphile_worker tables');
});

t.test('every panel query runs as grafana_reader against a populated database', async (t) => {
  const db = await freshDatabase(t);
  await seed(db);
  const events = await db.query('select kind, count(*)::integer as n from position_events group by kind order by kind');
  t.comment(`seeded position events: ${events.rows.map((r) => `${r.kind}=${r.n}`).join(', ')}`);

  await t.rejects(asReader(db, 'select * from positions'), 'grafana_reader cannot read the base tables');

  for (const { d } of dashboards) {
    for (const v of sqlVariables(d)) {
      const res = await asReader(db, interpolate(variableSql(v), d, variableValues(d, {})));
      t.ok(res.rows.length > 0, `${d.title} / variable ${v.name}: has values`);
      if (v.name === 'asset')
        t.ok(
          res.rows.some((r) => Object.values(r)[0] === 'BTCUSDT'),
          `${d.title} / variable asset: BTCUSDT`,
        );
    }
    for (const values of variableSets(d)) {
      const vars = Object.keys(values).length
        ? ` [${Object.entries(values)
            .map(([k, v]) => `${k}=${v}`)
            .join(', ')}]`
        : '';
      for (const p of allPanels(d.panels)) {
        for (const q of p.targets ?? []) {
          if (!q.rawSql) continue;
          const name = `${d.title} / ${p.title} / ${q.refId}${vars}`;
          let res;
          try {
            res = await asReader(db, interpolate(q.rawSql, d, values));
          } catch (err) {
            t.fail(`${name}: ${(err as Error).message}`);
            continue;
          }
          t.pass(`${name}: runs as grafana_reader`);
          if (!MAY_BE_EMPTY(d.title, p.title, values)) t.ok(res.rowCount! > 0, `${name}: returns rows`);
          const fields = res.fields.map((f) => f.name);
          if (q.format === 'time_series') {
            t.ok(fields.includes('time'), `${name}: a time column (${fields.join(', ')})`);
            t.ok(fields.filter((f) => f !== 'time' && f !== 'metric').length > 0, `${name}: a value column`);
          }
          const { names, patterns } = referencedColumns(p, q);
          t.same(
            names.filter((n) => !fields.includes(n)),
            [],
            `${name}: the columns the panel refers to (${fields.join(', ')})`,
          );
          for (const re of patterns)
            t.ok(
              fields.some((f) => re.test(f)),
              `${name}: a column matches ${re}`,
            );
        }
      }
    }
  }
});

t.test("SPEC.md §9: the Order Execution panels' LATERAL query over positions_view (grafana/README.md)", async (t) => {
  const db = await freshDatabase(t);
  await seed(db);
  const readme = readFileSync(join(DASHBOARDS_DIR, '..', 'README.md'), 'utf8');
  const documented = /```sql\n([\s\S]*?)```/.exec(readme)?.[1];
  t.ok(documented, 'the README shows the query');
  // Order Manager's orders table is not in this database: a stand-in with the columns the query uses
  const sql = documented!
    .replace('from orders o', "from (values ('BTCUSDT', now()), ('NOPEUSDT', now())) o(asset, created_at)")
    .replace('$__timeFilter(o.created_at)', "o.created_at > now() - interval '1 hour'");
  const res = await asReader(db, sql);
  const btc = res.rows.find((r) => r.asset === 'BTCUSDT');
  t.match(
    btc,
    { size: String, average_entry_price: String, unrealized_pnl: String },
    'the position columns of the order',
  );
  t.match(
    res.rows.find((r) => r.asset === 'NOPEUSDT'),
    { size: null },
    'an order without a position keeps its row',
  );
});
