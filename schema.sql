-- The codeformer-ledger schema at the version `migrations::CURRENT` (a new ledger is created from it).
--
-- The ledger is one SQLite file in WAL mode. `events` is the append-only record of everything
-- the program did and learned; `jobs` and `attempts` hold the current state, and change only in
-- the same transaction as the event that explains the change. Money is stored as exact decimal
-- text in US dollars (e.g. '0.0084'); timestamps as RFC 3339 UTC text with milliseconds, except
-- the times of the tables with a row per job or more (`jobs`, `attempts`, `events`): unix
-- milliseconds, which the views `jobs_readable`, `attempts_readable` and `events_readable` show
-- as text.
-- Shipped versions of this file are never edited: an upgrade adds a numbered migration in
-- src/ledger/migrations.rs.

-- One row per named batch (a manifest run, or `submit --batch NAME`).
CREATE TABLE batches (
    name        TEXT PRIMARY KEY,           -- the batch name, chosen by the user or from the manifest file
    created_at  TEXT NOT NULL,
    hooks       TEXT NOT NULL DEFAULT '[]', -- JSON array of hook file paths, so a resume runs the same hooks
    out_dir     TEXT,                       -- output folder remembered for resumes
    budget      TEXT                        -- the batch's spend cap, USD, remembered from `batch`/`run --batch
                                            -- --budget` (NULL: none; `--no-budget` lifts it); each change is a
                                            -- `budget` event
);

-- Jobs that belong to a batch other than the one they were recorded in (`jobs.batch`): a
-- manifest row that matches a job already in the ledger joins the new batch here instead of
-- becoming a second job, so it is paid for once.
CREATE TABLE batch_members (
    batch       TEXT NOT NULL REFERENCES batches(name),
    job_id      INTEGER NOT NULL REFERENCES jobs(id),
    joined_at   TEXT NOT NULL,
    PRIMARY KEY (batch, job_id)
);
CREATE INDEX batch_members_by_job ON batch_members(job_id);

-- Copies (hard links where the file system allows) of a member job's outputs, placed in the
-- member batch's output folder. They cost nothing: the charge stays with the job's attempt.
CREATE TABLE member_outputs (
    batch       TEXT NOT NULL,
    job_id      INTEGER NOT NULL REFERENCES jobs(id),
    attempt     INTEGER NOT NULL,
    idx         INTEGER NOT NULL,           -- position in output.media_url, as in `outputs`
    path        TEXT NOT NULL,              -- where the copy was placed
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    placed_at   TEXT NOT NULL,
    PRIMARY KEY (batch, job_id, attempt, idx)
);

-- One row per job: a photo with its parameters. Current state only; history is in `events`.
CREATE TABLE jobs (
    id                     INTEGER PRIMARY KEY,
    key                    TEXT NOT NULL UNIQUE,   -- idempotency key: given, or a hash of URL and parameters
    batch                  TEXT REFERENCES batches(name),
    image_url              TEXT NOT NULL,
    fidelity               TEXT NOT NULL,          -- codeformer_fidelity, exact decimal 0..1
    upscale                INTEGER NOT NULL,
    background_enhance     INTEGER NOT NULL,       -- 0 or 1
    face_upsample          INTEGER NOT NULL,       -- 0 or 1
    webhook                TEXT,                   -- body field `webhook`
    webhook_events_filter  TEXT,                   -- JSON array, body field `webhook_events_filter`
    webhook_url            TEXT,                   -- header X-Webhook-URL
    webhook_mode           TEXT,                   -- header X-Webhook-Mode: terminal | sync
    input_width            INTEGER,                -- input size, when known
    input_height           INTEGER,
    size_source            TEXT,                   -- where the input size came from: given | manifest | header
    state                  TEXT NOT NULL,          -- planned submitting queued processing completed failed error
                                                   -- rejected uncertain held stalled skipped
    attempt                INTEGER NOT NULL DEFAULT 1, -- current attempt number (see `attempts`)
    request_id             TEXT,                   -- the gateway's id of the current attempt
    remote_status          TEXT,                   -- last status the gateway reported
    next_poll_at           INTEGER,                -- unix milliseconds of the next status poll; NULL when not polled
    polls                  INTEGER NOT NULL DEFAULT 0, -- status polls of the current attempt
    post                   TEXT,                   -- post-processing still owed: download | hooks | NULL (nothing)
    output_urls            TEXT,                   -- JSON array of output.media_url of the completed attempt;
                                                   -- NULL once downloaded: `outputs` holds them, in order
    expects_callbacks      INTEGER NOT NULL DEFAULT 0, -- 1 when the gateway was asked to call back
    reason                 TEXT,                   -- why a job is held, skipped, rejected, uncertain or stalled
    error                  TEXT,                   -- the gateway's or the download's error text
    created_at             INTEGER NOT NULL,       -- unix milliseconds, UTC
    updated_at             INTEGER NOT NULL        -- unix milliseconds, UTC
);
CREATE INDEX jobs_by_state ON jobs(state);   -- entries end with the row id: a state's jobs in id order
CREATE INDEX jobs_by_batch ON jobs(batch, state);
CREATE INDEX jobs_due ON jobs(next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX jobs_post ON jobs(post) WHERE post IS NOT NULL;
CREATE INDEX jobs_by_request ON jobs(request_id);

-- One row per attempt to have a job processed (a retry is a new attempt). Cost lives here.
CREATE TABLE attempts (
    job_id          INTEGER NOT NULL REFERENCES jobs(id),
    attempt         INTEGER NOT NULL,
    request_id      TEXT,                   -- the gateway's id, once accepted
    state           TEXT NOT NULL,          -- the job state this attempt ended in (or is in)
    price_per_mp    TEXT,                   -- USD per output megapixel in force when it was submitted
    estimated_cost  TEXT,                   -- USD, from the input size before sending
    actual_cost     TEXT,                   -- USD, from the downloaded output; set once
    output_width    INTEGER,
    output_height   INTEGER,
    submitted_at    INTEGER,                -- when the submission was sent, unix milliseconds, UTC
    finished_at     INTEGER,                -- when a final state was recorded, unix milliseconds, UTC
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;

-- The append-only record. Never updated, never deleted, with two exceptions: `ledger compact`
-- drops the raw `body` of old gateway answers (see `compactions`), after making sure their
-- facts are in the row's own columns; and a download event stored by reference is written
-- whole (`detail` set, `output` NULL) just before its `outputs` row changes (a hook moved the
-- file). `body` is also NULL for a poll answer stored by reference (`repeated_bodies`).
-- Facts another table already holds are not copied: a `download` event with `output` set and
-- `detail` NULL describes the `outputs` row (job_id, attempt, output) as
-- 'URL -> PATH (BYTES bytes, WxH, sha256 SHA256)'; a `charge` event with `detail` NULL
-- describes its `attempts` row as 'ACTUAL_COST USD for WxH output at PRICE_PER_MP USD/MP';
-- a `planned`, `estimate` or `submit_intent` event with `detail` and `body` NULL has the texts
-- `event_texts` rebuilds from its `jobs`, `attempts` and `tags` rows, and the triggers at the
-- end of this file write them out whole before one of those rows changes.
-- The writer stores an event so only when the text rebuilt from those rows equals it;
-- `show` and `events_readable` print the text.
CREATE TABLE events (
    id             INTEGER PRIMARY KEY,
    job_id         INTEGER,                 -- NULL for events about no single job
    attempt        INTEGER,
    at             INTEGER NOT NULL,        -- unix milliseconds, UTC
    kind           TEXT NOT NULL,           -- planned submit_intent submit_answer poll estimate download
                                            -- charge state hook retry note tag callback ...
    http_status    INTEGER,                 -- status code of the answer, when there was one
    remote_status  TEXT,                    -- the gateway's job status in that answer
    latency_ms     INTEGER,                 -- time from request to answer
    detail         TEXT,                    -- a short human-readable account
    body           TEXT,                    -- the answer's body (capped), or a JSON payload
    output         INTEGER                  -- a download event's `outputs.idx` when its detail is that row's
);
CREATE INDEX events_by_job ON events(job_id);  -- entries end with the row id: a job's events in id order

-- Tags (`--tag KEY=VALUE`) attributing jobs to clients or projects.
CREATE TABLE tags (
    job_id  INTEGER NOT NULL REFERENCES jobs(id),
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
) WITHOUT ROWID;

-- Files downloaded for an attempt.
CREATE TABLE outputs (
    job_id      INTEGER NOT NULL REFERENCES jobs(id),
    attempt     INTEGER NOT NULL,
    idx         INTEGER NOT NULL,           -- position in output.media_url
    url         TEXT NOT NULL,
    path        TEXT NOT NULL,              -- where the file was written
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    width       INTEGER,
    height      INTEGER,
    PRIMARY KEY (job_id, attempt, idx)
) WITHOUT ROWID;

-- The price table: a new price is a new row, in force from its date.
CREATE TABLE prices (
    id              INTEGER PRIMARY KEY,
    model           TEXT NOT NULL,
    per_megapixel   TEXT NOT NULL,          -- USD per output megapixel (10^6 pixels)
    effective_from  TEXT NOT NULL,
    recorded_at     TEXT NOT NULL,
    note            TEXT
);

-- Prices withdrawn by `prices remove`: the price row stays as it was, and is no longer in
-- force for jobs sent from now on (jobs already priced keep their rate).
CREATE TABLE price_removals (
    price_id    INTEGER PRIMARY KEY REFERENCES prices(id),
    removed_at  TEXT NOT NULL,
    reason      TEXT
);

-- Input sizes read from image headers, so an image is probed once.
CREATE TABLE image_sizes (
    url         TEXT PRIMARY KEY,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    format      TEXT NOT NULL,
    bytes_read  INTEGER NOT NULL,
    probed_at   TEXT NOT NULL
);

-- One row per hook call; `ended_at` NULL means it was interrupted (a crash) and is owed again.
CREATE TABLE hook_runs (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER REFERENCES jobs(id),
    attempt     INTEGER,
    batch       TEXT,
    hook_file   TEXT NOT NULL,
    function    TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    status      TEXT NOT NULL,              -- running | ok | failed
    error       TEXT
);
CREATE INDEX hook_runs_by_job ON hook_runs(job_id, attempt, function, hook_file);

-- Webhook callbacks received (`ingest`, `listen`), each once per body: request_id is the key.
CREATE TABLE deliveries (
    id             INTEGER PRIMARY KEY,
    received_at    TEXT NOT NULL,
    request_id     TEXT,
    remote_status  TEXT,
    job_id         INTEGER,                 -- NULL for an orphan (unknown request_id)
    outcome        TEXT NOT NULL,           -- applied | duplicate | stale | orphan | confirming | confirmed
                                            -- | unconfirmed | adopting | adopted | wrong_path
    body           TEXT NOT NULL
    -- path_job, path_attempt: the attempt whose own callback path it arrived on
    -- (…/callback/TOKEN/a/<job>-<attempt>), if any; added by a migration, hence the layout
, path_job INTEGER, path_attempt INTEGER);
CREATE INDEX deliveries_by_request ON deliveries(request_id);
CREATE INDEX deliveries_by_path ON deliveries(path_job);

-- Poll answers that repeat the previous poll answer of the same attempt (same HTTP status, same
-- remote status, same fields but for `*_at` timestamps): the event's `body` is NULL, and its
-- body is the body of event `same_as` with the bytes between its first `prefix` bytes and its
-- last `suffix` bytes replaced by `middle` (a byte-identical answer: prefix = its length,
-- suffix = 0, middle = ''). `show` displays the whole body; the writer checks the rebuilt text
-- equals the answer before storing it so.
CREATE TABLE repeated_bodies (
    event_id  INTEGER PRIMARY KEY,          -- the poll event stored by reference
    same_as   INTEGER NOT NULL,             -- the event whose body it repeats (itself stored whole)
    prefix    INTEGER NOT NULL,             -- bytes kept from the start of that body
    suffix    INTEGER NOT NULL,             -- bytes kept from its end
    middle    TEXT NOT NULL                 -- what this answer has between them
);

-- Every `ledger compact`: answer bodies of events before `before` were dropped, after their
-- facts (HTTP status, remote status, latency, error) were written into the events.
CREATE TABLE compactions (
    id          INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    before      TEXT NOT NULL,              -- events recorded before this time lost their body
    events      INTEGER NOT NULL,           -- how many bodies were dropped
    bytes       INTEGER NOT NULL            -- their total length
);

-- Local files sent through the user's S3-compatible bucket: one row per job and file.
CREATE TABLE uploads (
    id             INTEGER PRIMARY KEY,
    job_id         INTEGER NOT NULL REFERENCES jobs(id),
    local_path     TEXT NOT NULL,           -- the path as given (argument, manifest cell, folder entry)
    resolved_path  TEXT NOT NULL,           -- the same file, absolute and with links resolved
    folder         TEXT NOT NULL,           -- the input folder it came from (report --by folder)
    relative_path  TEXT NOT NULL,           -- its path below `folder`, mirrored in the output folder
    bytes          INTEGER NOT NULL,
    sha256         TEXT NOT NULL,           -- of the file's bytes; the object is named after it
    object_key     TEXT NOT NULL,           -- s3://BUCKET/PREFIX/<sha256>.<ext>, the job's image
    created_at     TEXT NOT NULL,
    uploaded_at    TEXT,                    -- NULL until the object is known to be in the bucket
    put_status     INTEGER,                 -- HTTP status of our PUT; NULL if it was already there
    deleted_at     TEXT                     -- when --delete-uploads or `uploads prune` removed it
);
CREATE INDEX uploads_by_job ON uploads(job_id);
CREATE INDEX uploads_by_object ON uploads(object_key);

-- The texts of the events, whole: `detail` and `body` as stored, or, for an event stored by
-- reference, rebuilt from the rows that hold its facts (see `events`): download and charge
-- details from `outputs` and `attempts`; the `planned` body (what was asked: key, batch,
-- parameters, input size, tags) from `jobs` and `tags`; the `estimate` detail and the
-- `submit_intent` detail and body (the request as sent) from `jobs` and `attempts`. The body
-- of a poll answer stored by reference (`repeated_bodies`) stays NULL here: `show` rebuilds it.
CREATE VIEW event_texts AS
SELECT e.id,
       CASE
           WHEN e.detail IS NOT NULL THEN e.detail
           WHEN e.kind = 'download' AND o.idx IS NOT NULL THEN o.url || ' -> ' || o.path || ' (' || o.bytes
               || ' bytes, ' || coalesce(o.width, 0) || 'x' || coalesce(o.height, 0) || ', sha256 ' || o.sha256 || ')'
           WHEN e.kind = 'charge' AND a.actual_cost IS NOT NULL THEN a.actual_cost || ' USD for '
               || coalesce(a.output_width, 0) || 'x' || coalesce(a.output_height, 0) || ' output at '
               || a.price_per_mp || ' USD/MP'
           WHEN e.kind = 'estimate' AND e.body IS NULL THEN 'input ' || j.input_width || 'x' || j.input_height
               || ' (' || j.size_source || ') at upscale ' || j.upscale || ' at ' || a.price_per_mp
               || ' USD/MP: ' || a.estimated_cost || ' USD'
           WHEN e.kind = 'submit_intent' AND e.body IS NULL THEN 'sending at ' || a.price_per_mp
               || ' USD/MP, estimate ' || coalesce(a.estimated_cost, 'unknown')
       END AS detail,
       CASE
           WHEN e.body IS NOT NULL THEN e.body
           WHEN e.kind = 'planned' AND e.detail IS NULL THEN json_object(
               'batch', j.batch,
               'key', j.key,
               'params', json_object(
                   'background_enhance', json(CASE WHEN j.background_enhance THEN 'true' ELSE 'false' END),
                   'face_upsample', json(CASE WHEN j.face_upsample THEN 'true' ELSE 'false' END),
                   'fidelity', j.fidelity,
                   'image', j.image_url,
                   'upscale', j.upscale,
                   'webhook', j.webhook,
                   'webhook_events_filter', json(j.webhook_events_filter),
                   'webhook_mode', j.webhook_mode,
                   'webhook_url', j.webhook_url),
               'size', json(CASE WHEN j.input_width IS NOT NULL THEN json_array(j.input_width, j.input_height) END),
               'tags', json((SELECT json_group_object(g.key, g.value) FROM
                   (SELECT key, value FROM tags WHERE tags.job_id = e.job_id ORDER BY key) g)))
           WHEN e.kind = 'submit_intent' AND e.detail IS NULL THEN json_patch(json_object(
               'background_enhance', json(CASE WHEN j.background_enhance THEN 'true' ELSE 'false' END),
               'codeformer_fidelity', CAST(j.fidelity AS REAL),
               'face_upsample', json(CASE WHEN j.face_upsample THEN 'true' ELSE 'false' END),
               'image', j.image_url,
               'upscale', j.upscale),
               json_object('webhook', j.webhook, 'webhook_events_filter', json(j.webhook_events_filter)))
       END AS body
FROM events e
LEFT JOIN outputs o ON e.kind = 'download' AND o.job_id = e.job_id AND o.attempt = e.attempt AND o.idx = e.output
LEFT JOIN attempts a ON e.kind IN ('charge', 'estimate', 'submit_intent') AND e.detail IS NULL
    AND a.job_id = e.job_id AND a.attempt = e.attempt
LEFT JOIN jobs j ON e.kind IN ('planned', 'estimate', 'submit_intent') AND e.detail IS NULL AND e.body IS NULL
    AND j.id = e.job_id;
-- The events as text, for any SQLite tool: `at` as RFC 3339 UTC with milliseconds, and the
-- detail and body of events stored by reference from `event_texts`.
CREATE VIEW events_readable AS
SELECT e.id, e.job_id, e.attempt, strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch') AS at,
       e.kind, e.http_status, e.remote_status, e.latency_ms, t.detail, t.body
FROM events e JOIN event_texts t ON t.id = e.id;
-- Jobs and attempts as text, for any SQLite tool: their times as RFC 3339 UTC with milliseconds
-- (a time kept as text by the migration that made them numbers, as it was).
CREATE VIEW jobs_readable AS
SELECT id, key, batch, image_url, fidelity, upscale, background_enhance, face_upsample, webhook,
       webhook_events_filter, webhook_url, webhook_mode, input_width, input_height, size_source, state,
       attempt, request_id, remote_status, next_poll_at, polls, post, output_urls, expects_callbacks,
       reason, error,
       CASE typeof(created_at) WHEN 'integer' THEN strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1000.0, 'unixepoch')
           ELSE created_at END AS created_at,
       CASE typeof(updated_at) WHEN 'integer' THEN strftime('%Y-%m-%dT%H:%M:%fZ', updated_at / 1000.0, 'unixepoch')
           ELSE updated_at END AS updated_at
FROM jobs;
CREATE VIEW attempts_readable AS
SELECT job_id, attempt, request_id, state, price_per_mp, estimated_cost, actual_cost, output_width,
       output_height,
       CASE typeof(submitted_at) WHEN 'integer' THEN strftime('%Y-%m-%dT%H:%M:%fZ', submitted_at / 1000.0, 'unixepoch')
           ELSE submitted_at END AS submitted_at,
       CASE typeof(finished_at) WHEN 'integer' THEN strftime('%Y-%m-%dT%H:%M:%fZ', finished_at / 1000.0, 'unixepoch')
           ELSE finished_at END AS finished_at
FROM attempts;
-- Before a row that an event stored by reference is rebuilt from changes, the event's texts
-- are written out whole into its row (as they read before the change).
CREATE TRIGGER jobs_write_out_event_texts
BEFORE UPDATE OF key, batch, image_url, fidelity, upscale, background_enhance, face_upsample, webhook,
    webhook_events_filter, webhook_url, webhook_mode, input_width, input_height, size_source ON jobs
WHEN OLD.key IS NOT NEW.key OR OLD.batch IS NOT NEW.batch OR OLD.image_url IS NOT NEW.image_url
    OR OLD.fidelity IS NOT NEW.fidelity OR OLD.upscale IS NOT NEW.upscale
    OR OLD.background_enhance IS NOT NEW.background_enhance OR OLD.face_upsample IS NOT NEW.face_upsample
    OR OLD.webhook IS NOT NEW.webhook OR OLD.webhook_events_filter IS NOT NEW.webhook_events_filter
    OR OLD.webhook_url IS NOT NEW.webhook_url OR OLD.webhook_mode IS NOT NEW.webhook_mode
    OR OLD.input_width IS NOT NEW.input_width OR OLD.input_height IS NOT NEW.input_height
    OR OLD.size_source IS NOT NEW.size_source
BEGIN
    UPDATE events SET detail = t.detail, body = t.body FROM event_texts t
    WHERE t.id = events.id AND events.job_id = OLD.id
      AND events.kind IN ('planned', 'estimate', 'submit_intent')
      AND events.detail IS NULL AND events.body IS NULL;
END;
CREATE TRIGGER attempts_write_out_event_texts
BEFORE UPDATE OF price_per_mp, estimated_cost ON attempts
WHEN OLD.price_per_mp IS NOT NEW.price_per_mp OR OLD.estimated_cost IS NOT NEW.estimated_cost
BEGIN
    UPDATE events SET detail = t.detail, body = t.body FROM event_texts t
    WHERE t.id = events.id AND events.job_id = OLD.job_id AND events.attempt = OLD.attempt
      AND events.kind IN ('estimate', 'submit_intent')
      AND events.detail IS NULL AND events.body IS NULL;
END;
CREATE TRIGGER tags_insert_write_out_event_texts BEFORE INSERT ON tags
BEGIN
    UPDATE events SET body = t.body FROM event_texts t
    WHERE t.id = events.id AND events.job_id = NEW.job_id AND events.kind = 'planned'
      AND events.detail IS NULL AND events.body IS NULL;
END;
CREATE TRIGGER tags_update_write_out_event_texts BEFORE UPDATE ON tags
BEGIN
    UPDATE events SET body = t.body FROM event_texts t
    WHERE t.id = events.id AND events.job_id IN (OLD.job_id, NEW.job_id) AND events.kind = 'planned'
      AND events.detail IS NULL AND events.body IS NULL;
END;
CREATE TRIGGER tags_delete_write_out_event_texts BEFORE DELETE ON tags
BEGIN
    UPDATE events SET body = t.body FROM event_texts t
    WHERE t.id = events.id AND events.job_id = OLD.job_id AND events.kind = 'planned'
      AND events.detail IS NULL AND events.body IS NULL;
END;

-- The file's identity ("CFLG" in the header's application_id): it tells a ledger's first page
-- from any other database's, so a write-ahead log of another database is never replayed into it.
PRAGMA application_id = 1128680519;
