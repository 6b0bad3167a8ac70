-- Storage parameters for tables that churn like a queue (issue 17; README "Production notes").
--
-- The defaults suit tables that grow slowly: autovacuum waits for 20 % of a table to be dead
-- and ANALYZE for 10 % to change. Every run is updated two to three times (claim, completion,
-- sometimes progress), each leaving a dead version, so with a 10-million-run backlog the
-- defaults let 2 million dead versions pile up before a vacuum, and the statistics describe a
-- table that no longer exists. Here vacuum and analyze start after 2 % (plus a fixed
-- 1,000-10,000 rows, so a small table is not vacuumed on every few updates). Nothing in
-- asyncjobs depends on these running: statements that address runs by id use the primary
-- key whatever the statistics say, and the claim walks runs_pending_idx (see claim_runs).
-- They only keep the table and its indexes from bloating. Each statement takes a SHARE
-- UPDATE EXCLUSIVE lock (reads and writes go on) and rewrites nothing.
ALTER TABLE asyncjobs.runs SET (
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
-- Insert-only until retention deletes: inserts trigger the vacuums that set the visibility
-- map (index-only feed reads) and freeze rows before an anti-wraparound vacuum must.
ALTER TABLE asyncjobs.run_events SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_limit = 2000
);
-- A few rows, each updated every heartbeat: vacuum it after a few hundred dead versions
-- whatever its size, and leave room on each page so that those updates stay HOT (the
-- heartbeat changes no indexed column).
ALTER TABLE asyncjobs.workers SET (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 500,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 500
);

INSERT INTO asyncjobs.schema_version (version, name) VALUES (7, 'queue_storage');
