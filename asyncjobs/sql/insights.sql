-- Named queries, loaded once into asyncjobs.sql.QUERIES with those of the other files of
-- this folder (a name is defined once across them). Each starts with
-- `-- name: <name> :<returns>` (one, many, exec) and a description line.
--
-- Reads for people and metrics: runs and their events, explain(), job summaries, the
-- /metrics gauges and the dashboard views (asyncjobs/explain.py, summary.py, gauges.py,
-- activity.py: workers and the last hour's finished runs; the load now is cluster_gauges').

-- name: get_run :one
SELECT * FROM asyncjobs.runs WHERE id = :id;

-- name: get_runs :many
-- Filtered page of runs, newest first; :before_id is the cursor (return ids below it).
SELECT * FROM asyncjobs.runs
 WHERE (:job::text IS NULL OR job = :job)
   AND (:status::asyncjobs.run_status IS NULL OR status = :status)
   AND (:parent_run_id::bigint IS NULL OR parent_run_id = :parent_run_id)
   -- a tree: its root by the primary key, the rest through runs_root_idx (roots only)
   AND (:root_run_id::bigint IS NULL OR (id = :root_run_id AND root_run_id = id)
        OR (root_run_id = :root_run_id AND root_run_id <> id))
   AND (:trigger::asyncjobs.run_trigger IS NULL OR trigger = :trigger)
   AND (:before_id::bigint IS NULL OR id < :before_id)
   AND (:created_after::timestamptz IS NULL OR created_at >= :created_after)
   AND (:created_before::timestamptz IS NULL OR created_at < :created_before)
   AND (NOT :roots_only::boolean OR id = root_run_id)
 ORDER BY id DESC
 LIMIT :limit;

-- name: get_runs_of_parent :many
-- get_runs for a page of one run's children: the same filters, the parent required. A
-- statement of its own because `:parent_run_id IS NULL OR parent_run_id = :parent_run_id`
-- cannot use runs_parent_idx in a generic plan (asyncpg's prepared statements get one).
SELECT * FROM asyncjobs.runs
 WHERE (:job::text IS NULL OR job = :job)
   AND (:status::asyncjobs.run_status IS NULL OR status = :status)
   AND parent_run_id = :parent_run_id::bigint
   -- a tree: its root by the primary key, the rest through runs_root_idx (roots only)
   AND (:root_run_id::bigint IS NULL OR (id = :root_run_id AND root_run_id = id)
        OR (root_run_id = :root_run_id AND root_run_id <> id))
   AND (:trigger::asyncjobs.run_trigger IS NULL OR trigger = :trigger)
   AND (:before_id::bigint IS NULL OR id < :before_id)
   AND (:created_after::timestamptz IS NULL OR created_at >= :created_after)
   AND (:created_before::timestamptz IS NULL OR created_at < :created_before)
   AND (NOT :roots_only::boolean OR id = root_run_id)
 ORDER BY id DESC
 LIMIT :limit;

-- name: get_events :many
-- Events of one run after event id :after_id.
-- (through the root's index: a per-run index would cost every event write an index entry)
SELECT e.* FROM asyncjobs.run_events e
 WHERE e.root_run_id = (SELECT root_run_id FROM asyncjobs.runs WHERE id = :run_id)
   AND e.run_id = :run_id AND e.id > :after_id
 ORDER BY e.id LIMIT :limit;

-- name: run_facts :one
-- What explain() needs about run :run_id besides the run itself: the database clock, its job's and
-- queue's switches and limits with their running counts, how many live workers (heartbeat
-- within :worker_ttl) serve its queue and know its job, whether its target worker is alive, how many
-- ready runs are ahead of it in its queue (at most 10,001), and its own active children.
SELECT coalesce(:now, now()) AS now,
       j.name IS NOT NULL AS job_known,
       coalesce(j.enabled, true) AS job_enabled,
       j.max_concurrency AS job_limit,
       (SELECT count(*) FROM asyncjobs.runs x
         WHERE x.status = 'running' AND x.job = r.job) AS job_running,
       coalesce(q.enabled, true) AS queue_enabled,
       q.max_concurrency AS queue_limit,
       (SELECT count(*) FROM asyncjobs.runs x
         WHERE x.status = 'running' AND x.queue = r.queue) AS queue_running,
       (SELECT count(*) FROM asyncjobs.workers w
         WHERE r.queue = ANY (w.queues)
           AND w.heartbeat_at > coalesce(:now, now()) - :worker_ttl::interval)
           AS queue_workers,
       (SELECT count(*) FROM asyncjobs.workers w
         WHERE r.queue = ANY (w.queues) AND r.job = ANY (w.jobs)
           AND w.heartbeat_at > coalesce(:now, now()) - :worker_ttl::interval) AS job_workers,
       EXISTS (SELECT FROM asyncjobs.workers w
                WHERE w.id = r.target_worker AND w.heartbeat_at > coalesce(:now, now()) - :worker_ttl::interval)
           AS target_alive,
       -- counted up to 10,001 (explain.AHEAD_COUNTED + 1): an exact count is a walk of the
       -- queue's pending index, seconds behind a backlog of millions
       (SELECT count(*) FROM (
            SELECT FROM asyncjobs.runs x
             WHERE x.status = 'pending' AND x.queue = r.queue AND x.id <> r.id
               AND x.not_before <= coalesce(:now, now())
               AND (x.not_after IS NULL OR x.not_after > coalesce(:now, now()))
               AND (x.priority > r.priority OR (x.priority = r.priority AND x.id < r.id))
             LIMIT 10001) x) AS ahead,
       (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM asyncjobs.runs c
         WHERE c.parent_run_id = r.id AND c.root_run_id = r.root_run_id
           AND c.status IN ('pending', 'running')) AS active_children,
       -- children an earlier attempt triggered, which this attempt got back at their steps
       (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM asyncjobs.runs c
         WHERE c.parent_run_id = r.id AND c.step_key IS NOT NULL
           AND c.created_at < r.started_at AND r.attempt > 1) AS reused_children,
       -- the per-key limit (claim_runs): the run's key and how many of it run
       j.key_concurrency AS key_limit,
       (SELECT count(*) FROM asyncjobs.runs x
         WHERE x.status = 'running' AND x.job = r.job
           AND x.concurrency_key = r.concurrency_key) AS key_running,
       -- rate limits: starts in the window now, and when a full one allows the next
       j.rate_limit AS job_rate_limit,
       (SELECT count(*) FROM asyncjobs.rate_starts s
         WHERE s.scope = 'job:' || r.job AND s.at > coalesce(:now, clock_timestamp()) - j.rate_period)
           AS job_rate_starts,
       (SELECT min(s.at) + j.rate_period FROM asyncjobs.rate_starts s
         WHERE s.scope = 'job:' || r.job AND s.at > coalesce(:now, clock_timestamp()) - j.rate_period)
           AS job_rate_next,
       q.rate_limit AS queue_rate_limit,
       (SELECT count(*) FROM asyncjobs.rate_starts s
         WHERE s.scope = 'queue:' || r.queue AND s.at > coalesce(:now, clock_timestamp()) - q.rate_period)
           AS queue_rate_starts,
       (SELECT min(s.at) + q.rate_period FROM asyncjobs.rate_starts s
         WHERE s.scope = 'queue:' || r.queue AND s.at > coalesce(:now, clock_timestamp()) - q.rate_period)
           AS queue_rate_next,
       -- the per-key rate limit: starts of the run's key in the window
       j.key_rate_limit,
       (SELECT count(*) FROM asyncjobs.rate_starts s
         WHERE s.scope = 'key:' || r.job AND s.key = r.concurrency_key
           AND s.at > coalesce(:now, clock_timestamp()) - j.key_rate_period) AS key_rate_starts,
       (SELECT min(s.at) + j.key_rate_period FROM asyncjobs.rate_starts s
         WHERE s.scope = 'key:' || r.job AND s.key = r.concurrency_key
           AND s.at > coalesce(:now, clock_timestamp()) - j.key_rate_period) AS key_rate_next
  FROM asyncjobs.runs r
  LEFT JOIN asyncjobs.jobs j ON j.name = r.job
  LEFT JOIN asyncjobs.queues q ON q.name = r.queue
 WHERE r.id = :run_id;

-- name: slot_holders :many
-- The running runs that hold the slots of job :job (when :job_full), of queue :queue (when
-- :queue_full) or of key
-- :key of job :job (when :key_full), each
-- with its active children: a parent waiting on a child still holds its slot.
SELECT r.id, r.job, r.queue, r.worker_id, r.started_at, r.concurrency_key,
       (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM asyncjobs.runs c
         WHERE c.parent_run_id = r.id AND c.root_run_id = r.root_run_id
           AND c.status IN ('pending', 'running')) AS waiting_on
  FROM asyncjobs.runs r
 WHERE r.status = 'running'
   AND ((:job_full AND r.job = :job) OR (:queue_full AND r.queue = :queue)
        OR (:key_full AND r.job = :job AND r.concurrency_key = :key))
 ORDER BY r.started_at, r.id
 LIMIT 100;

-- name: job_summary :one
-- Runs of job :jobs (its name and aliases) created in the last :window: counts by status, and the
-- 50th/95th percentile of the last attempt's duration of those that finished; plus the last
-- successful run ever (runs_last_success_idx).
WITH recent AS (
    SELECT status, started_at, finished_at FROM asyncjobs.runs
     WHERE job = ANY (:jobs::text[]) AND created_at >= coalesce(:now, now()) - :window::interval
),
last_success AS (
    SELECT id, finished_at, extract(epoch FROM finished_at - started_at)::float8 AS duration
      FROM asyncjobs.runs
     WHERE job = ANY (:jobs::text[]) AND status = 'succeeded'
     ORDER BY finished_at DESC LIMIT 1
)
SELECT coalesce(:now, now()) AS now,
       (SELECT coalesce(jsonb_object_agg(status, n), '{}')
          FROM (SELECT status, count(*) AS n FROM recent GROUP BY status) c) AS counts,
       (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
                   ORDER BY extract(epoch FROM finished_at - started_at))
          FROM recent
         WHERE status IN ('succeeded', 'failed') AND started_at IS NOT NULL)::float8[]
           AS percentiles,
       l.id AS last_success_id, l.finished_at AS last_success_at,
       l.duration AS last_success_duration
  FROM (SELECT 1) x LEFT JOIN last_success l ON true;

-- name: cluster_gauges :many
-- The database gauges of /metrics in one round trip: a row per queue ('queue'), per job ('job')
-- and one for the live workers ('workers', heartbeat within :worker_ttl). Only cheap reads: pending runs
-- through the partial runs_pending_idx, running runs through runs_running_idx (finished runs
-- are never read), and the small queues, jobs and workers tables. `oldest_age` is the seconds
-- the oldest ready pending run (not_before passed) has waited; 0 when none is ready.
WITH pending AS (
    SELECT queue, job, count(*) AS depth,
           count(*) FILTER (WHERE not_before <= coalesce(:now, now())) AS ready,
           min(not_before) FILTER (WHERE not_before <= coalesce(:now, now())) AS oldest
      FROM asyncjobs.runs WHERE status = 'pending' GROUP BY queue, job
),
running AS (
    SELECT queue, job, count(*) AS n
      FROM asyncjobs.runs WHERE status = 'running' GROUP BY queue, job
),
queue_names AS (
    SELECT name FROM asyncjobs.queues
    UNION SELECT queue FROM pending UNION SELECT queue FROM running
),
job_names AS (
    SELECT name FROM asyncjobs.jobs UNION SELECT job FROM pending UNION SELECT job FROM running
)
SELECT 'queue' AS kind, n.name,
       coalesce((SELECT sum(p.depth) FROM pending p WHERE p.queue = n.name), 0)::bigint AS pending,
       coalesce((SELECT sum(p.ready) FROM pending p WHERE p.queue = n.name), 0)::bigint AS ready,
       coalesce((SELECT extract(epoch FROM coalesce(:now, now()) - min(p.oldest)) FROM pending p
                  WHERE p.queue = n.name), 0)::float8 AS oldest_age,
       coalesce((SELECT sum(r.n) FROM running r WHERE r.queue = n.name), 0)::bigint AS running,
       q.max_concurrency, coalesce(q.enabled, true) AS enabled
  FROM queue_names n LEFT JOIN asyncjobs.queues q ON q.name = n.name
UNION ALL
SELECT 'job', n.name,
       coalesce((SELECT sum(p.depth) FROM pending p WHERE p.job = n.name), 0)::bigint,
       coalesce((SELECT sum(p.ready) FROM pending p WHERE p.job = n.name), 0)::bigint,
       coalesce((SELECT extract(epoch FROM coalesce(:now, now()) - min(p.oldest)) FROM pending p
                  WHERE p.job = n.name), 0)::float8,
       coalesce((SELECT sum(r.n) FROM running r WHERE r.job = n.name), 0)::bigint,
       j.max_concurrency, coalesce(j.enabled, true)
  FROM job_names n LEFT JOIN asyncjobs.jobs j ON j.name = n.name
UNION ALL
SELECT 'workers', '', count(*), 0, 0, coalesce(sum(concurrency), 0), NULL, true
  FROM asyncjobs.workers WHERE heartbeat_at > coalesce(:now, now()) - :worker_ttl::interval;

-- name: get_workers :many
-- Registered workers with the runs each holds now (one pass over the running rows, which
-- runs_running_idx keeps apart; the first :max_runs of them by id, with their jobs), and the
-- database clock to judge their heartbeats by.
SELECT coalesce(:now, now()) AS now, w.id, w.host, w.pid, w.queues, w.jobs, w.concurrency,
       w.started_at,
       w.heartbeat_at, coalesce(r.running, 0) AS running,
       coalesce(r.run_ids[1 : :max_runs], '{}') AS run_ids,
       coalesce(r.run_jobs[1 : :max_runs], '{}') AS run_jobs
  FROM asyncjobs.workers w
  LEFT JOIN (SELECT worker_id, count(*) AS running, array_agg(id ORDER BY id) AS run_ids,
                    array_agg(job ORDER BY id) AS run_jobs
               FROM asyncjobs.runs WHERE status = 'running' GROUP BY worker_id) r
         ON r.worker_id = w.id
 ORDER BY w.started_at, w.id;

-- name: finished_per_minute :many
-- Runs that finished within the last :window, counted per minute, job and queue by final status,
-- and per job and queue (minute NULL) with the 50th/95th percentile of the last attempt's
-- duration; the database clock on every row (one row with only `now` when none finished).
-- There is no index on created_at or finished_at; ids grow with creation time, so a binary
-- search over the primary key (about 2·log2(runs) index probes) finds the first run created
-- at most two windows ago, and only runs from there on are read: a run that took longer than
-- one window from creation to finish is not counted.
WITH RECURSIVE search (lo, hi) AS (
    SELECT coalesce(min(id), 0), coalesce(max(id), 0) + 1 FROM asyncjobs.runs
  UNION ALL
    SELECT CASE WHEN p.created_at < coalesce(:now, now()) - 2 * :window::interval THEN p.id + 1 ELSE s.lo END,
           CASE WHEN p.created_at < coalesce(:now, now()) - 2 * :window::interval THEN s.hi
                ELSE (s.lo + s.hi) / 2 END
      FROM search s
      LEFT JOIN LATERAL (SELECT r.id, r.created_at FROM asyncjobs.runs r
                          WHERE r.id >= (s.lo + s.hi) / 2 ORDER BY r.id LIMIT 1) p ON true
     WHERE s.lo < s.hi
),
counted AS (
    SELECT date_trunc('minute', r.finished_at) AS minute, r.job, r.queue,
           count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE r.status = 'failed') AS failed,
           count(*) FILTER (WHERE r.status IN ('cancelled', 'expired')) AS cancelled,
           percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
               ORDER BY extract(epoch FROM r.finished_at - r.started_at))
               FILTER (WHERE r.status IN ('succeeded', 'failed') AND r.started_at IS NOT NULL)
               ::float8[] AS percentiles
      FROM asyncjobs.runs r
     WHERE r.id >= (SELECT max(lo) FROM search) AND r.finished_at >= coalesce(:now, now()) - :window::interval
     GROUP BY GROUPING SETS ((1, r.job, r.queue), (r.job, r.queue))
)
SELECT c.now, f.*
  FROM (SELECT coalesce(:now, now()) AS now) c LEFT JOIN counted f ON true
 ORDER BY f.minute NULLS FIRST, f.job;
