-- asyncjobs schema, version 13: the current schema, written whole. A fresh install runs this
-- file; an older install runs the files of migrations/ above its version instead, and a test
-- (tests/test_schema.py) checks that both end in the same catalog, storage parameters and
-- function settings included. A change adds a migration and edits this file to match: a new
-- column goes at the end of its table (where ALTER TABLE ADD COLUMN puts it), a replaced
-- function is written once at its new definition. The database enforces the invariants:
-- states, dedup, leases, limits.

CREATE SCHEMA IF NOT EXISTS asyncjobs;

-- One row per applied version. compatible_from: which code versions still work with the
-- database (a migration's `-- compatible-with-code: N` header); NULL: only code of this
-- version or newer. `asyncjobs migrate` fills it from the migration files.
CREATE TABLE asyncjobs.schema_version (
    version         integer PRIMARY KEY,
    name            text NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now(),
    compatible_from integer CHECK (compatible_from <= version)
);

CREATE TYPE asyncjobs.run_status AS ENUM (
    'pending', 'running', 'succeeded', 'failed', 'cancelled', 'expired'
);

CREATE TYPE asyncjobs.run_trigger AS ENUM (
    'user', 'api', 'schedule', 'retry', 'restart', 'child'
);

-- Registered queues, their cluster-wide limit (NULL = unlimited) and rate limit. Written on
-- worker start; `enabled` is a run-time switch and is never overwritten by a deploy.
--
-- Rate limits (here and on jobs): at most `rate_limit` starts per `rate_period` of a job or a
-- queue, on the database clock. A sliding window over a log of recent starts (rate_starts),
-- not a token bucket: a bucket lets a full bucket's burst follow the starts that emptied it,
-- so some window of one period could hold up to twice the limit; the log makes "no window of
-- the period holds more than N starts" exact. The log is written and pruned by claims only,
-- under the limit's advisory lock, and holds at most N rows per limit after pruning.
CREATE TABLE asyncjobs.queues (
    name            text PRIMARY KEY CHECK (name <> '' AND length(name) <= 200),
    max_concurrency integer CHECK (max_concurrency > 0),
    enabled         boolean NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    rate_limit      integer CHECK (rate_limit > 0),
    rate_period     interval CHECK (rate_period > interval '0'),
    CONSTRAINT queues_rate_check CHECK ((rate_limit IS NULL) = (rate_period IS NULL))
);

-- A job's per-key limits: at most `key_concurrency` runs per key run at once, at most
-- `key_rate_limit` runs per key start per `key_rate_period`. The key is the argument named
-- `key_field`, read from the stored arguments by the database when the run is inserted (so
-- triggers by name, schedules and older clients get the same key), or, for a key computed
-- by a function (`key_field` NULL), given by the triggering client: the database refuses a
-- run of such a job that comes without one (set_concurrency_key), rather than let it escape
-- the limit.
CREATE TABLE asyncjobs.jobs (
    name            text PRIMARY KEY CHECK (name <> '' AND length(name) <= 200),
    queue           text NOT NULL,
    max_concurrency integer CHECK (max_concurrency > 0),
    enabled         boolean NOT NULL DEFAULT true,
    args_schema     jsonb NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    key_field       text CHECK (key_field <> '' AND length(key_field) <= 200),
    key_concurrency integer CHECK (key_concurrency > 0),
    rate_limit      integer CHECK (rate_limit > 0),
    rate_period     interval CHECK (rate_period > interval '0'),
    key_rate_limit  integer CHECK (key_rate_limit > 0),
    key_rate_period interval CHECK (key_rate_period > interval '0'),
    CONSTRAINT jobs_key_limit_check CHECK (
        key_field IS NULL OR key_concurrency IS NOT NULL OR key_rate_limit IS NOT NULL),
    CONSTRAINT jobs_rate_check CHECK ((rate_limit IS NULL) = (rate_period IS NULL)),
    CONSTRAINT jobs_key_rate_check CHECK ((key_rate_limit IS NULL) = (key_rate_period IS NULL))
);

-- The starts that rate limits count: 'job:<name>' or 'queue:<name>', and when; a per-key
-- rate limit's starts are 'key:<job>' with the run's key.
CREATE TABLE asyncjobs.rate_starts (
    scope text NOT NULL,
    at    timestamptz NOT NULL,
    key   text
);
CREATE INDEX rate_starts_idx ON asyncjobs.rate_starts (scope, at);
-- A per-key rate limit counts the starts of one key.
CREATE INDEX rate_starts_key_idx ON asyncjobs.rate_starts (scope, key, at)
    WHERE key IS NOT NULL;
-- Keys whose per-key rate limit is used up ('key:<job>', the key) until a start leaves the
-- window: written by the claim that used it up, read by every claim, so that a claim skips
-- them without counting every key's starts (see claim_runs). Pruned by the claims.
CREATE TABLE asyncjobs.rate_full_keys (
    scope text NOT NULL,
    key   text NOT NULL,
    until timestamptz NOT NULL
);
CREATE INDEX rate_full_keys_idx ON asyncjobs.rate_full_keys (scope, until);

CREATE SEQUENCE asyncjobs.run_ids;

-- Crashes are restarts, not retries. `attempt` counts claims (the fencing token of the
-- current execution); `retries` counts the attempts that ended in the job's own failure and
-- came back (bounded by max_attempts - 1, the job's `retries`); `restarts` counts the times
-- a run was taken back from a worker that stopped heartbeating (bounded by max_restarts,
-- after which it fails with LeaseExpired). A graceful hand-back on shutdown counts as neither.
--
-- A child triggered from inside a job is identified by (parent_run_id, step_key); the
-- database refuses a second run for the same step, so a retried or restarted parent gets the
-- child of its earlier attempt back instead of triggering it again.
--
-- Storage: every run is updated two to three times (claim, completion, sometimes progress),
-- each leaving a dead version, so the default autovacuum thresholds (20 % dead, 10 % changed)
-- would let 2 million dead versions of a 10-million-run backlog pile up and leave statistics
-- describing a table that no longer exists: vacuum and analyze start after 2 % (plus 10,000
-- rows). Nothing in asyncjobs depends on these running (statements by id use the primary
-- key whatever the statistics say, the claim walks runs_pending_idx); they keep the table and
-- its indexes from bloating.

CREATE TABLE asyncjobs.runs (
    id               bigint PRIMARY KEY DEFAULT nextval('asyncjobs.run_ids'),
    job              text NOT NULL CHECK (job <> '' AND length(job) <= 200),
    queue            text NOT NULL CHECK (queue <> '' AND length(queue) <= 200),
    args             jsonb NOT NULL,
    status           asyncjobs.run_status NOT NULL DEFAULT 'pending',
    trigger          asyncjobs.run_trigger NOT NULL DEFAULT 'user',
    priority         smallint NOT NULL DEFAULT 0,
    not_before       timestamptz NOT NULL DEFAULT now(),
    not_after        timestamptz,
    dedup_id         text CHECK (length(dedup_id) BETWEEN 1 AND 200),
    -- attempt counts claims: it is the fencing token of the current execution
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    parent_run_id    bigint REFERENCES asyncjobs.runs (id) ON DELETE SET NULL,
    root_run_id      bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    worker_id        text,
    lease_expires_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    result           jsonb,
    error            jsonb,
    errors           jsonb NOT NULL DEFAULT '[]',
    progress         real CHECK (progress BETWEEN 0 AND 1),
    status_message   text,
    -- a run fired by a schedule names it and its tick; an all_nodes copy names its worker
    schedule         text,
    scheduled_at     timestamptz,
    target_worker    text,
    retries          integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    restarts         integer NOT NULL DEFAULT 0 CHECK (restarts >= 0),
    max_restarts     integer NOT NULL DEFAULT 10 CHECK (max_restarts >= 0),
    -- OpenTelemetry: the W3C trace context of the span that triggered the run (see below)
    trace_context    jsonb,
    step_key         text CHECK (length(step_key) BETWEEN 1 AND 200),
    concurrency_key  text CHECK (length(concurrency_key) <= 200),
    -- a running run always has an owner and a lease; nothing else does
    CONSTRAINT runs_running_has_lease CHECK (
        (status = 'running') = (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL)
    ),
    CONSTRAINT runs_terminal_has_finish CHECK (
        (status IN ('pending', 'running')) = (finished_at IS NULL)
    ),
    CONSTRAINT runs_schedule_check CHECK ((schedule IS NULL) = (scheduled_at IS NULL)),
    CONSTRAINT runs_step_has_parent CHECK (step_key IS NULL OR parent_run_id IS NOT NULL)
) WITH (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 10000,
    -- a vacuum of this table should finish before the next one is due: 10x the default
    -- I/O budget per round (vacuum_cost_limit 200)
    autovacuum_vacuum_cost_limit = 2000
);
-- The trace context is bounded: a propagator's carrier is a few short headers
-- (asyncjobs/telemetry.py keeps it under 4 KB). NOT VALID as on upgraded databases, where the
-- check was added to a big table without scanning it; every row written is checked.
ALTER TABLE asyncjobs.runs ADD CONSTRAINT runs_trace_context_check CHECK (
    jsonb_typeof(trace_context) = 'object' AND octet_length(trace_context::text) <= 4096
) NOT VALID;

-- Claiming: pending runs of a queue, highest priority first, then oldest.
CREATE INDEX runs_pending_idx ON asyncjobs.runs (queue, priority DESC, id)
    WHERE status = 'pending';
-- Deduplication is the database's job: one active run per (job, dedup_id).
CREATE UNIQUE INDEX runs_dedup_idx ON asyncjobs.runs (job, dedup_id)
    WHERE dedup_id IS NOT NULL AND status IN ('pending', 'running');
-- Lease sweeps and limit counts read only running runs.
CREATE INDEX runs_running_idx ON asyncjobs.runs (lease_expires_at)
    WHERE status = 'running';
CREATE INDEX runs_expiry_idx ON asyncjobs.runs (not_after)
    WHERE status = 'pending' AND not_after IS NOT NULL;
-- Trace trees: a root is found by its primary key, so only its descendants need an entry
-- here (most runs are roots: they pay none at enqueue, claim or completion).
CREATE INDEX runs_root_idx ON asyncjobs.runs (root_run_id) WHERE root_run_id <> id;
-- Run table filters and "last success" per job.
CREATE INDEX runs_job_idx ON asyncjobs.runs (job, id DESC);
-- Each tick fires exactly once (per worker for all_nodes copies), however many schedulers
-- race for it: the database refuses a second run for the same (schedule, tick, worker).
CREATE UNIQUE INDEX runs_schedule_fire_idx
    ON asyncjobs.runs (schedule, scheduled_at, target_worker) NULLS NOT DISTINCT
    WHERE schedule IS NOT NULL;
-- "Last successful run" of a job without scanning its failures.
CREATE INDEX runs_last_success_idx ON asyncjobs.runs (job, finished_at DESC)
    WHERE status = 'succeeded';
-- Retention finds finished trees through their root's finish time.
CREATE INDEX runs_finished_roots_idx ON asyncjobs.runs (finished_at)
    WHERE id = root_run_id AND finished_at IS NOT NULL;
CREATE UNIQUE INDEX runs_step_idx ON asyncjobs.runs (parent_run_id, step_key)
    WHERE step_key IS NOT NULL;
-- Claims count running runs per (job, key) under the job's advisory lock.
CREATE INDEX runs_running_key_idx ON asyncjobs.runs (job, concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
-- runs.parent_run_id references runs(id) ON DELETE SET NULL: without an index leading with
-- it every run deleted by retention scanned the whole table for children (44-69 s per
-- 500-tree prune at 1M events, 51 ms with it). Listing a run's children uses it too.
-- Partial: root runs, most of them, have no parent and pay no index entry at enqueue.
CREATE INDEX runs_parent_idx ON asyncjobs.runs (parent_run_id, id)
    WHERE parent_run_id IS NOT NULL;

-- Every state change, progress update and log line; the id is the SSE event id. `xid` lets
-- readers deliver events in commit-safe order (an id is taken at insert, not at commit).
-- Insert-only until retention deletes: inserts trigger the vacuums that set the visibility
-- map (index-only feed reads) and freeze rows before an anti-wraparound vacuum must.
CREATE TABLE asyncjobs.run_events (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL,
    root_run_id bigint NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    kind        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}'
) WITH (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_limit = 2000
);
-- The event feed (asyncjobs/feed.py) reads run_events in (xid, id) order: an event is
-- delivered once every transaction older than its own has ended, so that order never gets an
-- event inserted behind a position already delivered. The tree feed adds the root in front.
CREATE INDEX run_events_feed_idx ON asyncjobs.run_events (xid, id);
CREATE INDEX run_events_root_feed_idx ON asyncjobs.run_events (root_run_id, xid, id);

-- A few rows, each updated every heartbeat: vacuum it after a few hundred dead versions
-- whatever its size, and leave room on each page so that those updates stay HOT (the
-- heartbeat changes no indexed column).
CREATE TABLE asyncjobs.workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    queues       text[] NOT NULL,
    jobs         text[] NOT NULL,
    concurrency  integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
) WITH (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 500,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 500
);

CREATE TABLE asyncjobs.schedules (
    -- the stable key: the job's name for @app.job(schedule=...)
    name          text PRIMARY KEY CHECK (name <> '' AND length(name) <= 200),
    job           text NOT NULL CHECK (job <> '' AND length(job) <= 200),
    cron          text CHECK (length(cron) <= 200),
    every         interval CHECK (every > interval '0'),
    initial_delay interval NOT NULL DEFAULT '0' CHECK (initial_delay >= interval '0'),
    timezone      text NOT NULL DEFAULT 'UTC',
    -- the arguments of every run it fires, validated when the schedule was declared
    args          jsonb NOT NULL DEFAULT '{}',
    misfire       text NOT NULL DEFAULT 'once' CHECK (misfire IN ('skip', 'once', 'all')),
    all_nodes     boolean NOT NULL DEFAULT false,
    -- a run-time switch, never overwritten by a deploy
    enabled       boolean NOT NULL DEFAULT true,
    -- when the timing was stored, changed or enabled again: interval ticks count from here
    anchor_at     timestamptz NOT NULL DEFAULT now(),
    -- NULL until the next scheduler pass computes it from anchor_at
    next_fire_at  timestamptz,
    last_fire_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_timing_check CHECK ((cron IS NULL) <> (every IS NULL))
);

-- Key of the transaction-scoped advisory lock that serializes claims under one limit.
CREATE FUNCTION asyncjobs.limit_lock_key(kind text, name text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN hashtextextended('asyncjobs:' || kind || ':' || name, 0);

-- One NOTIFY per statement, never over PostgreSQL's 8,000-byte payload limit: a list that
-- would not fit is left out and a flag says so, and the listener catches up by reading the
-- database (`all_queues`: wake every claimer; `many`: check every awaited run;
-- `cancel_many`: heartbeat at once, which returns the runs whose cancel was requested).
-- `results` ({"<run id>": result}) carries the results of succeeded runs among `done`, so a
-- caller waiting for one needs no query: those that fit in the room left, smallest first (a
-- waiter whose result is not there reads the run). `origin` names the process (and event
-- loop) whose statement sent it: that process woke its own claimers already (see
-- asyncjobs/backends/listener.py LocalPeers).
CREATE FUNCTION asyncjobs.notify(
    p_queues text[], p_done bigint[] DEFAULT NULL, p_cancel bigint[] DEFAULT NULL,
    p_results jsonb DEFAULT NULL, p_origin text DEFAULT NULL
) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    -- a cheap first cut before any JSON is built: 400 ids never fit twice with queue names
    max_ids CONSTANT integer := 400;
    -- PostgreSQL refuses payloads of 8,000 bytes or more
    max_bytes CONSTANT integer := 7900;
    payload jsonb := '{}';
    longest text;
    room integer;
    fitting jsonb;
BEGIN
    IF cardinality(p_queues) > 0 THEN
        payload := payload || jsonb_build_object('queues', p_queues);
    END IF;
    IF cardinality(p_done) > max_ids THEN
        payload := payload || '{"many": true}';
    ELSIF cardinality(p_done) > 0 THEN
        payload := payload || jsonb_build_object('done', p_done);
    END IF;
    IF cardinality(p_cancel) > max_ids THEN
        payload := payload || '{"cancel_many": true}';
    ELSIF cardinality(p_cancel) > 0 THEN
        payload := payload || jsonb_build_object('cancel', p_cancel);
    END IF;
    IF p_origin IS NOT NULL THEN
        payload := payload || jsonb_build_object('origin', left(p_origin, 100));
    END IF;
    -- still too long (long queue names, long ids): cut the longest list until it fits
    WHILE octet_length(payload::text) > max_bytes LOOP
        SELECT key INTO longest FROM jsonb_each(payload)
         WHERE jsonb_typeof(value) = 'array' ORDER BY octet_length(value::text) DESC LIMIT 1;
        payload := (payload - longest) || jsonb_build_object(
            CASE longest WHEN 'queues' THEN 'all_queues' WHEN 'done' THEN 'many'
                         ELSE 'cancel_many' END, true);
    END LOOP;
    IF payload ? 'done' AND p_results IS NOT NULL AND p_results <> '{}' THEN
        -- 16: `, "results": {}`; each entry costs its key and value and `"": , ` (6)
        room := max_bytes - octet_length(payload::text) - 16;
        IF octet_length(p_results::text) <= room THEN
            fitting := p_results;
        ELSE
            SELECT jsonb_object_agg(key, value) INTO fitting FROM (
                SELECT key, value, sum(octet_length(key) + octet_length(value::text) + 6)
                                       OVER (ORDER BY octet_length(value::text), key) AS total
                  FROM jsonb_each(p_results)) e
             WHERE total <= room;
        END IF;
        IF fitting IS NOT NULL THEN
            payload := payload || jsonb_build_object('results', fitting);
        END IF;
        IF octet_length(payload::text) > max_bytes THEN  -- never: the estimate is an upper bound
            payload := payload - 'results';
        END IF;
    END IF;
    PERFORM pg_notify('asyncjobs', payload::text);
END
$$;

-- Every insert path (enqueue, schedules, retry_run, older clients) gets the key the same way.
-- A key longer than 200 characters is cut: runs sharing the first 200 share a limit, which is
-- stricter, never looser. A job whose key is computed by a function in its code (key_field
-- NULL under a per-key limit) cannot get its key here: a run of it that comes without one
-- (a trigger by name from a client without the code, an older client) is refused, with the
-- name runs_concurrency_key_required that the client turns into ConcurrencyKeyError.
CREATE FUNCTION asyncjobs.set_concurrency_key() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    field text;
    keyed boolean;
BEGIN
    IF NEW.concurrency_key IS NULL THEN
        SELECT j.key_field, j.key_concurrency IS NOT NULL OR j.key_rate_limit IS NOT NULL
          INTO field, keyed
          FROM asyncjobs.jobs j WHERE j.name = NEW.job;
        IF field IS NOT NULL THEN
            NEW.concurrency_key := left(NEW.args ->> field, 200);
        ELSIF keyed THEN
            RAISE EXCEPTION 'job % computes its concurrency key with a function of its code: '
                            'trigger it from a client that has the code', NEW.job
                USING ERRCODE = 'check_violation', CONSTRAINT = 'runs_concurrency_key_required';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER runs_concurrency_key BEFORE INSERT ON asyncjobs.runs
    FOR EACH ROW EXECUTE FUNCTION asyncjobs.set_concurrency_key();

-- Claim up to p_capacity pending runs for one worker, under every cluster-wide limit.
--
-- SKIP LOCKED alone cannot hold "at most N running": two workers each count N-1 and both claim.
-- So a claim that touches a limited queue or job first takes that limit's advisory xact lock
-- (all keys in ascending order, so two claimers can never wait on each other in a cycle), and
-- only then counts running runs. The count must see every claim committed before the lock was
-- granted, which is why this is a VOLATILE plpgsql function: each statement in it takes a fresh
-- snapshot, so the claim query runs on a snapshot taken after the locks. Completions need no
-- lock: a run leaving `running` late only makes a concurrent claim more conservative.
-- Unlimited queues and jobs take no lock at all.
--
-- The candidate scan must walk runs_pending_idx in claim order and stop at LIMIT. With the
-- LIMIT taken from a lateral row and many filters, the planner may misjudge it as one row
-- and sort a sequential scan of every pending run instead (measured: 15-25 ms per claim at
-- 28k pending vs 0.4 ms); a seq scan is never right for this function. And plpgsql would
-- re-plan its statements on every call (custom plans): a generic plan cut an empty claim
-- from 2.2 ms to 0.6 ms here. And JIT compiling never pays: the generic plan estimates a tenth of the backlog, so above
-- about a million pending runs every claim was compiled (875 of 876 ms at 5M pending).
--
-- Per-key limits and rate limits:
-- * a job with a per-key limit takes its job lock: one lock per job, not per key, because a
--   claim learns its keys only from the scan, and locks taken then could not be taken in the
--   ascending order that keeps two claimers from waiting on each other in a cycle. Under
--   the job lock the running count per (job, key) is exact, as the job's count is.
-- * a job with a per-key rate limit takes its job lock too, for the same reason; its starts
--   are logged per key (scope 'key:<job>') and counted, for the keys the scan meets, as the
--   job's and queue's are. A claim that uses a key's starts up records it in rate_full_keys
--   until its oldest start leaves the window; the next claims' scans skip it (no head-of-line
--   blocking) and the wake row covers it.
-- * a rate-limited job or queue takes its job or queue lock; its starts are counted in
--   rate_starts over (t - period, t], t being clock_timestamp() read after the locks: the
--   transaction's now() is taken before the lock wait, so a claim that waited could record
--   a start earlier than one committed before it and pack a window. Claimed runs record
--   t as their started_at and in rate_starts, so both show the windows the limit counts.
-- * p_wake: add one more row, with a NULL id, when a rate limit is full: it is not a run,
--   its not_before is when the next start under a full limit is allowed and its created_at
--   is t (both on the database clock), so the worker sleeps until then, never polls faster.
--
-- Time control: the claim takes the time to claim at, p_now (NULL: the database clock), as
-- every other time-dependent statement does (`coalesce(:now, now())` in sql/*.sql), so a
-- test clock (asyncjobs.testing.TestClock) moves delays, deadlines, leases and schedules
-- without waiting. With p_now set, the rate limits count their windows up to p_now instead of
-- clock_timestamp() after the locks (see above): a test clock is one process's clock, so
-- there is no lock wait to be early by.
CREATE FUNCTION asyncjobs.claim_runs(
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

-- The claim of code of versions 5 and 6 (rolling deploys): the database clock.
CREATE OR REPLACE FUNCTION asyncjobs.claim_runs(
    p_worker text, p_queues text[], p_jobs text[], p_capacity integer, p_lease interval,
    p_wake boolean
) RETURNS SETOF asyncjobs.runs
    LANGUAGE sql VOLATILE
    AS $$ SELECT * FROM asyncjobs.claim_runs(p_worker, p_queues, p_jobs, p_capacity, p_lease,
                                             p_wake, NULL) $$;

-- The claim of code of schema version 4 and older (rolling deploys): the same limits, no
-- wake row.
CREATE OR REPLACE FUNCTION asyncjobs.claim_runs(
    p_worker text, p_queues text[], p_jobs text[], p_capacity integer, p_lease interval
) RETURNS SETOF asyncjobs.runs
    LANGUAGE sql VOLATILE
    AS $$ SELECT * FROM asyncjobs.claim_runs(p_worker, p_queues, p_jobs, p_capacity, p_lease,
                                             false) $$;

-- Every version is applied, as if by its migration.
INSERT INTO asyncjobs.schema_version (version, name) VALUES (1, 'initial');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (2, 'schedules');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (3, 'event_feed');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (4, 'restarts');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (5, 'trace_context');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (6, 'limits');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (7, 'queue_storage');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (8, 'time_control');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (9, 'scale_fixes');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (10, 'notify_results');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (11, 'key_rates');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (12, 'lean_runs');
INSERT INTO asyncjobs.schema_version (version, name) VALUES (13, 'fast_claim');
