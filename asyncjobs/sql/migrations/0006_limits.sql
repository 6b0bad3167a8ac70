-- compatible-with-code: 4
-- (Code of versions 4 and 5 keeps working: its claim function keeps its signature and enforces the
-- new limits too, keys are filled in by a trigger on every insert path, and an older
-- client's children only lack step keys, i.e. are not reused on a parent's retry.)
--
-- Durable children, per-key concurrency limits and rate limits.
--
-- A child triggered from inside a job is identified by (parent_run_id, step_key); the
-- database refuses a second run for the same step, so a retried or restarted parent gets the
-- child of its earlier attempt back instead of triggering it again.
ALTER TABLE asyncjobs.runs
    ADD COLUMN step_key        text CHECK (length(step_key) BETWEEN 1 AND 200),
    ADD COLUMN concurrency_key text CHECK (length(concurrency_key) <= 200),
    ADD CONSTRAINT runs_step_has_parent CHECK (step_key IS NULL OR parent_run_id IS NOT NULL);
CREATE UNIQUE INDEX runs_step_idx ON asyncjobs.runs (parent_run_id, step_key)
    WHERE step_key IS NOT NULL;
-- Claims count running runs per (job, key) under the job's advisory lock.
CREATE INDEX runs_running_key_idx ON asyncjobs.runs (job, concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

-- A job's per-key limit: at most `key_concurrency` runs per key run at once. The key is the
-- argument named `key_field`, read from the stored arguments by the database when the run is
-- inserted (so triggers by name, schedules and older clients get the same key), or, for a
-- key computed by a function (`key_field` NULL), given by the triggering client.
ALTER TABLE asyncjobs.jobs
    ADD COLUMN key_field       text CHECK (key_field <> '' AND length(key_field) <= 200),
    ADD COLUMN key_concurrency integer CHECK (key_concurrency > 0),
    ADD CONSTRAINT jobs_key_limit_check CHECK (key_field IS NULL OR key_concurrency IS NOT NULL);

-- Rate limits: at most `rate_limit` starts per `rate_period` of a job or a queue, on the
-- database clock. A sliding window over a log of recent starts, not a token bucket: a bucket
-- lets a full bucket's burst follow the starts that emptied it, so some window of one period
-- could hold up to twice the limit; the log makes "no window of the period holds more than
-- N starts" exact. The log is written and pruned by claims only, under the limit's advisory
-- lock, and holds at most N rows per limit after pruning.
ALTER TABLE asyncjobs.jobs
    ADD COLUMN rate_limit  integer CHECK (rate_limit > 0),
    ADD COLUMN rate_period interval CHECK (rate_period > interval '0'),
    ADD CONSTRAINT jobs_rate_check CHECK ((rate_limit IS NULL) = (rate_period IS NULL));
ALTER TABLE asyncjobs.queues
    ADD COLUMN rate_limit  integer CHECK (rate_limit > 0),
    ADD COLUMN rate_period interval CHECK (rate_period > interval '0'),
    ADD CONSTRAINT queues_rate_check CHECK ((rate_limit IS NULL) = (rate_period IS NULL));
CREATE TABLE asyncjobs.rate_starts (
    -- 'job:<name>' or 'queue:<name>'
    scope text NOT NULL,
    at    timestamptz NOT NULL
);
CREATE INDEX rate_starts_idx ON asyncjobs.rate_starts (scope, at);

-- The claim, now also under per-key limits and rate limits (see the claim_runs comment in
-- version 1 for why limits are taken under advisory xact locks in ascending key order and
-- why each statement sees every claim committed before its locks were granted). This
-- version adds:
-- * a job with a per-key limit takes its job lock: one lock per job, not per key, because a
--   claim learns its keys only from the scan, and locks taken then could not be taken in the
--   ascending order that keeps two claimers from waiting on each other in a cycle. Under
--   the job lock the running count per (job, key) is exact, as the job's count is.
-- * a rate-limited job or queue takes its job or queue lock; its starts are counted in
--   rate_starts over (t - period, t], t being clock_timestamp() read after the locks: the
--   transaction's now() is taken before the lock wait, so a claim that waited could record
--   a start earlier than one committed before it and pack a window. Claimed runs record
--   t as their started_at and in rate_starts, so both show the windows the limit counts.
-- * p_wake: add one more row, with a NULL id, when a rate limit is full: it is not a run,
--   its not_before is when the next start under a full limit is allowed and its created_at
--   is t (both on the database clock), so the worker sleeps until then, never polls faster.
CREATE FUNCTION asyncjobs.claim_runs(
    p_worker text, p_queues text[], p_jobs text[], p_capacity integer, p_lease interval,
    p_wake boolean
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
    t := clock_timestamp();

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
                  AND r.not_before <= now()
                  AND (r.not_after IS NULL OR r.not_after > now())
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

-- The planner settings of version 1 (see there), now on the function that does the work.
ALTER FUNCTION asyncjobs.claim_runs(text, text[], text[], integer, interval, boolean)
    SET enable_seqscan = off;
ALTER FUNCTION asyncjobs.claim_runs(text, text[], text[], integer, interval, boolean)
    SET enable_bitmapscan = off;
ALTER FUNCTION asyncjobs.claim_runs(text, text[], text[], integer, interval, boolean)
    SET plan_cache_mode = force_generic_plan;

-- The claim of code of version 4 and older (rolling deploys): the same limits, no wake row.
CREATE OR REPLACE FUNCTION asyncjobs.claim_runs(
    p_worker text, p_queues text[], p_jobs text[], p_capacity integer, p_lease interval
) RETURNS SETOF asyncjobs.runs
    LANGUAGE sql VOLATILE
    AS $$ SELECT * FROM asyncjobs.claim_runs(p_worker, p_queues, p_jobs, p_capacity, p_lease,
                                             false) $$;
-- Every insert path (enqueue, schedules, retry_run, older clients) gets the key the same way.
-- A key longer than 200 characters is cut: runs sharing the first 200 share a limit, which is
-- stricter, never looser.
CREATE FUNCTION asyncjobs.set_concurrency_key() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.concurrency_key IS NULL THEN
        SELECT left(NEW.args ->> j.key_field, 200) INTO NEW.concurrency_key
          FROM asyncjobs.jobs j WHERE j.name = NEW.job AND j.key_field IS NOT NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER runs_concurrency_key BEFORE INSERT ON asyncjobs.runs
    FOR EACH ROW EXECUTE FUNCTION asyncjobs.set_concurrency_key();

INSERT INTO asyncjobs.schema_version (version, name) VALUES (6, 'limits');
