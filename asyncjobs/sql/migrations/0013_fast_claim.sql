-- compatible-with-code: 4
-- (The claim keeps its signatures and results. Older code keeps working; its live feed does
-- not wait for the WAL flush (second part below), so while it serves a dashboard during a
-- rolling deploy, a server crash in that window could let a browser skip events written
-- after the recovery; queue and runs are unaffected.)
--
-- Two changes to the claim (issue 12).
--
-- 1. Its UPDATE reaches the chosen runs by primary-key lookups. It joined them as
-- `FROM chosen WHERE r.id = chosen.id`; under the function's generic plan the planner does
-- not know how many runs are chosen (it guesses thousands) and joins them by a merge join
-- over runs_pkey, reading the index from its start up to the chosen ids: every claim
-- cost as much as the table is long (a claim of one run at 17,000 runs: 6,222 index pages,
-- 4.3 ms; the claims of a worker that drains a 10,000-run queue grew from 0.4 to 4 ms).
-- `r.id = ANY (ARRAY(SELECT ... FROM chosen))` is an index condition whatever the estimate:
-- one lookup per chosen run (0.39 ms for that claim).
--
-- 2. The fast path (no limit, no rate, nothing disabled) commits asynchronously
-- (`synchronous_commit = off` for its transaction). Its WAL flush was one of the
-- two or three in series between a trigger and the job's start, and the one the worker waits
-- on before every batch: measured against the synchronous claim, alternated, trigger->start
-- p50 1.93-2.10 ms against 2.10-2.54 ms, process c=10 8,571-9,282 against 5,845-8,071
-- jobs/s (3 rounds each).
--
-- What it costs: a claim can be lost in a server crash (not in a worker crash), between its
-- commit and the next WAL flush (any synchronous commit after it, or the WAL writer within
-- 3 x wal_writer_delay). The run is then pending again and is claimed again: at-least-once,
-- as after any crash. Its fencing holds: a completion or heartbeat of the lost attempt names a
-- worker and attempt the recovered row does not have. The claims of limited or rate-limited
-- jobs stay synchronous, so a crash never loses the record of a start a limit counts.
--
-- What keeps the live feed exact: a lost transaction's xid and event ids can be taken again
-- after recovery, so an event must never be delivered before it is durable. The feed's reads
-- (read_feed, read_tree_feed, feed_position) return the WAL insert position they read at,
-- and the backend hands their events out only once the WAL is flushed past it.
CREATE OR REPLACE FUNCTION asyncjobs.claim_runs(
    p_worker text, p_queues text[], p_jobs text[], p_capacity integer, p_lease interval,
    p_wake boolean, p_now timestamptz
) RETURNS SETOF asyncjobs.runs
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    SET plan_cache_mode = force_generic_plan
    SET jit = off
    AS $$
DECLARE
    limited_queues text[];
    limited_jobs   text[];
    runnable_jobs  text[];
    -- (job, key) pairs at their key limit or out of starts, as two parallel arrays
    full_jobs      text[] := '{}';
    full_keys      text[] := '{}';
    -- rate scopes of this claim ('job:x', 'queue:y'): their limit and period
    scopes         text[];
    scope_limits   integer[];
    scope_periods  interval[];
    -- free starts per scope now, and when a full one allows the next
    scope_room     integer[];
    next_start     timestamptz;
    -- per-key rate limits: their scopes ('key:<job>') and periods
    key_scopes     text[] := '{}';
    key_periods    interval[];
    t              timestamptz;
    wake           asyncjobs.runs;
    any_disabled   boolean;
BEGIN
    SELECT (SELECT coalesce(array_agg(name), '{}') FROM asyncjobs.queues
             WHERE name = ANY (p_queues)
               AND (max_concurrency IS NOT NULL OR rate_limit IS NOT NULL)),
           (SELECT coalesce(array_agg(name), '{}') FROM asyncjobs.jobs
             WHERE name = ANY (p_jobs)
               AND (max_concurrency IS NOT NULL OR key_concurrency IS NOT NULL
                    OR rate_limit IS NOT NULL OR key_rate_limit IS NOT NULL)),
           EXISTS (SELECT FROM asyncjobs.queues WHERE name = ANY (p_queues) AND NOT enabled)
           OR EXISTS (SELECT FROM asyncjobs.jobs WHERE name = ANY (p_jobs) AND NOT enabled)
      INTO limited_queues, limited_jobs, any_disabled;

    -- The fast path: no queue or job of this claim is limited or disabled, so there is no
    -- lock to take, no start to log and nothing to count: the statement above decided it,
    -- and the claim query runs alone (the full path below runs six to ten statements first).
    IF cardinality(limited_queues) = 0 AND cardinality(limited_jobs) = 0 AND NOT any_disabled
    THEN
        t := coalesce(p_now, clock_timestamp());
        -- Committed without waiting for the WAL flush (see migrations/0013_fast_claim.sql):
        -- a claim lost in a server crash leaves its run pending, to be claimed again.
        PERFORM set_config('synchronous_commit', 'off', true);
        RETURN QUERY
        WITH
        candidates AS MATERIALIZED (
            SELECT c.id, c.priority
              FROM unnest(p_queues) AS wq(name)
             CROSS JOIN LATERAL (
                   SELECT r.id, r.priority
                     FROM asyncjobs.runs r
                    WHERE r.status = 'pending'
                      AND r.queue = wq.name
                      AND r.job = ANY (p_jobs)
                      AND (r.target_worker IS NULL OR r.target_worker = p_worker)
                      AND r.not_before <= coalesce(p_now, now())
                      AND (r.not_after IS NULL OR r.not_after > coalesce(p_now, now()))
                    ORDER BY r.priority DESC, r.id
                    LIMIT p_capacity
                      FOR UPDATE SKIP LOCKED
             ) c
        ),
        chosen AS (
            SELECT c.id FROM candidates c ORDER BY c.priority DESC, c.id LIMIT p_capacity
        ),
        claimed AS (
            UPDATE asyncjobs.runs r
               SET status = 'running', attempt = r.attempt + 1, started_at = t,
                   worker_id = p_worker, lease_expires_at = t + p_lease
             WHERE r.id = ANY (ARRAY(SELECT chosen.id FROM chosen))  -- by id: see 0013
            RETURNING r.*
        ),
        started AS (
            INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
            SELECT id, root_run_id, 'running',
                   jsonb_build_object('attempt', attempt, 'worker', p_worker)
              FROM claimed
        )
        SELECT * FROM claimed ORDER BY priority DESC, id;
        RETURN;
    END IF;

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

    -- Per-key rate limits: the same log, one row per start with its key, pruned here (only
    -- the starts that left the window since the last claim are read). Which keys are used
    -- up is read from rate_full_keys, written by the claims that used them up, not counted
    -- over every key's starts: that count read the job's whole window (5,000 starts: 5,474
    -- buffers per claim); the keys the scan meets are counted exactly below.
    SELECT coalesce(array_agg('key:' || name), '{}'), coalesce(array_agg(key_rate_period), '{}')
      INTO key_scopes, key_periods
      FROM asyncjobs.jobs WHERE name = ANY (limited_jobs) AND key_rate_limit IS NOT NULL;
    IF cardinality(key_scopes) > 0 THEN
        -- one statement per limit, so that the end of its window bounds the index range (a
        -- join with the periods read every start of the window, 5,120 buffers for 5,000)
        FOR i IN 1 .. cardinality(key_scopes) LOOP
            DELETE FROM asyncjobs.rate_starts s
             WHERE s.scope = key_scopes[i] AND s.at <= t - key_periods[i];
        END LOOP;
        DELETE FROM asyncjobs.rate_full_keys f
         WHERE f.scope = ANY (key_scopes) AND f.until <= t;
        -- used-up keys are skipped by the scan, as keys at their running limit are
        SELECT full_jobs || coalesce(array_agg(substr(f.scope, 5)), '{}'),
               full_keys || coalesce(array_agg(f.key), '{}'), least(next_start, min(f.until))
          INTO full_jobs, full_keys, next_start
          FROM asyncjobs.rate_full_keys f WHERE f.scope = ANY (key_scopes);
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
    SELECT full_jobs || coalesce(array_agg(k.job), '{}'),
           full_keys || coalesce(array_agg(k.concurrency_key), '{}')
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
    -- starts in the window (pruned above) of the candidates' rate-limited keys, and the oldest
    key_starts AS (
        SELECT k.job, k.concurrency_key, j.key_rate_limit AS lim, j.key_rate_period AS period,
               s.starts, s.oldest
          FROM (SELECT DISTINCT c.job, c.concurrency_key FROM candidates c
                 WHERE c.concurrency_key IS NOT NULL) k
          JOIN asyncjobs.jobs j ON j.name = k.job AND j.key_rate_limit IS NOT NULL
         CROSS JOIN LATERAL (
               SELECT count(*)::integer AS starts, min(rs.at) AS oldest
                 FROM asyncjobs.rate_starts rs
                WHERE rs.scope = 'key:' || k.job AND rs.key = k.concurrency_key) s
    ),
    -- free slots per (job, key) among the candidates' keys: running slots and, under a
    -- per-key rate limit, starts left in the window
    key_room AS (
        SELECT k.job, k.concurrency_key,
               least(
                   CASE WHEN j.key_concurrency IS NOT NULL THEN
                       greatest(0, j.key_concurrency - (
                           SELECT count(*) FROM asyncjobs.runs r
                            WHERE r.status = 'running' AND r.job = k.job
                              AND r.concurrency_key = k.concurrency_key))::integer
                   END,
                   -- (greatest() skips NULLs: a key without a rate limit has no ks row)
                   CASE WHEN ks.lim IS NOT NULL THEN greatest(0, ks.lim - ks.starts) END
               ) AS room
          FROM (SELECT DISTINCT c.job, c.concurrency_key FROM candidates c
                 WHERE c.concurrency_key IS NOT NULL) k
          JOIN asyncjobs.jobs j ON j.name = k.job
               AND (j.key_concurrency IS NOT NULL OR j.key_rate_limit IS NOT NULL)
          LEFT JOIN key_starts ks ON ks.job = k.job AND ks.concurrency_key = k.concurrency_key
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
         WHERE r.id = ANY (ARRAY(SELECT chosen.id FROM chosen))  -- by id: see 0013
        RETURNING r.*
    ),
    started AS (
        INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
        SELECT id, root_run_id, 'running', jsonb_build_object('attempt', attempt, 'worker', p_worker)
          FROM claimed
    ),
    counted AS (
        INSERT INTO asyncjobs.rate_starts (scope, at, key)
        SELECT s.scope, t, s.key
          FROM claimed c
         CROSS JOIN LATERAL (VALUES ('job:' || c.job, NULL::text), ('queue:' || c.queue, NULL),
                                    ('key:' || c.job, c.concurrency_key)) AS s(scope, key)
         WHERE s.scope = ANY (scopes) OR (s.key IS NOT NULL AND s.scope = ANY (key_scopes))
    ),
    -- keys this claim used up (or found used up, e.g. under a lowered limit) are skipped by
    -- the next claims' scans until their oldest start in the window leaves it
    used_up AS (
        INSERT INTO asyncjobs.rate_full_keys (scope, key, until)
        SELECT 'key:' || ks.job, ks.concurrency_key, coalesce(ks.oldest, t) + ks.period
          FROM key_starts ks
          LEFT JOIN (SELECT c.job, c.concurrency_key, count(*) AS n FROM claimed c
                      GROUP BY c.job, c.concurrency_key) n
                 ON n.job = ks.job AND n.concurrency_key = ks.concurrency_key
         WHERE ks.starts + coalesce(n.n, 0) >= ks.lim
    )
    SELECT * FROM claimed ORDER BY priority DESC, id;

    IF p_wake AND next_start IS NOT NULL THEN
        wake.not_before := next_start;
        wake.created_at := t;
        RETURN NEXT wake;
    END IF;
END
$$;

INSERT INTO asyncjobs.schema_version (version, name) VALUES (13, 'fast_claim');
