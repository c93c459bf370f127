// An independent reference model of position accounting, written from ACCOUNTING.md §2 (fills) and
// §3 (reports) only — never from the SQL in sql/. The property test (test/sql/property.test.ts)
// applies the same random operations to this model and to the SQL functions and compares the rows.
//
// Arithmetic: decimal.js with 100 significant digits, so additions, subtractions and
// multiplications of the values used here are exact; every division is rounded to 10 decimal
// places, half away from zero (PostgreSQL `round(x, 10)`).
import { Decimal as DecimalJs } from 'decimal.js';

export const Decimal = DecimalJs.clone({
  precision: 100,
  rounding: DecimalJs.ROUND_HALF_UP,
  toExpNeg: -100,
  toExpPos: 100,
});
export type Decimal = InstanceType<typeof Decimal>;
export type DecimalValue = Decimal | string | number;

export type Side = 'Buy' | 'Sell';
export type Mode = 'one-way' | 'hedge';

/** Threshold of ACCOUNTING.md §3 (AVG_PRICE_DIFF_THRESHOLD) and USE_WS_AVG_PRICE, with their defaults. */
const AVG_PRICE_DIFF_THRESHOLD = new Decimal('0.001');
const USE_WS_AVG_PRICE = true;

const ZERO = new Decimal(0);
const d = (v: DecimalValue): Decimal => new Decimal(v);

/** a / b rounded to 10 decimal places, half away from zero — the only rounding the rules allow. */
export function div(a: DecimalValue, b: DecimalValue): Decimal {
  return d(a).div(d(b)).toDecimalPlaces(10, Decimal.ROUND_HALF_UP);
}

export interface FillInput {
  side: Side;
  qty: DecimalValue;
  price: DecimalValue;
  fee?: DecimalValue;
  mode: Mode;
  /** hedge only: 1 → long leg, 2 → short leg */
  position_idx?: 1 | 2;
  /** hedge only */
  reduce_only?: boolean;
}

export interface ReportInput {
  /** magnitude */
  size: DecimalValue;
  side: Side | '';
  avgPrice?: DecimalValue;
  markPrice?: DecimalValue;
  unrealisedPnl?: DecimalValue;
  realisedPnl?: DecimalValue;
}

/** The compared columns of a `positions` row, as decimal strings (plain notation) or null. */
export interface PositionState {
  size: string;
  long_size: string | null;
  short_size: string | null;
  long_avg_price: string | null;
  short_avg_price: string | null;
  long_realized_pnl: string | null;
  short_realized_pnl: string | null;
  average_entry_price: string | null;
  current_price: string | null;
  unrealized_pnl: string;
  realized_pnl: string;
  total_fees: string;
}

export const STATE_FIELDS: (keyof PositionState)[] = [
  'size',
  'long_size',
  'short_size',
  'long_avg_price',
  'short_avg_price',
  'long_realized_pnl',
  'short_realized_pnl',
  'average_entry_price',
  'current_price',
  'unrealized_pnl',
  'realized_pnl',
  'total_fees',
];

/** What a fill did, for diagnostics (and for tests of the model itself). */
export interface FillOutcome {
  kind: 'open' | 'increase' | 'reduce' | 'close' | 'flip' | 'capped';
  leg: 'net' | 'long' | 'short';
  /** realized PnL added by this fill (fees deducted) */
  realizedDelta: Decimal;
  /** hedge: the quantity that exceeded the leg and was not applied */
  excess?: Decimal;
  /** one-way flip: the closing share of the fee */
  feeClose?: Decimal;
}

interface Leg {
  /** absolute size, ≥ 0 */
  size: Decimal;
  avg: Decimal | null;
  realized: Decimal;
}

const str = (v: Decimal | null): string | null => (v === null ? null : v.toFixed());

/** One `positions` row, keyed by (asset, mode). */
export class PositionModel {
  readonly mode: Mode;
  // one-way: signed size and the leg's average
  size: Decimal = ZERO;
  avg: Decimal | null = null;
  // hedge legs
  long: Leg = { size: ZERO, avg: null, realized: ZERO };
  short: Leg = { size: ZERO, avg: null, realized: ZERO };
  currentPrice: Decimal | null = null;
  unrealized: Decimal = ZERO;
  realized: Decimal = ZERO;
  totalFees: Decimal = ZERO;

  constructor(mode: Mode) {
    this.mode = mode;
  }

  /** Gross quantity (> 0 while the row is open). */
  get gross(): Decimal {
    return this.mode === 'hedge' ? this.long.size.plus(this.short.size) : this.size.abs();
  }

  get isOpen(): boolean {
    return !this.gross.isZero();
  }

  /** The average the row shows: one-way the leg's (kept after a close); hedge the leg in the direction of size. */
  get averageEntryPrice(): Decimal | null {
    if (this.mode === 'one-way') return this.avg;
    const s = this.netSize;
    if (s.isZero()) return null;
    return s.isPositive() ? this.long.avg : this.short.avg;
  }

  get netSize(): Decimal {
    return this.mode === 'hedge' ? this.long.size.minus(this.short.size) : this.size;
  }

  /** ACCOUNTING.md §2. */
  fill(f: FillInput): FillOutcome {
    if (f.mode !== this.mode) throw new Error(`fill for mode ${f.mode} applied to a ${this.mode} position`);
    const q = d(f.qty);
    const p = d(f.price);
    const fee = d(f.fee ?? 0);
    if (!q.isPositive() || q.isZero()) throw new Error('qty must be > 0');
    if (!p.isPositive() || p.isZero()) throw new Error('price must be > 0');
    if (fee.isNegative()) throw new Error('fee must be ≥ 0');

    if (this.currentPrice === null) this.currentPrice = p;
    const outcome = this.mode === 'one-way' ? this.fillOneWay(f.side, q, p, fee) : this.fillHedge(f, q, p, fee);
    this.totalFees = this.totalFees.plus(fee);
    this.recomputeUnrealized();
    return outcome;
  }

  private fillOneWay(side: Side, q: Decimal, p: Decimal, fee: Decimal): FillOutcome {
    const dir = side === 'Buy' ? 1 : -1;
    const s = this.size;
    const q0 = s.abs();
    if (s.isZero()) {
      this.size = q.times(dir);
      this.avg = p;
      return { kind: 'open', leg: 'net', realizedDelta: ZERO };
    }
    const legDir = s.isPositive() ? 1 : -1;
    if (legDir === dir) {
      this.avg = div(q0.times(this.avg!).plus(q.times(p)), q0.plus(q));
      this.size = s.plus(q.times(dir));
      return { kind: 'increase', leg: 'net', realizedDelta: ZERO };
    }
    if (q.lte(q0)) {
      const delta = p.minus(this.avg!).times(q).times(legDir).minus(fee);
      this.realized = this.realized.plus(delta);
      this.size = s.plus(q.times(dir));
      return { kind: q.eq(q0) ? 'close' : 'reduce', leg: 'net', realizedDelta: delta };
    }
    // flip: close q0 with its share of the fee, open the rest at p
    const feeClose = div(fee.times(q0), q);
    const delta = p.minus(this.avg!).times(q0).times(legDir).minus(feeClose);
    this.realized = this.realized.plus(delta);
    this.size = q.minus(q0).times(dir);
    this.avg = p;
    return { kind: 'flip', leg: 'net', realizedDelta: delta, feeClose };
  }

  private fillHedge(f: FillInput, q: Decimal, p: Decimal, fee: Decimal): FillOutcome {
    let legName: 'long' | 'short';
    if (f.position_idx === 1) legName = 'long';
    else if (f.position_idx === 2) legName = 'short';
    else if (f.reduce_only) legName = f.side === 'Buy' ? 'short' : 'long';
    else legName = f.side === 'Buy' ? 'long' : 'short';
    const leg = legName === 'long' ? this.long : this.short;
    const legDir = legName === 'long' ? 1 : -1;
    const dir = f.side === 'Buy' ? 1 : -1;
    let outcome: FillOutcome;
    if (dir === legDir) {
      if (leg.size.isZero()) {
        leg.size = q;
        leg.avg = p;
        outcome = { kind: 'open', leg: legName, realizedDelta: ZERO };
      } else {
        leg.avg = div(leg.size.times(leg.avg!).plus(q.times(p)), leg.size.plus(q));
        leg.size = leg.size.plus(q);
        outcome = { kind: 'increase', leg: legName, realizedDelta: ZERO };
      }
    } else {
      const applied = Decimal.min(q, leg.size);
      const excess = q.minus(applied);
      // a leg that has never been open has no average; nothing of the fill applies to it then
      const pnl = applied.isZero() ? ZERO : p.minus(leg.avg!).times(applied).times(legDir);
      const delta = pnl.minus(fee); // the whole fee is charged: it was paid
      leg.realized = leg.realized.plus(delta);
      leg.size = leg.size.minus(applied);
      const kind = !excess.isZero() ? 'capped' : leg.size.isZero() ? 'close' : 'reduce';
      outcome = { kind, leg: legName, realizedDelta: delta, excess };
    }
    this.realized = this.long.realized.plus(this.short.realized);
    return outcome;
  }

  /** unrealized PnL from current_price and the averages (what every fill ends with). */
  recomputeUnrealized(): void {
    const cp = this.currentPrice;
    if (this.mode === 'one-way') {
      this.unrealized = this.size.isZero() || cp === null ? ZERO : cp.minus(this.avg!).times(this.size);
      return;
    }
    let u = ZERO;
    if (!this.long.size.isZero() && cp !== null) u = u.plus(cp.minus(this.long.avg!).times(this.long.size));
    if (!this.short.size.isZero() && cp !== null) u = u.plus(this.short.avg!.minus(cp).times(this.short.size));
    this.unrealized = u;
  }

  /**
   * ACCOUNTING.md §3 for an existing one-way position (creation from a report is
   * `PositionModel.fromReport`). Returns whether the average was replaced.
   */
  report(r: ReportInput): { avgReplaced: boolean } {
    if (this.mode !== 'one-way') throw new Error('the model applies reports to one-way positions only');
    if (r.markPrice !== undefined) this.currentPrice = d(r.markPrice);
    // SPEC.md §3.1: a closed row has unrealized 0 whatever a report says.
    if (r.unrealisedPnl !== undefined && this.isOpen) this.unrealized = d(r.unrealisedPnl);
    if (r.realisedPnl !== undefined) this.realized = d(r.realisedPnl);
    let avgReplaced = false;
    // A flat position's average is kept for the record (§2 close); reports replace it only while open.
    if (r.avgPrice !== undefined && USE_WS_AVG_PRICE && this.isOpen) {
      const next = d(r.avgPrice);
      if (this.avg !== null) {
        if (div(next.minus(this.avg).abs(), this.avg).gt(AVG_PRICE_DIFF_THRESHOLD)) avgReplaced = true;
      } else if (this.isOpen) avgReplaced = true;
      if (avgReplaced) this.avg = next;
    }
    // size is never applied (a discrepancy only schedules a validation)
    return { avgReplaced };
  }

  /** Creation of an unknown one-way position from a report (TC-001); null when the report is flat. */
  static fromReport(r: ReportInput): PositionModel | null {
    const size = d(r.size);
    if (size.isZero() || r.side === '') return null;
    const m = new PositionModel('one-way');
    m.size = r.side === 'Sell' ? size.negated() : size;
    m.avg = r.avgPrice !== undefined ? d(r.avgPrice) : null;
    m.unrealized = r.unrealisedPnl !== undefined ? d(r.unrealisedPnl) : ZERO;
    m.realized = r.realisedPnl !== undefined ? d(r.realisedPnl) : ZERO;
    m.currentPrice = r.markPrice !== undefined ? d(r.markPrice) : null;
    return m;
  }

  state(): PositionState {
    const hedge = this.mode === 'hedge';
    return {
      size: this.netSize.toFixed(),
      long_size: hedge ? this.long.size.toFixed() : null,
      short_size: hedge ? this.short.size.toFixed() : null,
      long_avg_price: hedge ? str(this.long.avg) : null,
      short_avg_price: hedge ? str(this.short.avg) : null,
      long_realized_pnl: hedge ? this.long.realized.toFixed() : null,
      short_realized_pnl: hedge ? this.short.realized.toFixed() : null,
      average_entry_price: str(this.averageEntryPrice),
      current_price: str(this.currentPrice),
      unrealized_pnl: this.unrealized.toFixed(),
      realized_pnl: this.realized.toFixed(),
      total_fees: this.totalFees.toFixed(),
    };
  }

  clone(): PositionModel {
    const m = new PositionModel(this.mode);
    m.size = this.size;
    m.avg = this.avg;
    m.long = { ...this.long };
    m.short = { ...this.short };
    m.currentPrice = this.currentPrice;
    m.unrealized = this.unrealized;
    m.realized = this.realized;
    m.totalFees = this.totalFees;
    return m;
  }
}

/** All positions, keyed by (asset, mode), as the `positions` table holds them. */
export class ModelBook {
  readonly positions = new Map<string, PositionModel>();

  static key(asset: string, mode: Mode): string {
    return `${asset}|${mode}`;
  }

  get(asset: string, mode: Mode): PositionModel | undefined {
    return this.positions.get(ModelBook.key(asset, mode));
  }

  /**
   * A fill creates the row when it does not exist, also a hedge reduction with no leg to reduce
   * (SPEC.md R-8): the row is then created flat, its fee charged, and validation settles the size.
   */
  fill(asset: string, f: FillInput): FillOutcome {
    const existing = this.get(asset, f.mode);
    if (existing) return existing.fill(f);
    const p = new PositionModel(f.mode);
    const outcome = p.fill(f);
    this.positions.set(ModelBook.key(asset, f.mode), p);
    return outcome;
  }

  /** A one-way report: creates an unknown position (when not flat) or updates the existing one. */
  report(asset: string, r: ReportInput): { created: boolean; avgReplaced: boolean } {
    const p = this.get(asset, 'one-way');
    if (!p) {
      const created = PositionModel.fromReport(r);
      if (created) this.positions.set(ModelBook.key(asset, 'one-way'), created);
      return { created: created !== null, avgReplaced: false };
    }
    return { created: false, ...p.report(r) };
  }
}

/** Decimal equality where null equals only null. */
export function decimalEq(a: DecimalValue | null | undefined, b: DecimalValue | null | undefined): boolean {
  if (a === null || a === undefined || b === null || b === undefined) return (a ?? null) === (b ?? null);
  return d(a).eq(d(b));
}

/** The fields where a `positions` row differs from the model's state (empty when equal). */
export function diffState(row: Record<string, unknown> | undefined, model: PositionState | undefined): string[] {
  if (!row || !model) return row || model ? ['<row existence>'] : [];
  const out: string[] = [];
  for (const k of STATE_FIELDS) {
    const a = row[k] as string | null | undefined;
    if (!decimalEq(a ?? null, model[k])) out.push(k);
  }
  return out;
}
