#!/usr/bin/env node
/*
 * The row "enqueue, 100 concurrent callers" for graphile-worker (issue 12), the twin of
 * bench_concurrent.py: --callers (100) concurrent async functions share one WorkerUtils
 * (makeWorkerUtils({connectionString}): one pg Pool, graphile-worker's default maxPoolSize 10)
 * and each awaits utils.addJob("bench_noop", {i}) for its share of --n (10,000) jobs, one at a
 * time (caller k adds i = k, k + callers, ...). Jobs/s over the whole batch; verified by the
 * row count of graphile_worker._private_jobs (every job, plus one warm-up job per caller).
 *
 * graphile-worker and pg are loaded from the anchors' npm work copy that run_all.sh makes
 * (--modules-dir, default benchmarks/.work/graphile). Other harness options are accepted and
 * ignored, so run_all.sh can pass every script the same arguments. Prints one JSON line.
 * Usage: node benchmarks/bench_graphile_concurrent.js [--n 10000] [--callers 100] [--json-out F]
 */
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { createRequire } = require("module");
const { performance } = require("perf_hooks");

const PG_HOST = process.env.BENCH_PGHOST || "127.0.0.1";
const PG_PORT = Number(process.env.BENCH_PGPORT || "5432");
const PG_USER = process.env.BENCH_PGUSER || "root";
const ADMIN_DB = process.env.BENCH_ADMIN_DB || "postgres";
const TASK = "bench_noop";
const CLK_TCK = 100; // USER_HZ on Linux

const dsnFor = (db) => `postgresql://${PG_USER}@${PG_HOST}:${PG_PORT}/${db}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now() / 1000;
const round = (x, d) => Math.round(x * 10 ** d) / 10 ** d;

function parseArgs(argv) {
  const a = { n: 10000, callers: 100, db: "bench_graphile_concurrent", jsonOut: null,
              verbose: false, modulesDir: path.join(__dirname, ".work", "graphile") };
  const map = { "--n": ["n", Number], "--callers": ["callers", Number], "--db": ["db", String],
                "--json-out": ["jsonOut", String], "--modules-dir": ["modulesDir", String] };
  for (let k = 0; k < argv.length; k++) {
    let [name, value] = argv[k].split(/=(.*)/s);
    if (name === "--verbose") { a.verbose = true; continue; }
    const known = map[name];
    if (value === undefined && argv[k + 1] !== undefined && !argv[k + 1].startsWith("--")) {
      value = argv[++k]; // the option's value, also for harness options this script ignores
    }
    if (known) a[known[0]] = known[1](value);
  }
  if (!(a.callers >= 1 && a.n >= a.callers)) throw new Error("--n must be at least --callers >= 1");
  return a;
}

/** CPU seconds of every process named "postgres" plus the postmaster's reaped children:
 * the accounting of the anchors' harness (bench_graphile.js, _common.py). */
function postgresCpuSeconds() {
  const procs = new Map();
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    let data;
    try { data = fs.readFileSync(`/proc/${pid}/stat`, "utf8"); } catch (e) { continue; }
    const rpar = data.lastIndexOf(")");
    if (data.slice(data.indexOf("(") + 1, rpar) !== "postgres") continue;
    const f = data.slice(rpar + 2).split(" ");
    procs.set(Number(pid), { ppid: Number(f[1]), own: Number(f[11]) + Number(f[12]),
                             children: Number(f[13]) + Number(f[14]) });
  }
  let ticks = 0;
  for (const [, s] of procs) ticks += s.own + (procs.has(s.ppid) ? 0 : s.children);
  return procs.size ? ticks / CLK_TCK : null;
}

function cpuMeter() {
  const wall0 = now(), cpu0 = process.cpuUsage(), pg0 = postgresCpuSeconds();
  return () => {
    const wall = now() - wall0;
    const c = process.cpuUsage(cpu0);
    const node = (c.user + c.system) / 1e6;
    const pg1 = postgresCpuSeconds();
    const pg = pg1 != null && pg0 != null ? pg1 - pg0 : null;
    return { wall_s: round(wall, 3), node_cpu_s: round(node, 3),
             postgres_cpu_s: pg != null ? round(pg, 3) : null, node_cores: round(node / wall, 2),
             postgres_cores: pg != null ? round(pg / wall, 2) : null };
  };
}

function percentile(values, p) {
  const xs = [...values].sort((x, y) => x - y);
  const k = ((xs.length - 1) * p) / 100;
  const lo = Math.floor(k), hi = Math.min(lo + 1, xs.length - 1);
  return xs[lo] + (xs[hi] - xs[lo]) * (k - lo);
}

const STATS_SQL = "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted" +
  " FROM pg_stat_database WHERE datname = current_database()";

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const req = createRequire(path.join(args.modulesDir, "package.json"));
  const gw = req("graphile-worker");
  const { Client } = req("pg");
  const quiet = new gw.Logger(() => (level, message) => {
    if (level === "error" || level === "warning") console.error(`${level}: ${message}`);
  });
  const dsn = dsnFor(args.db);
  const started = Date.now() / 1000;

  const admin = new Client({ connectionString: dsnFor(ADMIN_DB) });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS "${args.db}" WITH (FORCE)`);
  await admin.query(`CREATE DATABASE "${args.db}"`);
  await admin.end();
  await gw.runMigrations({ connectionString: dsn, logger: quiet });
  const obs = new Client({ connectionString: dsn });
  await obs.connect();
  const stats = async () => {
    const { rows } = await obs.query(STATS_SQL);
    return Object.fromEntries(Object.entries(rows[0]).map(([k, v]) => [k, Number(v)]));
  };

  // DB work: from before the warm-up to after the pool closed, over n + callers jobs (a
  // backend defers its statistics up to 10 s; closing the pool flushes them), as in
  // bench_concurrent.py
  const stats0 = await stats();
  const utils = await gw.makeWorkerUtils({ connectionString: dsn, logger: quiet });
  const callMs = [];
  let dt, cpu, present;
  try {
    // warm-up, not timed: one call per caller at once opens the pool's connections
    await Promise.all(Array.from({ length: args.callers }, (_, k) => utils.addJob(TASK, { i: -1 - k })));
    await sleep(1200);
    const stop = cpuMeter();
    const t0 = now();
    await Promise.all(Array.from({ length: args.callers }, async (_, k) => {
      for (let i = k; i < args.n; i += args.callers) {
        const t = now();
        await utils.addJob(TASK, { i });
        callMs.push((now() - t) * 1000);
      }
    }));
    dt = now() - t0;
    cpu = stop();
    const { rows } = await obs.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
    present = rows[0].n;
  } finally {
    await utils.release();
  }
  await sleep(1200);
  const stats1 = await stats();
  await obs.end();
  const perJob = Object.fromEntries(Object.keys(stats1).map((k) => [k, round((stats1[k] - stats0[k]) / (args.n + args.callers), 2)]));
  const phase = {
    jobs: args.n, callers: args.callers, seconds: round(dt, 3), jobs_per_s: round(args.n / dt, 1),
    verified: present === args.n + args.callers, rows_in_queue: present,
    enqueue_call_ms: { p50: round(percentile(callMs, 50), 2), p99: round(percentile(callMs, 99), 2),
                       max: round(Math.max(...callMs), 2) },
    cpu, db_per_job: perJob,
  };
  if (args.verbose) console.error(`[graphile-worker] enqueue_concurrent: ${JSON.stringify(phase)}`);
  const line = JSON.stringify({
    library: "graphile-worker", version: req("graphile-worker/package.json").version,
    node: process.version, cpu_count: os.cpus().length, n: args.n,
    config: { concurrent_producer: "makeWorkerUtils({connectionString}) (one pg Pool, default " +
              "maxPoolSize 10); every caller awaits utils.addJob('bench_noop', {i})",
              pg: req("pg/package.json").version },
    enqueue_concurrent_jobs_per_s: phase.jobs_per_s, all_verified: phase.verified,
    started_at: round(started, 1), elapsed_s: round(Date.now() / 1000 - started, 1),
    phases: { enqueue_concurrent: phase },
  });
  if (args.jsonOut) fs.appendFileSync(args.jsonOut, line + "\n");
  console.log(line);
}

main().then(
  () => process.exit(0),
  (e) => { console.error(e && e.stack ? e.stack : e); process.exit(1); },
);
