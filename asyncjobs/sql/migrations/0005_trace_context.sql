-- compatible-with-code: 4
-- (code of version 4 neither reads nor writes the new nullable column)
--
-- OpenTelemetry: the W3C trace context (traceparent, tracestate; whatever the configured
-- propagator writes) of the span that triggered a run, so the worker's execution span joins
-- the caller's trace. NULL when the caller had no trace (or no OpenTelemetry). Bounded: a
-- propagator's carrier is a few short headers (asyncjobs/telemetry.py keeps it under 4 KB).
-- NOT VALID: existing rows are all NULL, so the check need not scan (and lock) a big table;
-- every row written from now on is checked.
ALTER TABLE asyncjobs.runs ADD COLUMN trace_context jsonb;
ALTER TABLE asyncjobs.runs ADD CONSTRAINT runs_trace_context_check CHECK (
    jsonb_typeof(trace_context) = 'object' AND octet_length(trace_context::text) <= 4096
) NOT VALID;

INSERT INTO asyncjobs.schema_version (version, name) VALUES (5, 'trace_context');
