// CPU time of the processes serving a benchmark, from /proc (Linux): utime + stime of
// /proc/<pid>/stat, in clock ticks (`getconf CLK_TCK`), summed per group of processes.
//
// A group is the PostgreSQL backends of one database (found by their process title,
// "postgres: <cluster>: <user> <database> <client> <activity>", the same pids pg_stat_activity
// lists for that datname), the server's auxiliary processes (WAL writer, checkpointer,
// background writer: shared by every database), one process by pid, or the RabbitMQ server.
// The probe samples every `intervalMs` while it runs, so processes that start during the run
// are counted from zero and those that end keep their last sample (at most one interval of
// their CPU is lost); processes present at the start count from the start.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

let ticksPerSecond: number | undefined;

/** Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`; 100 on Linux if that fails). */
function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** utime + stime of a process in ticks, its name and its parent; undefined once it is gone. */
function procTicks(pid: number): { comm: string; ppid: number; ticks: number } | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses; fields 14, 15 are utime, stime
  const open = stat.indexOf('(');
  const close = stat.lastIndexOf(')');
  const rest = stat.slice(close + 2).split(' ');
  return { comm: stat.slice(open + 1, close), ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]) };
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
  } catch {
    return '';
  }
}

/** What a group sees of a process; `title()` reads its command line (the process title) lazily. */
interface Proc {
  pid: number;
  comm: string;
  ppid: number;
  title(): string;
}

export interface CpuGroup {
  label: string;
  match(p: Proc): boolean;
}

/** The backends of one database: their process title names it. */
export const postgresBackends = (database: string, label = `postgres backends of ${database}`): CpuGroup => ({
  label,
  match: (p) => p.comm === 'postgres' && p.title().split(/\s+/).includes(database),
});

/**
 * The WAL writer, checkpointer and background writer of the server whose postmaster is
 * `postmaster` (see postmasterOf; shared by every database on that server).
 */
export const postgresAuxiliary = (postmaster: number | undefined): CpuGroup => ({
  label: 'postgres WAL writer, checkpointer, bgwriter (whole server)',
  match: (p) =>
    p.ppid === postmaster && p.comm === 'postgres' && /: (walwriter|checkpointer|background writer)\b/.test(p.title()),
});

export const processById = (label: string, pid: number | undefined): CpuGroup => ({
  label,
  match: (p) => p.pid === pid,
});

/**
 * The RabbitMQ server: the Erlang VM started with `-s rabbit boot` (the whole broker, every
 * vhost). Not the short-lived VMs of rabbitmqctl, which are beam.smp too.
 */
export const rabbitmqServer = (): CpuGroup => ({
  label: 'broker (RabbitMQ server, all its vhosts)',
  match: (p) => p.comm === 'beam.smp' && p.title().includes(' -s rabbit boot'),
});

/** The postmaster of the server a backend (pg_backend_pid()) belongs to: its parent. */
export function postmasterOf(backendPid: number): number | undefined {
  return procTicks(backendPid)?.ppid;
}

export interface CpuUsage {
  label: string;
  /** CPU milliseconds over the probe's run. */
  ms: number;
  processes: number;
}

export interface CpuReport {
  seconds: number;
  groups: CpuUsage[];
  /** The whole machine's busy CPU time over the run (all processes, /proc/stat), in CPU seconds. */
  machineBusySeconds: number;
}

/** Busy and total jiffies of the whole machine (first line of /proc/stat). */
function machineTicks(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already in user)
  const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + (f[7] ?? 0);
  return { busy, total: busy + f[3]! + f[4]! };
}

/** Samples the groups until stop(); start() takes the baseline. */
export class CpuProbe {
  // per group: pid → [ticks at its first sample (0 when it started after the baseline), last ticks]
  private seen: Map<number, [number, number]>[];
  private timer: NodeJS.Timeout | undefined;
  private started = 0;
  private baseline = false;
  private machineStart = 0;

  constructor(
    private readonly groups: CpuGroup[],
    private readonly intervalMs = 250,
  ) {
    this.seen = groups.map(() => new Map<number, [number, number]>());
  }

  start(): this {
    this.started = performance.now();
    this.machineStart = machineTicks().busy;
    this.baseline = true;
    this.sample();
    this.baseline = false;
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    this.timer.unref();
    return this;
  }

  stop(): CpuReport {
    clearInterval(this.timer);
    this.sample();
    const hz = clockTicks();
    return {
      seconds: (performance.now() - this.started) / 1000,
      machineBusySeconds: (machineTicks().busy - this.machineStart) / hz,
      groups: this.groups.map((g, i) => {
        let ticks = 0;
        for (const [first, last] of this.seen[i]!.values()) ticks += last - first;
        return { label: g.label, ms: (ticks / hz) * 1000, processes: this.seen[i]!.size };
      }),
    };
  }

  private sample(): void {
    for (const name of readdirSync('/proc')) {
      const pid = Number(name);
      if (!Number.isInteger(pid)) continue;
      const p = procTicks(pid);
      if (!p) continue;
      let title: string | undefined;
      const proc: Proc = { pid, comm: p.comm, ppid: p.ppid, title: () => (title ??= cmdline(pid)) };
      this.groups.forEach((g, i) => {
        const seen = this.seen[i]!;
        const prior = seen.get(pid);
        if (prior)
          prior[1] = Math.max(prior[1], p.ticks); // (a reused pid never lowers it)
        else if (g.match(proc)) seen.set(pid, [this.baseline ? p.ticks : 0, p.ticks]);
      });
    }
  }
}

/** One line per group, "label: 0.412 ms/fill (2,060 ms CPU, 5 processes)", then the rest and the whole machine. */
export function perItem(report: CpuReport, items: number, unit = 'fill'): string[] {
  const lines = report.groups.map(
    (g) =>
      `${g.label}: ${(g.ms / items).toFixed(3)} ms/${unit} (${Math.round(g.ms).toLocaleString('en-US')} ms CPU, ${g.processes} process${g.processes === 1 ? '' : 'es'})`,
  );
  const groupsMs = report.groups.reduce((a, g) => a + g.ms, 0);
  const restSeconds = report.machineBusySeconds - groupsMs / 1000;
  lines.push(
    `the rest of the machine (other processes, interrupts): ${((restSeconds * 1000) / items).toFixed(3)} ms/${unit} ` +
      `(${restSeconds.toFixed(1)} CPU s: work beside the benchmark shows here)`,
  );
  lines.push(
    `whole machine busy: ${((report.machineBusySeconds * 1000) / items).toFixed(3)} ms/${unit} ` +
      `(${report.machineBusySeconds.toFixed(1)} CPU s in ${report.seconds.toFixed(1)} s: ` +
      `${(report.machineBusySeconds / report.seconds).toFixed(2)} CPUs busy on average)`,
  );
  return lines;
}
