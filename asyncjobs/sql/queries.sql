-- Named queries, loaded once into asyncjobs.sql.QUERIES. Each starts with
-- `-- name: <name> :<returns>` (one, many, exec) and a description line.
-- Every statement that changes a run writes its run_events rows in the same statement, and
-- sends at most one NOTIFY on channel `asyncjobs` (JSON payload; see asyncjobs/notify.py).

-- name: schema_installed :one
-- Whether asyncjobs was ever installed in this database.
SELECT to_regclass('asyncjobs.schema_version') IS NOT NULL;

-- name: schema_version :one
-- The highest applied schema version.
SELECT max(version) FROM asyncjobs.schema_version;

-- name: register_definitions :exec
-- Upsert queues and jobs with their limits on worker start; `enabled` is left as it is.
WITH queues AS (
    INSERT INTO asyncjobs.queues (name, max_concurrency)
    SELECT * FROM unnest($1::text[], $2::integer[])
    ON CONFLICT (name) DO UPDATE
       SET max_concurrency = excluded.max_concurrency, updated_at = now()
     WHERE queues.max_concurrency IS DISTINCT FROM excluded.max_concurrency
)
INSERT INTO asyncjobs.jobs (name, queue, max_concurrency, args_schema)
SELECT * FROM unnest($3::text[], $4::text[], $5::integer[], $6::jsonb[])
ON CONFLICT (name) DO UPDATE
   SET queue = excluded.queue, max_concurrency = excluded.max_concurrency,
       args_schema = excluded.args_schema, updated_at = now()
 WHERE (jobs.queue, jobs.max_concurrency, jobs.args_schema)
       IS DISTINCT FROM (excluded.queue, excluded.max_concurrency, excluded.args_schema);

-- name: enqueue_runs :many
-- Insert one or many runs in one round trip. A run whose (job, dedup_id) is already held by an
-- active run is skipped (ON CONFLICT on the partial unique index) and not returned; the caller
-- looks up the holder. Ids come from the sequence first so a root run can point at itself.
WITH input AS (
    SELECT nextval('asyncjobs.run_ids') AS id, u.*
      FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::smallint[], $5::timestamptz[],
                  $6::timestamptz[], $7::text[], $8::integer[], $9::bigint[], $10::bigint[],
                  $11::asyncjobs.run_trigger[])
           WITH ORDINALITY AS u(job, queue, args, priority, not_before, not_after, dedup_id,
                                max_attempts, parent_run_id, root_run_id, trigger, ord)
),
inserted AS (
    INSERT INTO asyncjobs.runs (id, job, queue, args, priority, not_before, not_after, dedup_id,
                                max_attempts, parent_run_id, root_run_id, trigger)
    SELECT id, job, queue, args, priority, coalesce(not_before, now()), not_after, dedup_id,
           max_attempts, parent_run_id, coalesce(root_run_id, id), trigger
      FROM input ORDER BY ord
    ON CONFLICT (job, dedup_id) WHERE dedup_id IS NOT NULL AND status IN ('pending', 'running')
    DO NOTHING
    RETURNING id, job, queue, status, trigger, priority, not_before, not_after, dedup_id,
              attempt, max_attempts, parent_run_id, root_run_id, created_at
),
created AS (
    INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
    SELECT id, root_run_id, 'pending',
           jsonb_build_object('job', job, 'queue', queue, 'parent_run_id', parent_run_id,
                              'trigger', trigger)
      FROM inserted
),
notified AS (
    SELECT pg_notify('asyncjobs', json_build_object(
               'queues', array_agg(DISTINCT queue) FILTER (WHERE not_before <= now()))::text)
      FROM inserted HAVING count(*) > 0
)
SELECT i.* FROM inserted i LEFT JOIN notified ON true ORDER BY i.id;

-- name: active_run_ids_by_dedup :many
-- The active runs holding these (job, dedup_id) pairs.
SELECT r.job, r.dedup_id, r.id
  FROM unnest($1::text[], $2::text[]) AS k(job, dedup_id)
  JOIN asyncjobs.runs r ON r.job = k.job AND r.dedup_id = k.dedup_id
 WHERE r.status IN ('pending', 'running');

-- name: claim_runs :many
-- Claim up to $4 runs for worker $1 (see asyncjobs.claim_runs in schema.sql).
SELECT * FROM asyncjobs.claim_runs($1, $2, $3, $4, $5);

-- name: complete_runs :many
-- Finish a batch of runs, fenced: a row changes only while (id, attempt, worker) still owns it
-- and it is still running; the ids returned are the accepted ones. A row with retry_in set goes
-- back to pending for another attempt (trigger 'retry'); `handback` rows return to pending
-- without using up an attempt (graceful shutdown).
WITH input AS (
    SELECT * FROM unnest($2::bigint[], $3::integer[], $4::asyncjobs.run_status[], $5::jsonb[],
                         $6::jsonb[], $7::float8[], $8::boolean[])
           AS u(id, attempt, status, result, error, retry_in, handback)
),
done AS (
    UPDATE asyncjobs.runs r
       SET status = CASE WHEN i.retry_in IS NOT NULL OR i.handback THEN 'pending' ELSE i.status END,
           trigger = CASE WHEN i.retry_in IS NOT NULL THEN 'retry'
                          WHEN i.handback THEN 'restart' ELSE r.trigger END,
           not_before = CASE WHEN i.retry_in IS NOT NULL
                             THEN now() + make_interval(secs => i.retry_in) ELSE r.not_before END,
           max_attempts = r.max_attempts + CASE WHEN i.handback THEN 1 ELSE 0 END,
           finished_at = CASE WHEN i.retry_in IS NOT NULL OR i.handback THEN NULL ELSE now() END,
           worker_id = NULL, lease_expires_at = NULL,
           result = i.result,
           error = i.error,
           errors = CASE WHEN i.error IS NULL THEN r.errors ELSE r.errors || i.error END,
           progress = CASE WHEN i.status = 'succeeded' AND i.retry_in IS NULL AND NOT i.handback
                           THEN 1 ELSE r.progress END
      FROM input i
     WHERE r.id = i.id AND r.attempt = i.attempt AND r.worker_id = $1 AND r.status = 'running'
    RETURNING r.id, r.root_run_id, r.status, r.attempt, r.not_before, r.queue, i.error, i.retry_in
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
    SELECT pg_notify('asyncjobs', json_build_object(
               'done', CASE WHEN count(*) FILTER (WHERE status <> 'pending') <= 400
                            THEN array_agg(id) FILTER (WHERE status <> 'pending') END,
               'many', count(*) FILTER (WHERE status <> 'pending') > 400,
               'queues', array_agg(DISTINCT queue) FILTER (WHERE status = 'pending'))::text)
      FROM done HAVING count(*) > 0
)
SELECT d.id FROM done d LEFT JOIN notified ON true;

-- name: heartbeat :one
-- Mark worker $1 alive and extend the leases it still holds (fenced by attempt). Returns the
-- runs it kept, and those among them whose cancellation was requested.
WITH alive AS (
    UPDATE asyncjobs.workers SET heartbeat_at = now() WHERE id = $1 RETURNING id
),
extended AS (
    UPDATE asyncjobs.runs r
       SET lease_expires_at = now() + $4::interval
      FROM unnest($2::bigint[], $3::integer[]) AS u(id, attempt)
     WHERE r.id = u.id AND r.attempt = u.attempt AND r.worker_id = $1 AND r.status = 'running'
    RETURNING r.id, r.cancel_requested
)
SELECT (SELECT count(*) FROM alive) > 0 AS registered,
       coalesce(array_agg(id), '{}') AS kept,
       coalesce(array_agg(id) FILTER (WHERE cancel_requested), '{}') AS cancel_requested
  FROM extended;

-- name: sweep :one
-- Rescue runs whose lease expired (judged by the database clock): back to pending for another
-- attempt (trigger 'restart'), or failed when no attempt is left, or cancelled when that was
-- asked. Expire pending runs past not_after. SKIP LOCKED makes concurrent sweepers split the
-- work: each run is rescued exactly once. Also drops workers silent for more than $1.
WITH stale AS (
    SELECT id, jsonb_build_object(
               'type', 'LeaseExpired', 'attempt', attempt, 'traceback', '',
               'message', 'worker ' || worker_id || ' stopped heartbeating (lease expired at '
                          || lease_expires_at || ')') AS error
      FROM asyncjobs.runs
     WHERE status = 'running' AND lease_expires_at < now()
     ORDER BY lease_expires_at LIMIT 500
       FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE asyncjobs.runs r
       SET status = CASE WHEN r.cancel_requested THEN 'cancelled'
                         WHEN r.attempt < r.max_attempts THEN 'pending'
                         ELSE 'failed' END::asyncjobs.run_status,
           trigger = 'restart',
           finished_at = CASE WHEN r.cancel_requested OR r.attempt >= r.max_attempts
                              THEN now() END,
           error = stale.error,
           errors = r.errors || stale.error,
           worker_id = NULL, lease_expires_at = NULL
      FROM stale
     WHERE r.id = stale.id
    RETURNING r.id, r.root_run_id, r.status, r.attempt, r.queue, stale.error
),
overdue AS (
    SELECT id FROM asyncjobs.runs
     WHERE status = 'pending' AND not_after IS NOT NULL AND not_after <= now()
     ORDER BY not_after LIMIT 500
       FOR UPDATE SKIP LOCKED
),
expired AS (
    UPDATE asyncjobs.runs r SET status = 'expired', finished_at = now()
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
    DELETE FROM asyncjobs.workers WHERE heartbeat_at < now() - $1::interval RETURNING id
),
notified AS (
    SELECT pg_notify('asyncjobs', json_build_object(
               'done', array_agg(id) FILTER (WHERE status <> 'pending'),
               'queues', array_agg(DISTINCT queue) FILTER (WHERE status = 'pending'))::text)
      FROM changed HAVING count(*) > 0
)
SELECT (SELECT count(*) FROM rescued WHERE status = 'pending') AS restarted,
       (SELECT count(*) FROM rescued WHERE status <> 'pending') AS failed,
       (SELECT count(*) FROM expired) AS expired,
       (SELECT count(*) FROM gone_workers) AS workers_removed,
       (SELECT count(*) FROM notified) AS notified;

-- name: cancel_runs :many
-- Cancel run $1 (and, when $2, every descendant): pending runs become cancelled at once;
-- running ones get cancel_requested and their worker is told through NOTIFY.
WITH RECURSIVE target AS (
    SELECT id, root_run_id FROM asyncjobs.runs WHERE id = $1
    UNION
    SELECT r.id, r.root_run_id
      FROM asyncjobs.runs r JOIN target t ON r.parent_run_id = t.id AND r.root_run_id = t.root_run_id
     WHERE $2
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
           finished_at = CASE WHEN l.status = 'pending' THEN now() ELSE r.finished_at END,
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
    SELECT pg_notify('asyncjobs', json_build_object(
               'done', array_agg(id) FILTER (WHERE status = 'cancelled'),
               'cancel', array_agg(id) FILTER (WHERE status = 'running'))::text)
      FROM cancelled HAVING count(*) > 0
)
SELECT c.id, c.status FROM cancelled c LEFT JOIN notified ON true;

-- name: add_events :many
-- Progress and log events from running jobs, fenced like completions. Progress also updates
-- the run row so that lists show it without reading events.
WITH input AS (
    SELECT * FROM unnest($2::bigint[], $3::integer[], $4::text[], $5::jsonb[])
           WITH ORDINALITY AS u(run_id, attempt, kind, data, ord)
),
owned AS (
    SELECT i.*, r.root_run_id FROM input i
      JOIN asyncjobs.runs r ON r.id = i.run_id AND r.attempt = i.attempt AND r.worker_id = $1
                            AND r.status = 'running'
),
progressed AS (
    UPDATE asyncjobs.runs r
       SET progress = (p.data ->> 'progress')::real,
           status_message = coalesce(p.data ->> 'message', r.status_message)
      FROM (SELECT DISTINCT ON (run_id) run_id, data FROM owned WHERE kind = 'progress'
             ORDER BY run_id, ord DESC) p
     WHERE r.id = p.run_id
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
INSERT INTO asyncjobs.workers (id, host, pid, queues, jobs, concurrency)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: unregister_worker :exec
DELETE FROM asyncjobs.workers WHERE id = $1;

-- name: get_run :one
SELECT * FROM asyncjobs.runs WHERE id = $1;

-- name: get_runs_by_ids :many
SELECT * FROM asyncjobs.runs WHERE id = ANY ($1::bigint[]);

-- name: terminal_runs :many
-- Which of these runs have finished (for run_async waiters).
SELECT * FROM asyncjobs.runs
 WHERE id = ANY ($1::bigint[]) AND status NOT IN ('pending', 'running');

-- name: get_runs :many
-- Filtered page of runs, newest first; $6 is the cursor (an id: return ids below it).
SELECT * FROM asyncjobs.runs
 WHERE ($1::text IS NULL OR job = $1)
   AND ($2::asyncjobs.run_status IS NULL OR status = $2)
   AND ($3::bigint IS NULL OR parent_run_id = $3)
   AND ($4::bigint IS NULL OR root_run_id = $4)
   AND ($5::asyncjobs.run_trigger IS NULL OR trigger = $5)
   AND ($6::bigint IS NULL OR id < $6)
 ORDER BY id DESC
 LIMIT $7;

-- name: get_events :many
-- Events of one run after event id $2.
SELECT * FROM asyncjobs.run_events WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3;

-- name: set_job_enabled :one
UPDATE asyncjobs.jobs SET enabled = $2, updated_at = now() WHERE name = $1 RETURNING name;

-- name: set_queue_enabled :one
UPDATE asyncjobs.queues SET enabled = $2, updated_at = now() WHERE name = $1 RETURNING name;
