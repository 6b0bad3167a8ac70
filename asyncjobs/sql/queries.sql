-- Named queries, loaded once into asyncjobs.sql.QUERIES. Each starts with
-- `-- name: <name> :<returns>` (one, many, exec) and a description line.
-- Every statement that changes a run writes its run_events rows in the same statement, and
-- sends at most one NOTIFY on channel `asyncjobs` (JSON payload; parsed by
-- asyncjobs/backends/listener.py parse_notification).
--
-- Statements that address runs by id reach them through runs_pkey, whatever the statistics
-- say (tests/test_plans.py checks it on 1M runs with stale statistics). They never write
-- `status = 'running'` in a join: that lets the planner walk the partial index
-- runs_running_idx and test every running row against the whole batch, which it does when
-- the statistics say (wrongly, e.g. after a bulk load) that hardly any run is running --
-- 671 ms for a heartbeat of 100 ids at 28k running. "Owned by worker :worker" is instead
-- `worker_id = :worker AND lease_expires_at IS NOT NULL`, which the CHECK runs_running_has_lease
-- makes equivalent to "running and owned by :worker" and which no index can serve.

-- name: schema_installed :one
-- Whether asyncjobs was ever installed in this database.
SELECT to_regclass('asyncjobs.schema_version') IS NOT NULL;

-- name: schema_version :one
-- The highest applied schema version.
SELECT max(version) FROM asyncjobs.schema_version;

-- name: applied_migrations :many
-- Every applied schema version and the oldest code version that still works with it (see
-- asyncjobs.sql.incompatibility). The column comes with version 4; read through to_jsonb, a
-- database from before it answers NULL instead of failing.
SELECT version, (to_jsonb(v) ->> 'compatible_from')::integer AS compatible_from
  FROM asyncjobs.schema_version v
 ORDER BY version;

-- name: records_compatibility :one
-- Whether schema_version has the compatible_from column (version 4 and later).
SELECT EXISTS (SELECT FROM pg_attribute
                WHERE attrelid = 'asyncjobs.schema_version'::regclass
                  AND attname = 'compatible_from' AND NOT attisdropped);

-- name: record_compatibility :exec
-- Store the compatibility each migration file declares (:versions, :compatible_from).
UPDATE asyncjobs.schema_version v SET compatible_from = u.compatible_from
  FROM unnest(:versions::integer[], :compatible_from::integer[]) AS u(version, compatible_from)
 WHERE v.version = u.version AND v.compatible_from IS DISTINCT FROM u.compatible_from;

-- name: register_definitions :exec
-- Upsert queues and jobs with their limits on worker start; `enabled` is left as it is.
WITH queues AS (
    INSERT INTO asyncjobs.queues (name, max_concurrency, rate_limit, rate_period)
    SELECT * FROM unnest(:queue_names::text[], :queue_max_concurrency::integer[],
                         :queue_rate_limits::integer[], :queue_rate_periods::interval[])
    ON CONFLICT (name) DO UPDATE
       SET max_concurrency = excluded.max_concurrency, rate_limit = excluded.rate_limit,
           rate_period = excluded.rate_period, updated_at = now()
     WHERE (queues.max_concurrency, queues.rate_limit, queues.rate_period)
           IS DISTINCT FROM (excluded.max_concurrency, excluded.rate_limit, excluded.rate_period)
)
INSERT INTO asyncjobs.jobs (name, queue, max_concurrency, args_schema, key_field,
                           key_concurrency, rate_limit, rate_period)
SELECT * FROM unnest(:job_names::text[], :job_queues::text[], :job_max_concurrency::integer[],
                     :job_args_schemas::jsonb[], :job_key_fields::text[],
                     :job_key_concurrency::integer[], :job_rate_limits::integer[],
                     :job_rate_periods::interval[])
ON CONFLICT (name) DO UPDATE
   SET queue = excluded.queue, max_concurrency = excluded.max_concurrency,
       args_schema = excluded.args_schema, key_field = excluded.key_field,
       key_concurrency = excluded.key_concurrency, rate_limit = excluded.rate_limit,
       rate_period = excluded.rate_period, updated_at = now()
 WHERE (jobs.queue, jobs.max_concurrency, jobs.args_schema, jobs.key_field,
        jobs.key_concurrency, jobs.rate_limit, jobs.rate_period)
       IS DISTINCT FROM (excluded.queue, excluded.max_concurrency, excluded.args_schema,
                         excluded.key_field, excluded.key_concurrency, excluded.rate_limit,
                         excluded.rate_period);

-- name: enqueue_runs :many
-- Insert one or many runs in one round trip. A run whose (job, dedup_id) is already held by an
-- active run, or whose (parent_run_id, step_key) already has a child, is skipped (ON CONFLICT
-- on those partial unique indexes) and not returned; the caller looks up the holder. Ids come
-- from the sequence first so a root run can point at itself. The per-key limit's key is read
-- from the arguments here, by the field the caller's code names (so a client that has the
-- job's code gets keys before any worker registered the job); without one the
-- runs_concurrency_key trigger reads the job's stored key field.
WITH input AS (
    SELECT nextval('asyncjobs.run_ids') AS id, u.*
      FROM unnest(:jobs::text[], :queues::text[], :args::jsonb[], :priorities::smallint[],
                  :not_befores::timestamptz[], :not_afters::timestamptz[], :dedup_ids::text[],
                  :max_attempts::integer[], :parent_run_ids::bigint[], :root_run_ids::bigint[],
                  :triggers::asyncjobs.run_trigger[], :max_restarts::integer[],
                  :trace_contexts::jsonb[], :step_keys::text[], :key_fields::text[])
           WITH ORDINALITY AS u(job, queue, args, priority, not_before, not_after, dedup_id,
                                max_attempts, parent_run_id, root_run_id, trigger,
                                max_restarts, trace_context, step_key, key_field, ord)
),
inserted AS (
    INSERT INTO asyncjobs.runs (id, job, queue, args, priority, not_before, not_after, dedup_id,
                                max_attempts, parent_run_id, root_run_id, trigger, max_restarts,
                                trace_context, step_key, concurrency_key, created_at)
    SELECT id, job, queue, args, priority, coalesce(not_before, :now, now()), not_after,
           dedup_id, max_attempts, parent_run_id, coalesce(root_run_id, id), trigger,
           max_restarts, trace_context, step_key, left(args ->> key_field, 200),
           coalesce(:now, now())
      FROM input ORDER BY ord
    -- no conflict target: both runs_dedup_idx and runs_step_idx skip the row (a target can
    -- name only one of them)
    ON CONFLICT DO NOTHING
    RETURNING id, job, queue, status, trigger, priority, not_before, not_after, dedup_id,
              attempt, max_attempts, parent_run_id, root_run_id, created_at, step_key
),
created AS (
    INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
    SELECT id, root_run_id, 'pending',
           jsonb_build_object('job', job, 'queue', queue, 'parent_run_id', parent_run_id,
                              'trigger', trigger)
      FROM inserted
),
notified AS (
    SELECT asyncjobs.notify(array_agg(DISTINCT queue)
                                FILTER (WHERE not_before <= coalesce(:now, now())))
      FROM inserted HAVING count(*) > 0
)
SELECT i.* FROM inserted i LEFT JOIN notified ON true ORDER BY i.id;

-- name: runs_by_step :many
-- The children already triggered at these (parent_run_id, step_key) steps.
SELECT r.parent_run_id, r.step_key, r.id, r.job, r.status
  FROM unnest(:parent_run_ids::bigint[], :step_keys::text[]) AS k(parent_run_id, step_key)
  JOIN asyncjobs.runs r ON r.parent_run_id = k.parent_run_id AND r.step_key = k.step_key;

-- name: release_step :one
-- Free a step whose child ended without success, so the parent can trigger a new child at
-- it (`rerun_failed`); the old child keeps its parent, only its step key is cleared.
UPDATE asyncjobs.runs SET step_key = NULL
 WHERE parent_run_id = :parent_run_id AND step_key = :step_key
   AND status IN ('failed', 'cancelled', 'expired')
RETURNING id;

-- name: active_run_ids_by_dedup :many
-- The active runs holding these (job, dedup_id) pairs.
SELECT r.job, r.dedup_id, r.id
  FROM unnest(:jobs::text[], :dedup_ids::text[]) AS k(job, dedup_id)
  JOIN asyncjobs.runs r ON r.job = k.job AND r.dedup_id = k.dedup_id
 WHERE r.status IN ('pending', 'running');

-- name: claim_runs :many
-- Claim up to :capacity runs for worker :worker (see asyncjobs.claim_runs in schema.sql); a
-- last row
-- with a NULL id, if any, says when a full rate limit allows the next start.
SELECT * FROM asyncjobs.claim_runs(:worker, :queues, :jobs, :capacity, :lease, true, :now);

-- name: complete_runs :many
-- Finish a batch of runs, fenced: a row changes only while (id, attempt, worker) still owns it
-- and it is still running; the ids returned are the accepted ones. A row with retry_in set goes
-- back to pending for another attempt (trigger 'retry', one more of `retries`); `handback` rows
-- return to pending (trigger 'restart', graceful shutdown) and count as neither a retry nor a
-- restart.
WITH input AS (
    SELECT * FROM unnest(:ids::bigint[], :attempts::integer[],
                         :statuses::asyncjobs.run_status[], :results::jsonb[],
                         :errors::jsonb[], :retry_in::float8[], :handback::boolean[])
           AS u(id, attempt, status, result, error, retry_in, handback)
),
done AS (
    UPDATE asyncjobs.runs r
       SET status = CASE WHEN i.retry_in IS NOT NULL OR i.handback THEN 'pending' ELSE i.status END,
           trigger = CASE WHEN i.retry_in IS NOT NULL THEN 'retry'
                          WHEN i.handback THEN 'restart' ELSE r.trigger END,
           not_before = CASE WHEN i.retry_in IS NOT NULL
                             THEN coalesce(:now, now()) + make_interval(secs => i.retry_in)
                             ELSE r.not_before END,
           retries = r.retries + CASE WHEN i.retry_in IS NOT NULL THEN 1 ELSE 0 END,
           finished_at = CASE WHEN i.retry_in IS NOT NULL OR i.handback THEN NULL
                              ELSE coalesce(:now, now()) END,
           worker_id = NULL, lease_expires_at = NULL,
           result = i.result,
           error = i.error,
           errors = CASE WHEN i.error IS NULL THEN r.errors ELSE r.errors || i.error END,
           progress = CASE WHEN i.status = 'succeeded' AND i.retry_in IS NULL AND NOT i.handback
                           THEN 1 ELSE r.progress END
      FROM input i
     WHERE r.id = ANY (:ids::bigint[]) AND r.id = i.id AND r.attempt = i.attempt
       AND r.worker_id = :worker AND r.lease_expires_at IS NOT NULL  -- running, ours (see top)
    RETURNING r.id, r.root_run_id, r.status, r.attempt, r.not_before, r.queue, r.job, i.error,
              i.retry_in
),
-- queues where a finished run freed a slot under a limit: their workers may claim again now
freed AS (
    SELECT DISTINCT d.queue FROM done d
     WHERE EXISTS (SELECT 1 FROM asyncjobs.jobs j
                    WHERE j.name = d.job AND j.max_concurrency IS NOT NULL)
        OR EXISTS (SELECT 1 FROM asyncjobs.queues q
                    WHERE q.name = d.queue AND q.max_concurrency IS NOT NULL)
),
events AS (
    INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
    SELECT id, root_run_id, CASE WHEN retry_in IS NOT NULL THEN 'retrying' ELSE status::text END,
           jsonb_strip_nulls(jsonb_build_object('attempt', attempt, 'error', error,
                                                'retry_at', CASE WHEN retry_in IS NOT NULL
                                                                 THEN not_before END))
      FROM done
),
notified AS (
    SELECT asyncjobs.notify((SELECT array_agg(queue) FROM (
                                 SELECT queue FROM done WHERE status = 'pending'
                                 UNION SELECT queue FROM freed) wake),
                            array_agg(id) FILTER (WHERE status <> 'pending'))
      FROM done HAVING count(*) > 0
)
SELECT d.id FROM done d LEFT JOIN notified ON true;

-- name: heartbeat :one
-- Mark worker :worker alive and extend the leases it still holds (fenced by attempt). Returns the
-- runs it kept, and those among them whose cancellation was requested.
WITH alive AS (
    UPDATE asyncjobs.workers SET heartbeat_at = coalesce(:now, now())
     WHERE id = :worker RETURNING id
),
extended AS (
    UPDATE asyncjobs.runs r
       SET lease_expires_at = coalesce(:now, now()) + :lease::interval
      FROM unnest(:ids::bigint[], :attempts::integer[]) AS u(id, attempt)
     WHERE r.id = ANY (:ids::bigint[]) AND r.id = u.id AND r.attempt = u.attempt
       AND r.worker_id = :worker AND r.lease_expires_at IS NOT NULL  -- running, ours (see top)
    RETURNING r.id, r.cancel_requested
)
SELECT (SELECT count(*) FROM alive) > 0 AS registered,
       coalesce(array_agg(id), '{}') AS kept,
       coalesce(array_agg(id) FILTER (WHERE cancel_requested), '{}') AS cancel_requested
  FROM extended;

-- name: sweep :one
-- Rescue runs whose lease expired (judged by the database clock). A crash is a restart, not a
-- retry: the run goes back to pending (trigger 'restart', restarts + 1) without touching the
-- job's retries, until it was restarted max_restarts times; then it fails with LeaseExpired.
-- Cancelled instead when that was asked. Expire pending runs past not_after. At most :batch runs
-- of each kind per call (`full` says a batch was full: sweep again). SKIP LOCKED makes
-- concurrent sweepers split the work: each run is rescued exactly once. Also drops workers
-- silent for more than :worker_ttl.
-- For :worker_ttl (the sweeper's lease) after the server (re)started nothing is rescued or dropped:
-- while it was down no worker could heartbeat, and a database restart must not cost restarts.
WITH settled AS (
    SELECT pg_postmaster_start_time() < coalesce(:now, now()) - :worker_ttl::interval AS ok
),
stale AS (
    SELECT id, restarts < max_restarts AS restart, jsonb_build_object(
               'type', 'LeaseExpired', 'attempt', attempt, 'traceback', '',
               'message', 'worker ' || worker_id || ' stopped heartbeating (lease expired at '
                          || lease_expires_at || ')'
                          || CASE WHEN restarts >= max_restarts
                                  THEN '; not restarted again: it was restarted ' || restarts
                                       || ' times (max_restarts ' || max_restarts || ')'
                                  ELSE '' END) AS error
      FROM asyncjobs.runs
     WHERE status = 'running' AND lease_expires_at < coalesce(:now, now())
       AND (SELECT ok FROM settled)
     ORDER BY lease_expires_at LIMIT :batch
       FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE asyncjobs.runs r
       SET status = CASE WHEN r.cancel_requested THEN 'cancelled'
                         WHEN stale.restart THEN 'pending'
                         ELSE 'failed' END::asyncjobs.run_status,
           restarts = r.restarts + CASE WHEN stale.restart AND NOT r.cancel_requested
                                        THEN 1 ELSE 0 END,
           trigger = 'restart',
           finished_at = CASE WHEN r.cancel_requested OR NOT stale.restart
                              THEN coalesce(:now, now()) END,
           error = stale.error,
           errors = r.errors || stale.error,
           worker_id = NULL, lease_expires_at = NULL
      FROM stale
     WHERE r.id = stale.id
    RETURNING r.id, r.root_run_id, r.status, r.attempt, r.queue, stale.error
),
overdue AS (
    SELECT id FROM asyncjobs.runs
     WHERE status = 'pending' AND not_after IS NOT NULL AND not_after <= coalesce(:now, now())
     ORDER BY not_after LIMIT :batch
       FOR UPDATE SKIP LOCKED
),
expired AS (
    UPDATE asyncjobs.runs r SET status = 'expired', finished_at = coalesce(:now, now())
      FROM overdue WHERE r.id = overdue.id
    RETURNING r.id, r.root_run_id, r.status, r.attempt, r.queue, NULL::jsonb AS error
),
changed AS (
    SELECT * FROM rescued UNION ALL SELECT * FROM expired
),
events AS (
    INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
    SELECT id, root_run_id, status::text,
           jsonb_strip_nulls(jsonb_build_object('attempt', attempt, 'error', error,
                                                'rescued', error IS NOT NULL))
      FROM changed
),
gone_workers AS (
    DELETE FROM asyncjobs.workers
     WHERE heartbeat_at < coalesce(:now, now()) - :worker_ttl::interval AND (SELECT ok FROM settled)
    RETURNING id
),
notified AS (
    SELECT asyncjobs.notify(array_agg(DISTINCT queue) FILTER (WHERE status = 'pending'),
                            array_agg(id) FILTER (WHERE status <> 'pending'))
      FROM changed HAVING count(*) > 0
)
SELECT (SELECT count(*) FROM rescued WHERE status = 'pending') AS restarted,
       (SELECT count(*) FROM rescued WHERE status <> 'pending') AS failed,
       (SELECT count(*) FROM expired) AS expired,
       (SELECT count(*) FROM gone_workers) AS workers_removed,
       (SELECT count(*) FROM stale) >= :batch OR (SELECT count(*) FROM overdue) >= :batch AS full,
       (SELECT count(*) FROM notified) AS notified;

-- name: cancel_runs :many
-- Cancel run :run_id (and, when :cascade, every descendant): pending runs become cancelled at once;
-- running ones get cancel_requested and their worker is told through NOTIFY.
WITH RECURSIVE target AS (
    SELECT id, root_run_id FROM asyncjobs.runs WHERE id = :run_id
    UNION
    SELECT r.id, r.root_run_id
      FROM asyncjobs.runs r JOIN target t ON r.parent_run_id = t.id AND r.root_run_id = t.root_run_id
     WHERE :cascade
),
locked AS (
    SELECT r.id, r.status FROM asyncjobs.runs r JOIN target USING (id)
     WHERE r.status IN ('pending', 'running')
     ORDER BY r.id FOR UPDATE
),
cancelled AS (
    UPDATE asyncjobs.runs r
       SET status = CASE WHEN l.status = 'pending' THEN 'cancelled'::asyncjobs.run_status
                         ELSE r.status END,
           finished_at = CASE WHEN l.status = 'pending' THEN coalesce(:now, now())
                              ELSE r.finished_at END,
           cancel_requested = true
      FROM locked l WHERE r.id = l.id
    RETURNING r.id, r.root_run_id, r.status
),
events AS (
    INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
    SELECT id, root_run_id, CASE WHEN status = 'cancelled' THEN 'cancelled'
                                 ELSE 'cancel_requested' END, '{}'
      FROM cancelled
),
notified AS (
    SELECT asyncjobs.notify(NULL, array_agg(id) FILTER (WHERE status = 'cancelled'),
                            array_agg(id) FILTER (WHERE status = 'running'))
      FROM cancelled HAVING count(*) > 0
)
SELECT c.id, c.status FROM cancelled c LEFT JOIN notified ON true;

-- name: add_events :many
-- Progress and log events from running jobs, fenced like completions. Progress also updates
-- the run row so that lists show it without reading events.
WITH input AS (
    SELECT * FROM unnest(:run_ids::bigint[], :attempts::integer[], :kinds::text[], :data::jsonb[])
           WITH ORDINALITY AS u(run_id, attempt, kind, data, ord)
),
owned AS (
    SELECT i.*, r.root_run_id FROM input i
      JOIN asyncjobs.runs r ON r.id = i.run_id AND r.attempt = i.attempt AND r.worker_id = :worker
                            AND r.lease_expires_at IS NOT NULL  -- running, ours (see top)
     WHERE r.id = ANY (:run_ids::bigint[])
),
progressed AS (
    UPDATE asyncjobs.runs r
       SET progress = (p.data ->> 'progress')::real,
           status_message = coalesce(p.data ->> 'message', r.status_message)
      FROM (SELECT DISTINCT ON (run_id) run_id, attempt, data FROM owned
             WHERE kind = 'progress' ORDER BY run_id, ord DESC) p
     -- re-checked after the row lock: a completion that won the race keeps its progress
     WHERE r.id = ANY (:run_ids::bigint[]) AND r.id = p.run_id AND r.attempt = p.attempt
       AND r.worker_id = :worker AND r.lease_expires_at IS NOT NULL
),
inserted AS (
    INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
    SELECT run_id, root_run_id, kind, data FROM owned ORDER BY ord
    RETURNING id
),
notified AS (
    SELECT pg_notify('asyncjobs', '{"events":true}') FROM inserted HAVING count(*) > 0
)
SELECT i.id FROM inserted i LEFT JOIN notified ON true;

-- name: register_worker :exec
-- A worker announces itself; the row is its liveness record.
INSERT INTO asyncjobs.workers (id, host, pid, queues, jobs, concurrency, started_at,
                               heartbeat_at)
VALUES (:id, :host, :pid, :queues, :jobs, :concurrency, coalesce(:now, now()),
        coalesce(:now, now()))
ON CONFLICT (id) DO UPDATE SET heartbeat_at = coalesce(:now, now());

-- name: unregister_worker :exec
DELETE FROM asyncjobs.workers WHERE id = :id;

-- name: get_run :one
SELECT * FROM asyncjobs.runs WHERE id = :id;

-- name: terminal_runs :many
-- Which of these runs have finished (for run_async waiters).
SELECT * FROM asyncjobs.runs
 WHERE id = ANY (:ids::bigint[]) AND status NOT IN ('pending', 'running');

-- name: get_runs :many
-- Filtered page of runs, newest first; :before_id is the cursor (return ids below it).
SELECT * FROM asyncjobs.runs
 WHERE (:job::text IS NULL OR job = :job)
   AND (:status::asyncjobs.run_status IS NULL OR status = :status)
   AND (:parent_run_id::bigint IS NULL OR parent_run_id = :parent_run_id)
   AND (:root_run_id::bigint IS NULL OR root_run_id = :root_run_id)
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
   AND (:root_run_id::bigint IS NULL OR root_run_id = :root_run_id)
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

-- name: set_job_enabled :one
UPDATE asyncjobs.jobs SET enabled = :enabled, updated_at = now()
 WHERE name = :name RETURNING name;

-- name: set_queue_enabled :one
UPDATE asyncjobs.queues SET enabled = :enabled, updated_at = now()
 WHERE name = :name RETURNING name;

-- ---------------------------------------------------------------------- schedules, explain,
-- summaries (asyncjobs/scheduler.py, asyncjobs/explain.py, asyncjobs/summary.py)

-- name: rename_schedules :exec
-- A job renamed in code (with its old name as an alias) keeps its stored schedule: the row
-- under the old name :old_names[i] takes the new name :new_names[i], unless a row of the new name exists.
UPDATE asyncjobs.schedules s
   SET name = u.new_name, updated_at = now()
  FROM unnest(:old_names::text[], :new_names::text[]) AS u(old_name, new_name)
 WHERE s.name = u.old_name
   AND NOT EXISTS (SELECT FROM asyncjobs.schedules t WHERE t.name = u.new_name);

-- name: upsert_schedules :exec
-- Store the schedules declared in code (on worker start). A new schedule, or one whose timing
-- (cron, interval, initial delay, time zone) changed, gets anchor_at = now() and a NULL
-- next_fire_at, which the next scheduler pass computes. `enabled` and the fire times of an
-- unchanged timing are kept. Rows are written in name order, so concurrent starters lock
-- them in the same order.
INSERT INTO asyncjobs.schedules AS s
       (name, job, cron, every, initial_delay, timezone, args, misfire, all_nodes, anchor_at)
SELECT u.*, coalesce(:now, now())
  FROM unnest(:names::text[], :jobs::text[], :crons::text[], :intervals::interval[],
              :initial_delays::interval[], :timezones::text[], :args::jsonb[],
              :misfires::text[], :all_nodes::boolean[]) AS u
 ORDER BY 1
ON CONFLICT (name) DO UPDATE
   SET job = excluded.job, cron = excluded.cron, every = excluded.every,
       initial_delay = excluded.initial_delay, timezone = excluded.timezone,
       args = excluded.args, misfire = excluded.misfire, all_nodes = excluded.all_nodes,
       anchor_at = CASE WHEN (s.cron, s.every, s.initial_delay, s.timezone) IS DISTINCT FROM
                             (excluded.cron, excluded.every, excluded.initial_delay,
                              excluded.timezone)
                        THEN coalesce(:now, now()) ELSE s.anchor_at END,
       next_fire_at = CASE WHEN (s.cron, s.every, s.initial_delay, s.timezone) IS DISTINCT FROM
                                (excluded.cron, excluded.every, excluded.initial_delay,
                                 excluded.timezone)
                           THEN NULL ELSE s.next_fire_at END,
       updated_at = coalesce(:now, now())
 WHERE (s.job, s.cron, s.every, s.initial_delay, s.timezone, s.args, s.misfire, s.all_nodes)
       IS DISTINCT FROM (excluded.job, excluded.cron, excluded.every, excluded.initial_delay,
                         excluded.timezone, excluded.args, excluded.misfire, excluded.all_nodes);

-- name: delete_stale_schedules :exec
-- Schedules of these jobs (:jobs, aliases included) that the code no longer declares (:names).
DELETE FROM asyncjobs.schedules WHERE job = ANY (:jobs::text[]) AND name <> ALL (:names::text[]);

-- name: get_schedules :many
-- The stored schedules of jobs :jobs (all when NULL), with whether their job and queue are
-- enabled, and the database clock (one row with only `now` when there is no schedule).
SELECT n.now, s.name, s.job, s.cron, s.every, s.initial_delay, s.timezone, s.args, s.misfire,
       s.all_nodes, s.enabled, s.anchor_at, s.next_fire_at, s.last_fire_at,
       coalesce(j.enabled, true) AS job_enabled, coalesce(q.enabled, true) AS queue_enabled
  FROM (SELECT coalesce(:now, now()) AS now) n
  LEFT JOIN (asyncjobs.schedules s
             LEFT JOIN asyncjobs.jobs j ON j.name = s.job
             LEFT JOIN asyncjobs.queues q ON q.name = j.queue)
         ON :jobs::text[] IS NULL OR s.job = ANY (:jobs::text[])
 ORDER BY s.name;

-- name: set_schedule_enabled :one
-- Enable or disable a schedule. Enabling a disabled one restarts its timing from now: the
-- ticks it missed while disabled were meant to be missed.
UPDATE asyncjobs.schedules
   SET enabled = :enabled,
       anchor_at = CASE WHEN :enabled AND NOT enabled THEN coalesce(:now, now()) ELSE anchor_at END,
       next_fire_at = CASE WHEN :enabled AND NOT enabled THEN NULL ELSE next_fire_at END,
       updated_at = coalesce(:now, now())
 WHERE name = :name
RETURNING name;

-- name: fire_schedule :one
-- Fire ticks :fires of schedule :schedule as runs, in one statement. With :compare
-- (cluster-wide schedules) the schedule row is first moved from the next_fire_at/anchor_at
-- this scheduler read (:expected_next, :expected_anchor) to :next_fire_at: a compare-and-set,
-- so of the schedulers racing for the same tick one advances the schedule and fires, the
-- others change nothing. Without :compare (an all_nodes copy for worker :target_worker)
-- nothing is compared. Either way the unique index runs_schedule_fire_idx is what makes a
-- tick fire at most once (per worker): a second insert of the same tick is skipped.
WITH advanced AS (
    UPDATE asyncjobs.schedules s
       SET next_fire_at = CASE WHEN :compare::boolean THEN :next_fire_at::timestamptz
                               ELSE greatest(s.next_fire_at, :next_fire_at::timestamptz) END,
           last_fire_at = greatest(s.last_fire_at, :last_fire_at::timestamptz),
           updated_at = coalesce(:now, now())
     WHERE s.name = :schedule AND s.enabled
       AND (NOT :compare::boolean
            OR (s.next_fire_at IS NOT DISTINCT FROM :expected_next::timestamptz
                AND s.anchor_at = :expected_anchor::timestamptz))
    RETURNING s.name
),
input AS (
    SELECT nextval('asyncjobs.run_ids') AS id, f.fire_at
      FROM unnest(:fires::timestamptz[]) AS f(fire_at)
     WHERE EXISTS (SELECT FROM advanced)
),
inserted AS (
    INSERT INTO asyncjobs.runs (id, job, queue, args, priority, max_attempts, root_run_id,
                                trigger, schedule, scheduled_at, target_worker, not_after,
                                max_restarts, not_before, created_at)
    SELECT id, :job::text, :queue::text, :args::jsonb, :priority::smallint,
           :max_attempts::integer, id, 'schedule', :schedule, fire_at, :target_worker::text,
           fire_at + :expires::interval, :max_restarts::integer, coalesce(:now, now()),
           coalesce(:now, now())
      FROM input ORDER BY fire_at
    ON CONFLICT (schedule, scheduled_at, target_worker) WHERE schedule IS NOT NULL DO NOTHING
    RETURNING id, root_run_id, job, queue, trigger, schedule, scheduled_at, target_worker
),
created AS (
    INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
    SELECT id, root_run_id, 'pending',
           jsonb_strip_nulls(jsonb_build_object(
               'job', job, 'queue', queue, 'trigger', trigger, 'schedule', schedule,
               'scheduled_at', scheduled_at, 'target_worker', target_worker))
      FROM inserted
),
notified AS (
    SELECT asyncjobs.notify(array_agg(DISTINCT queue)) FROM inserted HAVING count(*) > 0
)
SELECT (SELECT count(*) FROM advanced) > 0 AS advanced,
       coalesce((SELECT array_agg(i.id ORDER BY i.id)
                   FROM inserted i LEFT JOIN notified ON true), '{}') AS run_ids;

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
           AS queue_rate_next
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

-- ---------------------------------------------------------------------- event feed, dashboard,
-- retention (asyncjobs/feed.py, asyncjobs/web/)
--
-- The feed order is (xid, id). An event is final ("ready") once every transaction older than
-- its own has ended: xid < the snapshot's xmin. Nothing can then commit behind it, because an
-- xid below xmin belongs to a transaction that has ended, and the rows of one transaction
-- become visible together. A long transaction anywhere on the cluster holds xmin back, so
-- an event older than the grace period (:grace) is ready too; this keeps "no gap" as long as no
-- asyncjobs statement stays open longer than the grace period (they take milliseconds).

-- name: read_feed :many
-- Events after position (:after_xid, :after_id) in feed order, with `ready` (see above).
SELECT e.id, e.run_id, e.root_run_id, e.at, e.kind, e.data, e.xid,
       e.xid < h.xmin OR e.at < h.old AS ready
  FROM asyncjobs.run_events e
 CROSS JOIN (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
                    now() - :grace::interval AS old) h
 WHERE (e.xid, e.id) > (:after_xid::xid8, :after_id::bigint)
 ORDER BY e.xid, e.id
 LIMIT :limit;

-- name: read_tree_feed :many
-- The same for the events of one trace tree (:root_run_id is the root run id).
SELECT e.id, e.run_id, e.root_run_id, e.at, e.kind, e.data, e.xid,
       e.xid < h.xmin OR e.at < h.old AS ready
  FROM asyncjobs.run_events e
 CROSS JOIN (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
                    now() - :grace::interval AS old) h
 WHERE e.root_run_id = :root_run_id AND (e.xid, e.id) > (:after_xid::xid8, :after_id::bigint)
 ORDER BY e.xid, e.id
 LIMIT :limit;

-- name: feed_position :one
-- The position just before the first visible event that is not ready, or of the last event.
WITH h AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin, now() - :grace::interval AS old
),
first_unready AS (
    SELECT e.xid, e.id FROM asyncjobs.run_events e, h
     WHERE e.xid >= h.xmin AND e.at >= h.old
     ORDER BY e.xid, e.id LIMIT 1
)
SELECT e.xid, e.id FROM asyncjobs.run_events e
 WHERE NOT EXISTS (SELECT FROM first_unready)
    OR (e.xid, e.id) < (SELECT f.xid, f.id FROM first_unready f)
 ORDER BY e.xid DESC, e.id DESC
 LIMIT 1;

-- name: get_runs_by_ids_versioned :many
-- Runs by id with `version`: the id of the run's latest event (a newer state has a larger one).
-- Events are found through their root's index, as in get_events: by run_id alone the planner
-- walked run_events backwards by id (every later event of every tree).
SELECT r.*, coalesce((SELECT max(e.id) FROM asyncjobs.run_events e
                        WHERE e.root_run_id = r.root_run_id AND e.run_id = r.id), 0) AS version
  FROM asyncjobs.runs r
 WHERE r.id = ANY (:ids::bigint[])
 ORDER BY r.id;

-- name: get_tree :many
-- The runs of one trace tree with `version`, oldest first, at most :limit.
SELECT r.*, coalesce((SELECT max(e.id) FROM asyncjobs.run_events e
                        WHERE e.root_run_id = r.root_run_id AND e.run_id = r.id), 0) AS version
  FROM asyncjobs.runs r
 WHERE r.root_run_id = :root_run_id
 ORDER BY r.id
 LIMIT :limit;

-- name: list_queues :many
-- Stored queues with their switch, for the dashboard.
SELECT name, max_concurrency, enabled FROM asyncjobs.queues ORDER BY name;

-- name: list_jobs :many
-- Stored jobs with their switch, for the dashboard.
SELECT name, queue, max_concurrency, enabled FROM asyncjobs.jobs ORDER BY name;

-- name: prune_trees :one
-- Retention: delete up to :max_trees trace trees whose runs all finished before :finished_before, with their
-- events. Candidates come from the finished roots, oldest first; a tree that still has an
-- active run (or one that finished later) is kept whole. Concurrent pruners do not overlap:
-- only the one holding the advisory lock deletes.
WITH locked AS (
    SELECT pg_try_advisory_xact_lock(hashtextextended('asyncjobs:prune', 0)) AS ok
),
roots AS (
    SELECT r.id FROM asyncjobs.runs r
     WHERE r.id = r.root_run_id AND r.finished_at IS NOT NULL AND r.finished_at < :finished_before
       AND (SELECT ok FROM locked)
       AND NOT EXISTS (SELECT FROM asyncjobs.runs c
                        WHERE c.root_run_id = r.id
                          AND (c.finished_at IS NULL OR c.finished_at >= :finished_before))
     ORDER BY r.finished_at
     LIMIT :max_trees
),
gone_events AS (
    DELETE FROM asyncjobs.run_events e USING roots WHERE e.root_run_id = roots.id RETURNING 1
),
gone_runs AS (
    DELETE FROM asyncjobs.runs r USING roots WHERE r.root_run_id = roots.id RETURNING 1
)
SELECT (SELECT count(*) FROM roots) AS trees,
       (SELECT count(*) FROM gone_runs) AS runs,
       (SELECT count(*) FROM gone_events) AS events;

-- name: get_job_definition :one
-- A job as workers stored it, looked up by its name or by one of its aliases (kept in the
-- "x-asyncjobs" member of args_schema), for triggering by name without the job's code. The
-- schema is returned only when the row changed since :known_version (the updated_at of the caller's
-- cached copy), so a cached validator costs one small row per trigger.
SELECT name, queue, updated_at,
       CASE WHEN updated_at IS DISTINCT FROM :known_version::timestamptz THEN args_schema END
         AS args_schema
  FROM asyncjobs.jobs
 WHERE name = :name OR args_schema -> 'x-asyncjobs' -> 'aliases' ? :name
 ORDER BY name = :name DESC
 LIMIT 1;

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

-- ---------------------------------------------------------------------- dashboard views
-- (asyncjobs/activity.py: workers and the last hour's finished runs; the load now is
-- cluster_gauges')

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
