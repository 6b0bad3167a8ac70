-- compatible-with-code: 4
-- (Additive for older code: its statements call notify with up to three arguments, which the
-- new function takes with the same meaning; the payload only gains keys that older listeners
-- ignore.)
--
-- notify carries the results of succeeded runs (`results`), so a caller waiting in run_async
-- gets its result from the NOTIFY without a query, and the name of the process whose
-- statement sent it (`origin`), which has woken its own claimers already and skips the
-- echo. Dropped and created again, not overloaded: a call with three arguments would match
-- both.
DROP FUNCTION asyncjobs.notify(text[], bigint[], bigint[]);

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

INSERT INTO asyncjobs.schema_version (version, name) VALUES (10, 'notify_results');
