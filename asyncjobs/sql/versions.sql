-- Named queries, loaded once into asyncjobs.sql.QUERIES with those of the other files of
-- this folder (a name is defined once across them). Each starts with
-- `-- name: <name> :<returns>` (one, many, exec) and a description line.
--
-- The schema's version and each migration's declared compatibility
-- (asyncjobs/backends/postgres.py migrate and the version check at open).

-- name: schema_installed :one
-- Whether asyncjobs was ever installed in this database.
SELECT to_regclass('asyncjobs.schema_version') IS NOT NULL;

-- name: schema_version :one
-- The highest applied schema version.
SELECT max(version) FROM asyncjobs.schema_version;

-- name: applied_migrations :many
-- Every applied schema version and the oldest code version that still works with it (see
-- asyncjobs.sql.incompatibility). The column comes with version 4; read through to_jsonb, a
-- database from before it answers NULL instead of failing.
SELECT version, (to_jsonb(v) ->> 'compatible_from')::integer AS compatible_from
  FROM asyncjobs.schema_version v
 ORDER BY version;

-- name: records_compatibility :one
-- Whether schema_version has the compatible_from column (version 4 and later).
SELECT EXISTS (SELECT FROM pg_attribute
                WHERE attrelid = 'asyncjobs.schema_version'::regclass
                  AND attname = 'compatible_from' AND NOT attisdropped);

-- name: record_compatibility :exec
-- Store the compatibility each migration file declares (:versions, :compatible_from).
UPDATE asyncjobs.schema_version v SET compatible_from = u.compatible_from
  FROM unnest(:versions::integer[], :compatible_from::integer[]) AS u(version, compatible_from)
 WHERE v.version = u.version AND v.compatible_from IS DISTINCT FROM u.compatible_from;
