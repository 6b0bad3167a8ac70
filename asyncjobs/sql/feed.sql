-- Named queries, loaded once into asyncjobs.sql.QUERIES with those of the other files of
-- this folder (a name is defined once across them). Each starts with
-- `-- name: <name> :<returns>` (one, many, exec) and a description line.
--
-- The event feed (asyncjobs/feed.py, asyncjobs/web/).
--
-- The feed order is (xid, id). An event is final ("ready") once every transaction older than
-- its own has ended: xid < the snapshot's xmin. Nothing can then commit behind it, because an
-- xid below xmin belongs to a transaction that has ended, and the rows of one transaction
-- become visible together. A long transaction anywhere on the cluster holds xmin back, so
-- an event older than the grace period (:grace) is ready too; this keeps "no gap" as long as no
-- asyncjobs statement stays open longer than the grace period (they take milliseconds).
--
-- A claim commits without waiting for the WAL flush (migrations/0013_fast_claim.sql), and a
-- transaction lost in a server crash can see its xid and event ids taken again after the
-- recovery: an event handed out before it is durable could be skipped by a reader resuming
-- after it. So each read also returns `wal`, the WAL insert position when it read (every
-- commit it saw is before it), and `flushed`, whether the WAL is flushed that far; the
-- backend hands the events out only once it is (wal_flushed).

-- name: read_feed :many
-- Events after position (:after_xid, :after_id) in feed order, with `ready` (see above).
SELECT e.id, e.run_id, e.root_run_id, e.at, e.kind, e.data, e.xid,
       e.xid < h.xmin OR e.at < h.old AS ready, h.wal::text AS wal,
       pg_current_wal_flush_lsn() >= h.wal AS flushed
  FROM asyncjobs.run_events e
 CROSS JOIN (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
                    now() - :grace::interval AS old, pg_current_wal_insert_lsn() AS wal) h
 WHERE (e.xid, e.id) > (:after_xid::xid8, :after_id::bigint)
 ORDER BY e.xid, e.id
 LIMIT :limit;

-- name: read_tree_feed :many
-- The same for the events of one trace tree (:root_run_id is the root run id).
SELECT e.id, e.run_id, e.root_run_id, e.at, e.kind, e.data, e.xid,
       e.xid < h.xmin OR e.at < h.old AS ready, h.wal::text AS wal,
       pg_current_wal_flush_lsn() >= h.wal AS flushed
  FROM asyncjobs.run_events e
 CROSS JOIN (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
                    now() - :grace::interval AS old, pg_current_wal_insert_lsn() AS wal) h
 WHERE e.root_run_id = :root_run_id AND (e.xid, e.id) > (:after_xid::xid8, :after_id::bigint)
 ORDER BY e.xid, e.id
 LIMIT :limit;

-- name: feed_position :one
-- The position just before the first visible event that is not ready, or of the last event
-- (with `wal` and `flushed`, as above: a position is handed out once it is durable too).
WITH h AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin, now() - :grace::interval AS old,
           pg_current_wal_insert_lsn() AS wal
),
first_unready AS (
    SELECT e.xid, e.id FROM asyncjobs.run_events e, h
     WHERE e.xid >= h.xmin AND e.at >= h.old
     ORDER BY e.xid, e.id LIMIT 1
)
SELECT e.xid, e.id, (SELECT wal::text FROM h) AS wal,
       pg_current_wal_flush_lsn() >= (SELECT wal FROM h) AS flushed
  FROM asyncjobs.run_events e
 WHERE NOT EXISTS (SELECT FROM first_unready)
    OR (e.xid, e.id) < (SELECT f.xid, f.id FROM first_unready f)
 ORDER BY e.xid DESC, e.id DESC
 LIMIT 1;

-- name: wal_flushed :one
-- Whether the WAL is flushed up to :wal (a `wal` of the reads above).
SELECT pg_current_wal_flush_lsn() >= (:wal::text)::pg_lsn AS flushed;

-- name: get_runs_by_ids_versioned :many
-- Runs by id with `version`: the id of the run's latest event (a newer state has a larger one).
-- Events are found through their root's index, as in get_events: by run_id alone the planner
-- walked run_events backwards by id (every later event of every tree).
SELECT r.*, coalesce((SELECT max(e.id) FROM asyncjobs.run_events e
                        WHERE e.root_run_id = r.root_run_id AND e.run_id = r.id), 0) AS version
  FROM asyncjobs.runs r
 WHERE r.id = ANY (:ids::bigint[])
 ORDER BY r.id;

-- name: get_tree :many
-- The runs of one trace tree with `version`, oldest first, at most :limit: the root by the
-- primary key, its descendants through runs_root_idx (which holds no root).
SELECT r.*, coalesce((SELECT max(e.id) FROM asyncjobs.run_events e
                        WHERE e.root_run_id = r.root_run_id AND e.run_id = r.id), 0) AS version
  FROM asyncjobs.runs r
 WHERE (r.id = :root_run_id AND r.root_run_id = r.id)
    OR (r.root_run_id = :root_run_id AND r.root_run_id <> r.id)
 ORDER BY r.id
 LIMIT :limit;
