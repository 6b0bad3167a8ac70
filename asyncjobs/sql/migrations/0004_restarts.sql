-- compatible-with-code: 4
-- (A header line: code built for schema version N keeps working on a database migrated past
-- N when every later migration declares `compatible-with-code: M` with M <= N. Without the
-- line a migration is compatible only with code of its own version or newer.)
--
-- Crashes are restarts, not retries. `attempt` keeps counting claims (the fencing token of
-- the current execution); `retries` counts the attempts that ended in the job's own failure
-- and came back (bounded by max_attempts - 1, the job's `retries`); `restarts` counts the
-- times a run was taken back from a worker that stopped heartbeating (bounded by
-- max_restarts, after which it fails with LeaseExpired). A graceful hand-back on shutdown
-- counts as neither.
ALTER TABLE asyncjobs.runs
    ADD COLUMN retries      integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    ADD COLUMN restarts     integer NOT NULL DEFAULT 0 CHECK (restarts >= 0),
    ADD COLUMN max_restarts integer NOT NULL DEFAULT 10 CHECK (max_restarts >= 0);

-- Active runs carry on with what their stored errors say happened to them (finished runs
-- keep the defaults: the counters only steer runs that can still be claimed).
UPDATE asyncjobs.runs
   SET retries = (SELECT count(*) FROM jsonb_array_elements(errors) e
                   WHERE e ->> 'type' IS DISTINCT FROM 'LeaseExpired'),
       restarts = (SELECT count(*) FROM jsonb_array_elements(errors) e
                    WHERE e ->> 'type' = 'LeaseExpired')
 WHERE status IN ('pending', 'running') AND errors <> '[]';

-- Which code versions still work with the database (see the header line above); NULL: only
-- code of this version or newer. `asyncjobs migrate` fills it from the migration files.
ALTER TABLE asyncjobs.schema_version
    ADD COLUMN compatible_from integer CHECK (compatible_from <= version);

-- One NOTIFY per statement, never over PostgreSQL's 8,000-byte payload limit: a list that
-- would not fit is left out and a flag says so, and the listener catches up by reading the
-- database (`all_queues`: wake every claimer; `many`: check every awaited run;
-- `cancel_many`: heartbeat at once, which returns the runs whose cancel was requested).
CREATE FUNCTION asyncjobs.notify(
    p_queues text[], p_done bigint[] DEFAULT NULL, p_cancel bigint[] DEFAULT NULL
) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    -- a cheap first cut before any JSON is built: 400 ids never fit twice with queue names
    max_ids CONSTANT integer := 400;
    -- PostgreSQL refuses payloads of 8,000 bytes or more
    max_bytes CONSTANT integer := 7900;
    payload jsonb := '{}';
    longest text;
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
    -- still too long (long queue names, long ids): cut the longest list until it fits
    WHILE octet_length(payload::text) > max_bytes LOOP
        SELECT key INTO longest FROM jsonb_each(payload)
         WHERE jsonb_typeof(value) = 'array' ORDER BY octet_length(value::text) DESC LIMIT 1;
        payload := (payload - longest) || jsonb_build_object(
            CASE longest WHEN 'queues' THEN 'all_queues' WHEN 'done' THEN 'many'
                         ELSE 'cancel_many' END, true);
    END LOOP;
    PERFORM pg_notify('asyncjobs', payload::text);
END
$$;

INSERT INTO asyncjobs.schema_version (version, name) VALUES (4, 'restarts');
