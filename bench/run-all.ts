// Runs every benchmark in sequence, each in its own process, after building the service.
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/run-all.ts
//        [--quick] [--n 20000] [--duration 10] [--connections 10] [--max 100000] [--no-build]
//        [--quiet-load 1.0] [--quiet-wait 30]
//
// --n is the ingest benchmark's end-to-end size (20,000: SPEC.md §11 / issue 23 ask for at least
// that; at the 260-510 fills/s end to end measured before issue 23, 50,000 fills and the backlog
// of the steady 1,000/s phase would take an estimated 3-7.5 of the 10 minutes, load depending).
// --quick (a smoke run of a few minutes): ingest --n 5000 --paced-seconds 5, api --duration 5
// --sequential 300, scale --max 10000 --timeout 60.
// Before each benchmark it waits (up to --quiet-wait seconds) for the 1-minute load average to
// fall below --quiet-load, because absolute numbers mean little while other work shares the
// CPUs; the load seen at the start of each benchmark is printed with its results. The whole run
// prints its wall time at the end (the target: under 10 minutes with the default sizes).
import { spawn } from 'node:child_process';
import { cpus, loadavg, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { args, pgVersion, sleep } from './lib.js';

const opt = args({
  quick: false,
  n: 20_000,
  duration: 10,
  connections: 10,
  max: 100_000,
  'no-build': false,
  'quiet-load': 1.0,
  'quiet-wait': 30,
});
const quick = opt.quick === 'true';
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const LOADER = './node_modules/@tapjs/typescript/dist/esm/import.mjs';

function run(cmd: string, argv: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, { cwd: ROOT, stdio: 'inherit' });
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

async function quiet(): Promise<void> {
  const limit = Number(opt['quiet-load']);
  const deadline = Date.now() + Number(opt['quiet-wait']) * 1000;
  if (loadavg()[0]! >= limit)
    console.log(`(waiting for the 1-minute load average ${loadavg()[0]!.toFixed(2)} to fall below ${limit})`);
  while (loadavg()[0]! >= limit && Date.now() < deadline) await sleep(5000);
  console.log(
    `load average at start: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
}

const benches: [string, string[]][] = [
  ['bench/ingest.ts', quick ? ['--n', '5000', '--paced-seconds', '5'] : ['--n', opt.n!]],
  [
    'bench/api.ts',
    [
      '--duration',
      quick ? '5' : opt.duration!,
      '--connections',
      opt.connections!,
      ...(quick ? ['--sequential', '300'] : []),
    ],
  ],
  ['bench/scale.ts', quick ? ['--max', '10000', '--timeout', '60'] : ['--max', opt.max!]],
];

const benchStarted = Date.now();
console.log(
  `# machine: ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}`,
);
console.log(`# ${await pgVersion()}`);
if (opt['no-build'] !== 'true') {
  const code = await run('npm', ['run', 'build', '--silent']);
  if (code !== 0) {
    console.error('npm run build failed; the benchmarks need dist/src/main.js of the current source');
    process.exit(code);
  }
}
let failed = 0;
for (const [file, argv] of benches) {
  console.log(`\n## ${file} ${argv.join(' ')}`);
  await quiet();
  const started = Date.now();
  const code = await run(process.execPath, [`--import=${LOADER}`, file, ...argv]);
  console.log(
    `(${file} exited ${code} after ${((Date.now() - started) / 1000).toFixed(0)} s; load average now ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')})`,
  );
  if (code !== 0) failed++;
}
console.log(
  `\n# npm run bench took ${((Date.now() - benchStarted) / 60_000).toFixed(1)} min${failed ? `; ${failed} benchmark(s) failed` : ''}`,
);
process.exit(failed ? 1 : 0);
