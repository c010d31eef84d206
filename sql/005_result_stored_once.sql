-- harvester schema, version 5: each result stored once (README "Querying the mirror",
-- "Upgrades").
--
-- Until version 4 a mirror row held the body's largest part twice: `normalized` as a
-- column and again inside `payload`, the whole body. From this version `payload` keeps
-- only what the typed columns do not hold exactly: a key is left out of it when its
-- typed column gives back the very same JSON text, and put back by
-- harvester.result_body(). The view harvester.result_bodies (job_id, body) gives the whole
-- body as received.
--
-- Which keys, and why only these. `normalized` (the column is the body's `normalized`,
-- byte for byte as jsonb), and the keys whose column renders to one text only: uuids
-- (`id`, `orgId`, `jobId`: a uuid's text is lowercase with hyphens), strings (`domain`,
-- `schemaId`, `dataType`, `rawBlobKey`) and the integer `latencyMs`. A key is left out
-- only when its value's JSON text equals the column's (an upper-case uuid stays in
-- `payload`, as received), only when the column is not null (JSON null and an absent
-- key stay as they were), and never when the body also carries the snake_case name
-- (`org_id`: the model accepts either name). The timestamps (`2026-01-01T00:00:00Z`,
-- `...000Z`, `+00:00` are one instant) and the quality floats (`0.90` and `0.9`, and
-- a float's text depends on extra_float_digits) stay in `payload`: their text cannot be
-- given back from the typed value, and they are some 100 bytes of a row.
--
-- The reverse needs no marker: result_body() adds a typed key only when the column is
-- not null and neither the key nor its snake_case name is in `payload`. A row written
-- by version 4 still holds the whole body, so nothing is added to it: both layouts read
-- back right, and old rows are rewritten in small batches by `harvester mirror compact`
-- (or left as they are). This migration rewrites no row and takes no lock longer than
-- creating two functions and a view, and a COMMENT (catalog only): instant on a mirror
-- of any size. A daemon of version 4 still running during a rolling upgrade writes whole
-- bodies, which read back right too.

CREATE FUNCTION harvester.result_payload(
    body jsonb, job_id uuid, id uuid, org_id uuid, domain text, schema_id text,
    data_type text, normalized jsonb, raw_blob_key text, latency_ms integer)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT body - ARRAY(
    SELECT t.key
      FROM (VALUES ('normalized', 'normalized', normalized),
                   ('id', 'id', to_jsonb(id)),
                   ('orgId', 'org_id', to_jsonb(org_id)),
                   ('jobId', 'job_id', to_jsonb(job_id)),
                   ('domain', 'domain', to_jsonb(domain)),
                   ('schemaId', 'schema_id', to_jsonb(schema_id)),
                   ('dataType', 'data_type', to_jsonb(data_type)),
                   ('rawBlobKey', 'raw_blob_key', to_jsonb(raw_blob_key)),
                   ('latencyMs', 'latency_ms', to_jsonb(latency_ms))
           ) AS t (key, name, value)
     WHERE t.value IS NOT NULL
       AND body -> t.key = t.value
       AND (t.key = 'normalized' OR (body -> t.key)::text = t.value::text)
       AND (t.key = t.name OR NOT body ? t.name))
$$;

COMMENT ON FUNCTION harvester.result_payload(jsonb, uuid, uuid, uuid, text, text, text, jsonb, text, integer) IS
    'The body minus the keys its typed columns give back exactly: what extraction_results.payload stores (README "Querying the mirror").';

CREATE FUNCTION harvester.result_body(
    payload jsonb, job_id uuid, id uuid, org_id uuid, domain text, schema_id text,
    data_type text, normalized jsonb, raw_blob_key text, latency_ms integer)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT payload
    || CASE WHEN payload ? 'normalized' THEN '{}'
            ELSE jsonb_build_object('normalized', normalized) END
    || CASE WHEN payload ? 'id' THEN '{}'
            ELSE jsonb_build_object('id', id) END
    || CASE WHEN payload ?| ARRAY['orgId', 'org_id'] THEN '{}'
            ELSE jsonb_build_object('orgId', org_id) END
    || CASE WHEN payload ?| ARRAY['jobId', 'job_id'] THEN '{}'
            ELSE jsonb_build_object('jobId', job_id) END
    || CASE WHEN payload ? 'domain' THEN '{}'
            ELSE jsonb_build_object('domain', domain) END
    || CASE WHEN schema_id IS NULL OR payload ?| ARRAY['schemaId', 'schema_id'] THEN '{}'
            ELSE jsonb_build_object('schemaId', schema_id) END
    || CASE WHEN payload ?| ARRAY['dataType', 'data_type'] THEN '{}'
            ELSE jsonb_build_object('dataType', data_type) END
    || CASE WHEN raw_blob_key IS NULL OR payload ?| ARRAY['rawBlobKey', 'raw_blob_key'] THEN '{}'
            ELSE jsonb_build_object('rawBlobKey', raw_blob_key) END
    || CASE WHEN latency_ms IS NULL OR payload ?| ARRAY['latencyMs', 'latency_ms'] THEN '{}'
            ELSE jsonb_build_object('latencyMs', latency_ms) END
$$;

COMMENT ON FUNCTION harvester.result_body(jsonb, uuid, uuid, uuid, text, text, text, jsonb, text, integer) IS
    'The whole body as received, from extraction_results.payload and the typed columns (the reverse of result_payload).';

CREATE VIEW harvester.result_bodies AS
SELECT e.job_id,
       harvester.result_body(e.payload, e.job_id, e.id, e.org_id, e.domain, e.schema_id,
                             e.data_type, e.normalized, e.raw_blob_key, e.latency_ms) AS body
  FROM harvester.extraction_results AS e;

COMMENT ON VIEW harvester.result_bodies IS
    'Each mirror row''s upstream body as received (unknown fields included), as jsonb: payload with the keys its typed columns hold put back.';

COMMENT ON COLUMN harvester.extraction_results.payload IS
    'The 200 body minus the keys the typed columns give back exactly (normalized, id, orgId, jobId, domain, schemaId, dataType, rawBlobKey, latencyMs); rows written before version 5 hold the whole body. The whole body: harvester.result_bodies.';
