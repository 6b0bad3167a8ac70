-- The event feed (asyncjobs/feed.py) reads run_events in (xid, id) order: an event is
-- delivered once every transaction older than its own has ended, so that order never gets an
-- event inserted behind a position already delivered. The tree feed adds the root in front.
-- (root_run_id, xid, id) also serves every lookup the old (root_run_id, id) index did.
CREATE INDEX run_events_feed_idx ON asyncjobs.run_events (xid, id);
CREATE INDEX run_events_root_feed_idx ON asyncjobs.run_events (root_run_id, xid, id);
DROP INDEX asyncjobs.run_events_root_idx;

-- Retention finds finished trees through their root's finish time.
CREATE INDEX runs_finished_roots_idx ON asyncjobs.runs (finished_at)
    WHERE id = root_run_id AND finished_at IS NOT NULL;

INSERT INTO asyncjobs.schema_version (version, name) VALUES (3, 'event_feed');
