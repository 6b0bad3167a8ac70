-- Named queries, loaded once into asyncjobs.sql.QUERIES with those of the other files of
-- this folder (a name is defined once across them). Each starts with
-- `-- name: <name> :<returns>` (one, many, exec) and a description line.
--
-- Declared queues and jobs: registered at worker start, switched on and off by operators,
-- listed for the dashboard, read back by clients that trigger a job by name (remote.py).

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
                           key_concurrency, rate_limit, rate_period, key_rate_limit,
                           key_rate_period)
SELECT * FROM unnest(:job_names::text[], :job_queues::text[], :job_max_concurrency::integer[],
                     :job_args_schemas::jsonb[], :job_key_fields::text[],
                     :job_key_concurrency::integer[], :job_rate_limits::integer[],
                     :job_rate_periods::interval[], :job_key_rate_limits::integer[],
                     :job_key_rate_periods::interval[])
ON CONFLICT (name) DO UPDATE
   SET queue = excluded.queue, max_concurrency = excluded.max_concurrency,
       args_schema = excluded.args_schema, key_field = excluded.key_field,
       key_concurrency = excluded.key_concurrency, rate_limit = excluded.rate_limit,
       rate_period = excluded.rate_period, key_rate_limit = excluded.key_rate_limit,
       key_rate_period = excluded.key_rate_period, updated_at = now()
 WHERE (jobs.queue, jobs.max_concurrency, jobs.args_schema, jobs.key_field,
        jobs.key_concurrency, jobs.rate_limit, jobs.rate_period, jobs.key_rate_limit,
        jobs.key_rate_period)
       IS DISTINCT FROM (excluded.queue, excluded.max_concurrency, excluded.args_schema,
                         excluded.key_field, excluded.key_concurrency, excluded.rate_limit,
                         excluded.rate_period, excluded.key_rate_limit,
                         excluded.key_rate_period);

-- name: set_job_enabled :one
UPDATE asyncjobs.jobs SET enabled = :enabled, updated_at = now()
 WHERE name = :name RETURNING name;

-- name: set_queue_enabled :one
UPDATE asyncjobs.queues SET enabled = :enabled, updated_at = now()
 WHERE name = :name RETURNING name;

-- name: list_queues :many
-- Stored queues with their switch, for the dashboard.
SELECT name, max_concurrency, enabled FROM asyncjobs.queues ORDER BY name;

-- name: list_jobs :many
-- Stored jobs with their switch, for the dashboard.
SELECT name, queue, max_concurrency, enabled FROM asyncjobs.jobs ORDER BY name;

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
