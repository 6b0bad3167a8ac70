-- compatible-with-code: 4
-- (Code of versions 4 to 6 keeps working: its claim functions keep their signatures and call
-- the new one with a NULL time.)
--
-- Time control: the claim takes the time to claim at, p_now (NULL: the database clock), as
-- every other time-dependent statement does (`coalesce(:now, now())` in queries.sql), so a
-- test clock (asyncjobs.testing.TestClock) moves delays, deadlines, leases and schedules
-- without waiting. With p_now set, the rate limits count their windows up to p_now instead of
-- clock_timestamp() after the locks (see version 6): a test clock is one process's clock, so
-- there is no lock wait to be early by.
CREATE FUNCTION asyncjobs.claim_runs(
    p_worker text, p_queues text[], p_jobs text[], p_capacity integer, p_lease interval,
    p_wake boolean, p_now timestamptz
) RETURNS SETOF asyncjobs.runs
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    limited_queues text[];
    limited_jobs   text[];
    runnable_jobs  text[];
    -- (job, key) pairs at their key limit, as two parallel arrays
    full_jobs      text[];
    full_keys      text[];
    -- rate scopes of this claim ('job:x', 'queue:y'): their limit and period
    scopes         text[];
    scope_limits   integer[];
    scope_periods  interval[];
    -- free starts per scope now, and when a full one allows the next
    scope_room     integer[];
    next_start     timestamptz;
    t              timestamptz;
    wake           asyncjobs.runs;
BEGIN
    SELECT coalesce(array_agg(name), '{}') INTO limited_queues
      FROM asyncjobs.queues
     WHERE name = ANY (p_queues) AND (max_concurrency IS NOT NULL OR rate_limit IS NOT NULL);
    SELECT coalesce(array_agg(name), '{}') INTO limited_jobs
      FROM asyncjobs.jobs
     WHERE name = ANY (p_jobs)
       AND (max_concurrency IS NOT NULL OR key_concurrency IS NOT NULL OR rate_limit IS NOT NULL);

    PERFORM pg_advisory_xact_lock(key)
       FROM (SELECT asyncjobs.limit_lock_key('queue', q) AS key FROM unnest(limited_queues) q
             UNION
             SELECT asyncjobs.limit_lock_key('job', j) FROM unnest(limited_jobs) j
             ORDER BY key) AS keys;
    t := coalesce(p_now, clock_timestamp());

    SELECT coalesce(array_agg(s.scope), '{}'), coalesce(array_agg(s.lim), '{}'),
           coalesce(array_agg(s.period), '{}')
      INTO scopes, scope_limits, scope_periods
      FROM (SELECT 'job:' || name AS scope, rate_limit AS lim, rate_period AS period
              FROM asyncjobs.jobs WHERE name = ANY (limited_jobs) AND rate_limit IS NOT NULL
            UNION ALL
            SELECT 'queue:' || name, rate_limit, rate_period
              FROM asyncjobs.queues WHERE name = ANY (limited_queues) AND rate_limit IS NOT NULL
           ) s;
    IF cardinality(scopes) > 0 THEN
        -- starts that left their window count no more (keeps the log at N rows per limit)
        DELETE FROM asyncjobs.rate_starts s
         USING unnest(scopes, scope_periods) AS l(scope, period)
         WHERE s.scope = l.scope AND s.at <= t - l.period;
        SELECT array_agg(greatest(0, l.lim - (SELECT count(*) FROM asyncjobs.rate_starts s
                                               WHERE s.scope = l.scope))::integer ORDER BY l.ord),
               min((SELECT min(s.at) FROM asyncjobs.rate_starts s WHERE s.scope = l.scope)
                   + l.period)
                   FILTER (WHERE (SELECT count(*) FROM asyncjobs.rate_starts s
                                   WHERE s.scope = l.scope) >= l.lim)
          INTO scope_room, next_start
          FROM unnest(scopes, scope_limits, scope_periods) WITH ORDINALITY
               AS l(scope, lim, period, ord);
    ELSE
        scope_room := '{}';
    END IF;

    -- Jobs that may start now (not disabled, not at their limit or rate), worked out before
    -- the scan: a `job <> ALL (...)` filter inside it made the planner expect one matching
    -- row and read the whole backlog instead of walking runs_pending_idx to the LIMIT.
    SELECT coalesce(array_agg(name), '{}') INTO runnable_jobs FROM (
        SELECT unnest(p_jobs) AS name
        EXCEPT
        SELECT name FROM asyncjobs.jobs WHERE name = ANY (p_jobs) AND NOT enabled
        EXCEPT
        SELECT j.name FROM asyncjobs.jobs j
         WHERE j.name = ANY (limited_jobs) AND j.max_concurrency IS NOT NULL
           AND j.max_concurrency <= (SELECT count(*) FROM asyncjobs.runs r
                                      WHERE r.status = 'running' AND r.job = j.name)
        EXCEPT
        SELECT substr(r.scope, 5) FROM unnest(scopes, scope_room) AS r(scope, room)
         WHERE r.scope LIKE 'job:%' AND r.room = 0
    ) runnable;

    -- Keys at their limit are skipped by the scan, so a hot key's backlog never fills the
    -- scan's LIMIT and holds the other keys back (no head-of-line blocking).
    SELECT coalesce(array_agg(k.job), '{}'), coalesce(array_agg(k.concurrency_key), '{}')
      INTO full_jobs, full_keys
      FROM (SELECT r.job, r.concurrency_key, count(*) AS running
              FROM asyncjobs.runs r
             WHERE r.status = 'running' AND r.job = ANY (limited_jobs)
               AND r.concurrency_key IS NOT NULL
             GROUP BY r.job, r.concurrency_key) k
      JOIN asyncjobs.jobs j ON j.name = k.job
     WHERE k.running >= j.key_concurrency;

    RETURN QUERY
    WITH
    rate_room AS (
        SELECT r.scope, r.room FROM unnest(scopes, scope_room) AS r(scope, room)
    ),
    -- free slots per queue this worker serves (its own capacity when unlimited or disabled=0)
    queue_room AS (
        SELECT wq.name AS queue,
               least(
                   CASE WHEN NOT coalesce(q.enabled, true) THEN 0
                        WHEN q.max_concurrency IS NULL THEN p_capacity
                        ELSE greatest(0, q.max_concurrency - (
                            SELECT count(*) FROM asyncjobs.runs r
                             WHERE r.status = 'running' AND r.queue = wq.name))::integer
                   END,
                   (SELECT rr.room FROM rate_room rr WHERE rr.scope = 'queue:' || wq.name)
               ) AS room
          FROM unnest(p_queues) AS wq(name)
          LEFT JOIN asyncjobs.queues q ON q.name = wq.name
    ),
    -- free slots per limited job, counted over all queues (least() skips a missing limit)
    job_room AS (
        SELECT j.name AS job,
               least(
                   CASE WHEN j.max_concurrency IS NOT NULL THEN
                       greatest(0, j.max_concurrency - (
                           SELECT count(*) FROM asyncjobs.runs r
                            WHERE r.status = 'running' AND r.job = j.name))::integer
                   END,
                   (SELECT rr.room FROM rate_room rr WHERE rr.scope = 'job:' || j.name)
               ) AS room
          FROM asyncjobs.jobs j
         WHERE j.name = ANY (limited_jobs)
           AND (j.max_concurrency IS NOT NULL OR j.rate_limit IS NOT NULL)
    ),
    -- MATERIALIZED: an optimization fence, so the planner cannot re-run the LIMITed,
    -- row-locking scan and lock or update more rows than LIMIT (Oban's reason, too)
    candidates AS MATERIALIZED (
        SELECT c.id, c.job, c.queue, c.priority, c.concurrency_key
          FROM queue_room qr
         CROSS JOIN LATERAL (
               SELECT r.id, r.job, r.queue, r.priority, r.concurrency_key
                 FROM asyncjobs.runs r
                WHERE r.status = 'pending'
                  AND r.queue = qr.queue
                  AND r.job = ANY (runnable_jobs)
                  -- an all_nodes schedule's copy is for one worker only
                  AND (r.target_worker IS NULL OR r.target_worker = p_worker)
                  AND r.not_before <= coalesce(p_now, now())
                  AND (r.not_after IS NULL OR r.not_after > coalesce(p_now, now()))
                  AND NOT EXISTS (SELECT 1 FROM unnest(full_jobs, full_keys) f(job, key)
                                   WHERE f.job = r.job AND f.key = r.concurrency_key)
                ORDER BY r.priority DESC, r.id
                LIMIT least(qr.room, p_capacity)
                  FOR UPDATE SKIP LOCKED
         ) c
         WHERE qr.room > 0
    ),
    -- free slots per (job, key) among the candidates' keys
    key_room AS (
        SELECT k.job, k.concurrency_key,
               greatest(0, j.key_concurrency - (
                   SELECT count(*) FROM asyncjobs.runs r
                    WHERE r.status = 'running' AND r.job = k.job
                      AND r.concurrency_key = k.concurrency_key))::integer AS room
          FROM (SELECT DISTINCT c.job, c.concurrency_key FROM candidates c
                 WHERE c.concurrency_key IS NOT NULL) k
          JOIN asyncjobs.jobs j ON j.name = k.job AND j.key_concurrency IS NOT NULL
    ),
    -- a limited job (and a limited key) takes at most its free slots, best runs first
    chosen AS (
        SELECT ranked.id FROM (
            SELECT c.id, c.priority, jr.room, kr.room AS key_room,
                   row_number() OVER (PARTITION BY c.job ORDER BY c.priority DESC, c.id) AS rank,
                   row_number() OVER (PARTITION BY c.job, c.concurrency_key
                                      ORDER BY c.priority DESC, c.id) AS key_rank
              FROM candidates c
              LEFT JOIN job_room jr ON jr.job = c.job
              LEFT JOIN key_room kr ON kr.job = c.job AND kr.concurrency_key = c.concurrency_key
        ) ranked
         WHERE (ranked.room IS NULL OR ranked.rank <= ranked.room)
           AND (ranked.key_room IS NULL OR ranked.key_rank <= ranked.key_room)
         ORDER BY ranked.priority DESC, ranked.id
         LIMIT p_capacity
    ),
    claimed AS (
        UPDATE asyncjobs.runs r
           SET status = 'running', attempt = r.attempt + 1, started_at = t,
               worker_id = p_worker, lease_expires_at = t + p_lease
          FROM chosen WHERE r.id = chosen.id
        RETURNING r.*
    ),
    started AS (
        INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
        SELECT id, root_run_id, 'running', jsonb_build_object('attempt', attempt, 'worker', p_worker)
          FROM claimed
    ),
    counted AS (
        INSERT INTO asyncjobs.rate_starts (scope, at)
        SELECT s.scope, t
          FROM claimed c
         CROSS JOIN LATERAL (VALUES ('job:' || c.job), ('queue:' || c.queue)) AS s(scope)
         WHERE s.scope = ANY (scopes)
    )
    SELECT * FROM claimed ORDER BY priority DESC, id;

    IF p_wake AND next_start IS NOT NULL THEN
        wake.not_before := next_start;
        wake.created_at := t;
        RETURN NEXT wake;
    END IF;
END
$$;


-- The planner settings of version 1 (see there), on the function that does the work.
ALTER FUNCTION asyncjobs.claim_runs(text, text[], text[], integer, interval, boolean, timestamptz)
    SET enable_seqscan = off;
ALTER FUNCTION asyncjobs.claim_runs(text, text[], text[], integer, interval, boolean, timestamptz)
    SET enable_bitmapscan = off;
ALTER FUNCTION asyncjobs.claim_runs(text, text[], text[], integer, interval, boolean, timestamptz)
    SET plan_cache_mode = force_generic_plan;

-- The claim of code of versions 5 and 6 (rolling deploys): the database clock.
CREATE OR REPLACE FUNCTION asyncjobs.claim_runs(
    p_worker text, p_queues text[], p_jobs text[], p_capacity integer, p_lease interval,
    p_wake boolean
) RETURNS SETOF asyncjobs.runs
    LANGUAGE sql VOLATILE
    AS $$ SELECT * FROM asyncjobs.claim_runs(p_worker, p_queues, p_jobs, p_capacity, p_lease,
                                             p_wake, NULL) $$;

INSERT INTO asyncjobs.schema_version (version, name) VALUES (8, 'time_control');
