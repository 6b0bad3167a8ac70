-- The claim's candidate scan, standalone, with and without `r.job <> ALL (blocked.jobs)`
-- (asyncjobs.claim_runs in asyncjobs/sql/schema.sql). Run it on a database holding a backlog of
-- one job, e.g. after `bench_extra.py --phases growth --growth-sizes 100000`:
--   psql -h 127.0.0.1 -d bench_asyncjobs_extra -f benchmarks/claim_plan_experiment.sql
-- With statistics, A estimates the unknown `<> ALL` array as matching ~nothing and scans the
-- whole table; B walks runs_pending_idx and stops after LIMIT. Read-only except ANALYZE
-- (FOR UPDATE locks are released when psql's implicit transaction ends).
ANALYZE asyncjobs.runs;
\echo === A: candidates as in claim_runs (job <> ALL(blocked.jobs) from a CTE)
EXPLAIN (ANALYZE, BUFFERS, COSTS ON, TIMING OFF)
WITH blocked AS (SELECT coalesce(array_agg(name), '{}') AS jobs FROM asyncjobs.jobs WHERE false)
SELECT c.id FROM unnest(ARRAY['default']) AS qr(queue) CROSS JOIN blocked CROSS JOIN LATERAL (
  SELECT r.id, r.job, r.priority FROM asyncjobs.runs r
   WHERE r.status = 'pending' AND r.queue = qr.queue AND r.job = ANY (ARRAY['noop','echo','bench_noop'])
     AND r.job <> ALL (blocked.jobs)
     AND (r.target_worker IS NULL OR r.target_worker = 'w') AND r.not_before <= now()
     AND (r.not_after IS NULL OR r.not_after > now())
   ORDER BY r.priority DESC, r.id LIMIT 100 FOR UPDATE SKIP LOCKED) c;
\echo === B: same without the job <> ALL(...) predicate
EXPLAIN (ANALYZE, BUFFERS, COSTS ON, TIMING OFF)
SELECT c.id FROM unnest(ARRAY['default']) AS qr(queue) CROSS JOIN LATERAL (
  SELECT r.id, r.job, r.priority FROM asyncjobs.runs r
   WHERE r.status = 'pending' AND r.queue = qr.queue AND r.job = ANY (ARRAY['noop','echo','bench_noop'])
     AND (r.target_worker IS NULL OR r.target_worker = 'w') AND r.not_before <= now()
     AND (r.not_after IS NULL OR r.not_after > now())
   ORDER BY r.priority DESC, r.id LIMIT 100 FOR UPDATE SKIP LOCKED) c;
