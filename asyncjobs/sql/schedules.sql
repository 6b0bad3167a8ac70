-- Named queries, loaded once into asyncjobs.sql.QUERIES with those of the other files of
-- this folder (a name is defined once across them). Each starts with
-- `-- name: <name> :<returns>` (one, many, exec) and a description line.
--
-- Stored schedules and their firing (asyncjobs/scheduler.py).

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
-- :concurrency_key is the key the job's key function computed from :args (NULL: the
-- runs_concurrency_key trigger reads the stored key field, if any).
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
                                max_restarts, not_before, created_at, concurrency_key)
    SELECT id, :job::text, :queue::text, :args::jsonb, :priority::smallint,
           :max_attempts::integer, id, 'schedule', :schedule, fire_at, :target_worker::text,
           fire_at + :expires::interval, :max_restarts::integer, coalesce(:now, now()),
           coalesce(:now, now()), :concurrency_key::text
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
