// A no-op drain by a peer job system, for scripts/bench.sh: installs the peer's schema in the
// database DATABASE_URL names (a fresh one), inserts JOBS no-op jobs in bulk, then starts the peer's
// worker and times until every job is completed (or LIMIT_SECS pass). Prints one JSON line.
//
//   node drain.mjs graphile|pgboss default|batched
//
// default: the peer's defaults. batched: the settings the peer documents for throughput
// (graphile-worker: a local queue of 500 with batched completion, concurrency 32; pg-boss: batches
// of 100 fetched back to back, 4 local workers).
import { performance } from "node:perf_hooks";
import pg from "pg";

const [peer, mode] = process.argv.slice(2);
const url = process.env.DATABASE_URL;
const jobs = Number(process.env.JOBS ?? 20000);
const limitSecs = Number(process.env.LIMIT_SECS ?? 120);
if (!url || !["graphile", "pgboss"].includes(peer) || !["default", "batched"].includes(mode)) {
  console.error("usage: DATABASE_URL=... JOBS=n node drain.mjs graphile|pgboss default|batched");
  process.exit(2);
}
const sql = new pg.Pool({ connectionString: url, max: 2 });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The clock starts before the peer's worker starts, as Herald's does in the pipeline bench: a
// worker that begins draining while its start-up call is still returning is timed from the start.
async function timeUntil(start, remaining) {
  let left = jobs;
  while (left > 0 && performance.now() - start < limitSecs * 1000) {
    await sleep(20);
    left = await remaining();
  }
  return { seconds: (performance.now() - start) / 1000, completed: jobs - left };
}

async function graphile() {
  const { Logger, makeWorkerUtils, run } = await import("graphile-worker");
  // A log line per job would measure the terminal; the worker logs nothing here.
  const logger = new Logger(() => () => {});
  const utils = await makeWorkerUtils({ connectionString: url, logger });
  await utils.migrate();
  for (let i = 0; i < jobs; i += 5000) {
    const n = Math.min(5000, jobs - i);
    await utils.addJobs(Array.from({ length: n }, (_, k) => ({ identifier: "noop", payload: { n: i + k } })));
  }
  await utils.release();
  const preset =
    mode === "batched"
      ? { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } }
      : {};
  const start = performance.now();
  const runner = await run({
    connectionString: url,
    noHandleSignals: true,
    ...(mode === "batched" ? { concurrency: 32 } : {}),
    preset,
    logger,
    taskList: { noop: async () => {} },
  });
  const timed = await timeUntil(start, async () =>
    Number((await sql.query("SELECT count(*) AS n FROM graphile_worker._private_jobs")).rows[0].n),
  );
  await runner.stop();
  return timed;
}

async function pgboss() {
  const { PgBoss } = await import("pg-boss");
  const boss = new PgBoss(url);
  boss.on("error", (e) => console.error(e));
  await boss.start();
  await boss.createQueue("noop");
  for (let i = 0; i < jobs; i += 5000) {
    const n = Math.min(5000, jobs - i);
    await boss.insert("noop", Array.from({ length: n }, (_, k) => ({ data: { n: i + k } })));
  }
  const options =
    mode === "batched" ? { batchSize: 100, burstWhenBatchFull: true, localConcurrency: 4 } : {};
  const start = performance.now();
  await boss.work("noop", options, async () => {});
  const timed = await timeUntil(start, async () =>
    Number(
      (await sql.query("SELECT count(*) AS n FROM pgboss.job WHERE name = 'noop' AND state <> 'completed'"))
        .rows[0].n,
    ),
  );
  await boss.stop({ graceful: false, wait: false });
  return timed;
}

const timed = peer === "graphile" ? await graphile() : await pgboss();
await sql.end();
console.log(
  JSON.stringify({ peer, mode, jobs, ...timed, per_s: timed.completed / timed.seconds }),
);
process.exit(0);
