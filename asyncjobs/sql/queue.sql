-- Named queries, loaded once into asyncjobs.sql.QUERIES with those of the other files of
-- this folder (a name is defined once across them). Each starts with
-- `-- name: <name> :<returns>` (one, many, exec) and a description line.
--
-- The queue: runs in, claimed, heartbeated, completed, swept, cancelled; workers and their
-- events; retention.
--
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

-- name: enqueue_runs :many
-- Insert one or many runs in one round trip. A run whose (job, dedup_id) is already held by an
-- active run, or whose (parent_run_id, step_key) already has a child, is skipped (ON CONFLICT
-- on those partial unique indexes) and not returned; the caller looks up the holder. Ids come
-- from the sequence first so a root run can point at itself. The per-key limit's key is read
-- from the arguments here, by the field the caller's code names (so a client that has the
-- job's code gets keys before any worker registered the job), or given whole by the caller
-- (a run's concurrency_key, computed by the job's key function); without either the
-- runs_concurrency_key trigger reads the job's stored key field.
-- :runs is one JSON array of runs, each an array of its fields in the order below (the
-- backend's _ENQUEUE_FIELDS): one text parameter, which the driver sends as it is, where an
-- array per column made it inspect every element in Python (most of the client's time).
WITH input AS (
    SELECT nextval('asyncjobs.run_ids') AS id, r ->> 0 AS job, r ->> 1 AS queue,
           (r ->> 2)::jsonb AS args, (r ->> 3)::smallint AS priority,
           (r ->> 4)::timestamptz AS not_before, (r ->> 5)::timestamptz AS not_after,
           r ->> 6 AS dedup_id, (r ->> 7)::integer AS max_attempts,
           (r ->> 8)::bigint AS parent_run_id, (r ->> 9)::bigint AS root_run_id,
           (r ->> 10)::asyncjobs.run_trigger AS trigger, (r ->> 11)::integer AS max_restarts,
           (r ->> 12)::jsonb AS trace_context, r ->> 13 AS step_key, r ->> 14 AS key_field,
           r ->> 15 AS concurrency_key, ord
      FROM jsonb_array_elements(:runs::jsonb) WITH ORDINALITY AS u(r, ord)
),
inserted AS (
    INSERT INTO asyncjobs.runs (id, job, queue, args, priority, not_before, not_after, dedup_id,
                                max_attempts, parent_run_id, root_run_id, trigger, max_restarts,
                                trace_context, step_key, concurrency_key, created_at)
    SELECT id, job, queue, args, priority, coalesce(not_before, :now, now()), not_after,
           dedup_id, max_attempts, parent_run_id, coalesce(root_run_id, id), trigger,
           max_restarts, trace_context, step_key,
           coalesce(concurrency_key, left(args ->> key_field, 200)),
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
    -- :origin: this process woke its own claimers already (it skips the echo)
    SELECT asyncjobs.notify(array_agg(DISTINCT queue)
                                FILTER (WHERE not_before <= coalesce(:now, now())),
                            p_origin => :origin::text)
      FROM inserted HAVING count(*) > 0
)
-- only what the caller pairs its runs with: every column more is decoded by the driver, per row
SELECT i.id, i.job, i.dedup_id, i.parent_run_id, i.step_key
  FROM inserted i LEFT JOIN notified ON true ORDER BY i.id;

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
              i.retry_in, i.result
),
-- queues where a finished run freed a slot under a limit: their workers may claim again now
freed AS (
    SELECT DISTINCT d.queue FROM (SELECT DISTINCT queue, job FROM done) d
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
                            array_agg(id) FILTER (WHERE status <> 'pending'), NULL,
                            -- a waiting run_async then needs no query
                            jsonb_object_agg(id, coalesce(result, 'null'))
                                FILTER (WHERE status = 'succeeded'))
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

-- name: terminal_runs :many
-- Which of these runs have finished (for run_async waiters).
SELECT * FROM asyncjobs.runs
 WHERE id = ANY (:ids::bigint[]) AND status NOT IN ('pending', 'running');

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
                        WHERE c.root_run_id = r.id AND c.root_run_id <> c.id  -- descendants
                          AND (c.finished_at IS NULL OR c.finished_at >= :finished_before))
     ORDER BY r.finished_at
     LIMIT :max_trees
),
gone_events AS (
    DELETE FROM asyncjobs.run_events e USING roots WHERE e.root_run_id = roots.id RETURNING 1
),
gone_runs AS (
    -- the roots by the primary key, their descendants through runs_root_idx
    DELETE FROM asyncjobs.runs r USING roots
     WHERE r.id = roots.id OR (r.root_run_id = roots.id AND r.root_run_id <> r.id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM roots) AS trees,
       (SELECT count(*) FROM gone_runs) AS runs,
       (SELECT count(*) FROM gone_events) AS events;
