-- compatible-with-code: 4
-- (Additive: a planner setting on the claim function and an index; no code reads either.)
--
-- Two costs found by the backlog benchmarks (benchmarks/README.md, "Large backlogs"):
--
-- * The claim function's generic plan estimates a tenth of the backlog, so above about a
--   million pending runs its cost crosses jit_above_cost and every claim was JIT-compiled:
--   402 ms for a claim of 100 at 5M pending, 875 of 876 ms of it compiling, against 1.6 ms
--   with JIT off. The claim reads at most its LIMIT of rows; compiling never pays.
-- * runs.parent_run_id references runs(id) ON DELETE SET NULL with no index leading with it,
--   so every run deleted by retention scanned the whole table for children to update: 44-69 s
--   per 500-tree prune statement at 1M events, 51 ms with this index. Listing the children
--   of a run (get_runs_of_parent) uses it too. Partial: root runs, most of them, have no
--   parent and pay no index entry at enqueue.
ALTER FUNCTION asyncjobs.claim_runs(text, text[], text[], integer, interval, boolean, timestamptz)
    SET jit = off;

CREATE INDEX runs_parent_idx ON asyncjobs.runs (parent_run_id, id)
    WHERE parent_run_id IS NOT NULL;

INSERT INTO asyncjobs.schema_version (version, name) VALUES (9, 'scale_fixes');
