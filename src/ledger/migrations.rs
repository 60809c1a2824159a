//! Schema versions. Version 1 is `schema.sql`; each later version is a new entry in
//! [`MIGRATIONS`] that opens with a comment saying why it exists. Shipped entries are never
//! edited.

use super::{LedgerError, Result};
use rusqlite::Connection;
use std::path::Path;

/// The schema of a new ledger.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// One upgrade.
enum Step {
    /// SQL, run as it is.
    Sql(&'static str),
    /// New declared types for columns of existing tables, whose rows stay where they are:
    /// each table's definition in `sqlite_schema` is replaced by `tables`' text (the same
    /// columns, in the same order, of other types), the schema's version number is raised so
    /// that every connection reads the definitions again, and `then` runs under them.
    Retype {
        tables: &'static [(&'static str, &'static str)],
        then: &'static str,
    },
}

use Step::Sql;

/// Upgrades, in order: `MIGRATIONS[i]` takes a ledger from version `i + 1` to `i + 2`.
const MIGRATIONS: &[Step] = &[
    // A price recorded by mistake could only be outvoted by a later one; `prices remove`
    // withdraws it instead, as a new row here, so the price table itself is never edited.
    // The text is schema.sql's, byte for byte, so a migrated ledger has the same schema.
    Sql("CREATE TABLE price_removals (\n    price_id    INTEGER PRIMARY KEY REFERENCES prices(id),\n    removed_at  TEXT NOT NULL,\n    reason      TEXT\n);"),
    // A manifest row matching a job already in the ledger joins the new batch (and gets its
    // outputs copied into that batch's folder) instead of being left out of it: membership and
    // the copies need their own tables, as a job row names one batch only.
    Sql("CREATE TABLE batch_members (
         batch       TEXT NOT NULL REFERENCES batches(name),
         job_id      INTEGER NOT NULL REFERENCES jobs(id),
         joined_at   TEXT NOT NULL,
         PRIMARY KEY (batch, job_id)
     );
     CREATE INDEX batch_members_by_job ON batch_members(job_id);
     CREATE TABLE member_outputs (
         batch       TEXT NOT NULL,
         job_id      INTEGER NOT NULL REFERENCES jobs(id),
         attempt     INTEGER NOT NULL,
         idx         INTEGER NOT NULL,
         path        TEXT NOT NULL,
         bytes       INTEGER NOT NULL,
         sha256      TEXT NOT NULL,
         placed_at   TEXT NOT NULL,
         PRIMARY KEY (batch, job_id, attempt, idx)
     );"),
    // The file's identity in the header (application_id "CFLG"), as `schema.sql` sets it for a
    // new ledger: the open checks that a write-ahead log beside the file carries it before
    // SQLite may replay the log, so another database's log is refused instead of applied.
    Sql("PRAGMA application_id = 1128680519;"),
    // Ledgers that stay small: a poll answer that repeats the previous one is stored as a
    // reference to it (`repeated_bodies`) instead of a copy, and `ledger compact` records each
    // run (`compactions`) when it drops old answer bodies. Existing rows are kept as they are.
    // The text is schema.sql's, byte for byte.
    Sql(r#"CREATE TABLE repeated_bodies (
    event_id  INTEGER PRIMARY KEY,          -- the poll event stored by reference
    same_as   INTEGER NOT NULL,             -- the event whose body it repeats (itself stored whole)
    prefix    INTEGER NOT NULL,             -- bytes kept from the start of that body
    suffix    INTEGER NOT NULL,             -- bytes kept from its end
    middle    TEXT NOT NULL                 -- what this answer has between them
);

CREATE TABLE compactions (
    id          INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    before      TEXT NOT NULL,              -- events recorded before this time lost their body
    events      INTEGER NOT NULL,           -- how many bodies were dropped
    bytes       INTEGER NOT NULL            -- their total length
);"#),
    // Local files and folders reach the gateway through the user's bucket: each upload (the
    // local path as given and resolved, its hash and object, the PUT's status) needs a record,
    // as a job row names only the object. The text is schema.sql's, byte for byte.
    Sql("CREATE TABLE uploads (\n    id             INTEGER PRIMARY KEY,\n    job_id         INTEGER NOT NULL REFERENCES jobs(id),\n    local_path     TEXT NOT NULL,           -- the path as given (argument, manifest cell, folder entry)\n    resolved_path  TEXT NOT NULL,           -- the same file, absolute and with links resolved\n    folder         TEXT NOT NULL,           -- the input folder it came from (report --by folder)\n    relative_path  TEXT NOT NULL,           -- its path below `folder`, mirrored in the output folder\n    bytes          INTEGER NOT NULL,\n    sha256         TEXT NOT NULL,           -- of the file's bytes; the object is named after it\n    object_key     TEXT NOT NULL,           -- s3://BUCKET/PREFIX/<sha256>.<ext>, the job's image\n    created_at     TEXT NOT NULL,\n    uploaded_at    TEXT,                    -- NULL until the object is known to be in the bucket\n    put_status     INTEGER,                 -- HTTP status of our PUT; NULL if it was already there\n    deleted_at     TEXT                     -- when --delete-uploads or `uploads prune` removed it\n);\nCREATE INDEX uploads_by_job ON uploads(job_id);\nCREATE INDEX uploads_by_object ON uploads(object_key);"),
    // Ledgers that stay small, the events' part: `at` becomes unix milliseconds (6 bytes
    // instead of 24 of text), and a download event can name its `outputs` row (`output`)
    // instead of copying its URL, path, size and hash. SQLite cannot change a column's type,
    // so the table is copied (the old one renamed first, so the new one's SQL text is
    // schema.sql's); every old row keeps its id, facts, detail and body (the old
    // text times are exact to the millisecond). `events_readable` shows the times as text.
    // `attempts_by_submitted` goes: no query uses it (reports filter on
    // `coalesce(submitted_at, created_at)`, `overdue` finds its jobs by state), and it cost
    // 34 bytes per job.
    Sql(r#"ALTER TABLE events RENAME TO events_before_millis;
CREATE TABLE events (
    id             INTEGER PRIMARY KEY,
    job_id         INTEGER,
    attempt        INTEGER,
    at             INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    http_status    INTEGER,
    remote_status  TEXT,
    latency_ms     INTEGER,
    detail         TEXT,
    body           TEXT,
    output         INTEGER
);
INSERT INTO events (id, job_id, attempt, at, kind, http_status, remote_status, latency_ms, detail, body)
SELECT id, job_id, attempt,
       CAST(strftime('%s', at) AS INTEGER) * 1000 + CAST(substr(strftime('%f', at), 4) AS INTEGER),
       kind, http_status, remote_status, latency_ms, detail, body
FROM events_before_millis ORDER BY id;
DROP TABLE events_before_millis;
CREATE INDEX events_by_job ON events(job_id, id);
DROP INDEX IF EXISTS attempts_by_submitted;
CREATE VIEW events_readable AS
SELECT e.id, e.job_id, e.attempt, strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch') AS at,
       e.kind, e.http_status, e.remote_status, e.latency_ms,
       CASE
           WHEN e.detail IS NOT NULL THEN e.detail
           WHEN e.kind = 'download' AND o.idx IS NOT NULL THEN o.url || ' -> ' || o.path || ' (' || o.bytes
               || ' bytes, ' || coalesce(o.width, 0) || 'x' || coalesce(o.height, 0) || ', sha256 ' || o.sha256 || ')'
           WHEN e.kind = 'charge' AND a.actual_cost IS NOT NULL THEN a.actual_cost || ' USD for '
               || coalesce(a.output_width, 0) || 'x' || coalesce(a.output_height, 0) || ' output at '
               || a.price_per_mp || ' USD/MP'
       END AS detail,
       e.body
FROM events e
LEFT JOIN outputs o ON e.kind = 'download' AND o.job_id = e.job_id AND o.attempt = e.attempt AND o.idx = e.output
LEFT JOIN attempts a ON e.kind = 'charge' AND e.detail IS NULL AND a.job_id = e.job_id AND a.attempt = e.attempt;"#),
    // Callbacks are hints confirmed by a status call, and every attempt of a batch with
    // callbacks has its own callback path: a delivery records the attempt whose path it
    // arrived on, so that a ghost submission's callback can be adopted by that attempt.
    Sql("ALTER TABLE deliveries ADD COLUMN path_job INTEGER;
     ALTER TABLE deliveries ADD COLUMN path_attempt INTEGER;
     CREATE INDEX deliveries_by_path ON deliveries(path_job);"),
    // Ledgers that stay small, the texts' part: the `planned` body, the `estimate` detail and
    // the `submit_intent` detail and body repeat facts that `jobs`, `attempts` and `tags`
    // already hold, so they are stored by reference (both NULL) when the view `event_texts`
    // rebuilds them exactly, and triggers write them out whole before one of those rows
    // changes; `events_readable` reads its texts from that view. `tags`, `outputs` and
    // `attempts` become WITHOUT ROWID tables (their key is their primary key, so it is stored
    // once instead of in the table and again in an index, and a report reads attempts in key
    // order without a second lookup per row): their rows are copied, the views dropped first
    // so that the renames leave them alone. Existing events are kept as they are. The text is
    // schema.sql's, byte for byte, but for the copies.
    Sql(r#"DROP VIEW events_readable;
ALTER TABLE tags RENAME TO tags_with_rowid;
CREATE TABLE tags (
    job_id  INTEGER NOT NULL REFERENCES jobs(id),
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
) WITHOUT ROWID;
INSERT INTO tags (job_id, key, value) SELECT job_id, key, value FROM tags_with_rowid;
DROP TABLE tags_with_rowid;
ALTER TABLE outputs RENAME TO outputs_with_rowid;
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
INSERT INTO outputs (job_id, attempt, idx, url, path, bytes, sha256, width, height)
SELECT job_id, attempt, idx, url, path, bytes, sha256, width, height FROM outputs_with_rowid;
DROP TABLE outputs_with_rowid;
ALTER TABLE attempts RENAME TO attempts_with_rowid;
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
    submitted_at    TEXT,                   -- when the submission was sent
    finished_at     TEXT,                   -- when a final state was recorded
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
INSERT INTO attempts (job_id, attempt, request_id, state, price_per_mp, estimated_cost, actual_cost,
                      output_width, output_height, submitted_at, finished_at)
SELECT job_id, attempt, request_id, state, price_per_mp, estimated_cost, actual_cost,
       output_width, output_height, submitted_at, finished_at FROM attempts_with_rowid;
DROP TABLE attempts_with_rowid;

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
END;"#),
    // Indexes that named the row id as their last column stored it twice: an index entry
    // already ends with the row id, so an index on `job_id` alone reads a job's events (and
    // one on `state` a state's jobs) in the same id order, one integer per entry smaller.
    Sql("DROP INDEX events_by_job;
CREATE INDEX events_by_job ON events(job_id);
DROP INDEX jobs_by_state;
CREATE INDEX jobs_by_state ON jobs(state);"),
    // Ledgers that stay small, the times' part: the times of `jobs` and `attempts` become unix
    // milliseconds (six bytes) instead of RFC 3339 text (24), as `events.at` did before them;
    // the views `jobs_readable` and `attempts_readable` show them as text. The text of each
    // existing row is converted; text that is not a time is kept as it was. The tables' and
    // views' texts are schema.sql's, byte for byte.
    Step::Retype {
        tables: &[
            (
                "jobs",
                r#"CREATE TABLE jobs (
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
)"#,
            ),
            (
                "attempts",
                r#"CREATE TABLE attempts (
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
) WITHOUT ROWID"#,
            ),
        ],
        then: r#"UPDATE jobs SET
    created_at = coalesce(CAST(round((julianday(created_at) - 2440587.5) * 86400000.0) AS INTEGER), created_at),
    updated_at = coalesce(CAST(round((julianday(updated_at) - 2440587.5) * 86400000.0) AS INTEGER), updated_at)
WHERE typeof(created_at) = 'text' OR typeof(updated_at) = 'text';
UPDATE attempts SET
    submitted_at = coalesce(CAST(round((julianday(submitted_at) - 2440587.5) * 86400000.0) AS INTEGER), submitted_at),
    finished_at = coalesce(CAST(round((julianday(finished_at) - 2440587.5) * 86400000.0) AS INTEGER), finished_at)
WHERE typeof(submitted_at) = 'text' OR typeof(finished_at) = 'text';
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
FROM attempts;"#,
    },
];

/// The first version whose `jobs` and `attempts` hold their times as unix milliseconds.
pub const TIMES_IN_MILLIS: i64 = 11;

/// The version this program writes.
pub const CURRENT: i64 = 1 + MIGRATIONS.len() as i64;

/// Told before an existing ledger is migrated: its path, its version and [`CURRENT`].
static NOTICE: std::sync::OnceLock<fn(&Path, i64, i64)> = std::sync::OnceLock::new();

/// Sets what is told before an existing ledger is migrated (once per process; the command
/// line says so on stderr, since a large ledger takes seconds).
pub fn on_migrate(notice: fn(&Path, i64, i64)) {
    let _ = NOTICE.set(notice);
}

/// Creates a new ledger or brings an older one up to [`CURRENT`], in one transaction.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let version = check_readable(conn, path)?;
    if version == CURRENT {
        return Ok(());
    }
    if let (true, Some(notice)) = (version > 0, NOTICE.get()) {
        notice(path, version, CURRENT);
    }
    // A migration may rewrite every row of a table: what SQLite keeps aside meanwhile goes to
    // a temporary file, not to memory as the connection's own statements do, so a large
    // ledger migrates in little memory (a million jobs: 19 MB instead of 300 MB).
    let temp_store: i64 = conn.query_row("PRAGMA temp_store", [], |r| r.get(0))?;
    conn.pragma_update(None, "temp_store", "FILE")?;
    let migrated = upgrade(conn, version);
    conn.pragma_update(None, "temp_store", temp_store)?;
    migrated
}

/// Takes a ledger at `version` (0: a new file) to [`CURRENT`], in one transaction.
fn upgrade(conn: &mut Connection, version: i64) -> Result<()> {
    let tx = conn.transaction()?;
    if version == 0 {
        tx.execute_batch(SCHEMA)?;
        seed_prices(&tx)?;
    } else {
        for step in &MIGRATIONS[(version - 1) as usize..] {
            match step {
                Sql(sql) => tx.execute_batch(sql)?,
                Step::Retype { tables, then } => {
                    retype(&tx, tables)?;
                    tx.execute_batch(then)?;
                }
            }
        }
    }
    tx.pragma_update(None, "user_version", CURRENT)?;
    tx.commit()?;
    Ok(())
}

/// Replaces the definitions of `tables` (name, `CREATE TABLE` text) in `sqlite_schema`, as
/// SQLite's documentation describes for changes that leave the stored rows as they are, then
/// checks that every table still has the columns it had, in the same order.
fn retype(tx: &rusqlite::Transaction<'_>, tables: &[(&str, &str)]) -> Result<()> {
    let columns = |table: &str| -> Result<Vec<String>> {
        let mut stmt = tx.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let names = stmt.query_map([], |r| r.get(0))?;
        Ok(names.collect::<rusqlite::Result<_>>()?)
    };
    let before = tables
        .iter()
        .map(|(name, _)| columns(name))
        .collect::<Result<Vec<_>>>()?;
    let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    tx.pragma_update(None, "writable_schema", true)?;
    for (name, sql) in tables {
        tx.execute(
            "UPDATE sqlite_schema SET sql = ?2 WHERE type = 'table' AND name = ?1",
            rusqlite::params![name, sql],
        )?;
    }
    tx.pragma_update(None, "schema_version", version + 1)?;
    tx.pragma_update(None, "writable_schema", false)?;
    for ((name, _), before) in tables.iter().zip(before) {
        let after = columns(name)?;
        if after != before {
            return Err(LedgerError::Corrupt {
                what: "a migrated table's columns",
                value: format!("{name}: {before:?} became {after:?}"),
            });
        }
    }
    Ok(())
}

/// Returns the file's schema version, refusing foreign and newer files.
pub fn check_readable(conn: &Connection, path: &Path) -> Result<i64> {
    let not_a_ledger = |reason: String| LedgerError::NotALedger {
        path: path.to_path_buf(),
        reason,
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| not_a_ledger(e.to_string()))?;
    if version > CURRENT {
        return Err(LedgerError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: CURRENT,
        });
    }
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| not_a_ledger(e.to_string()))?;
    if version == 0 && tables > 0 {
        return Err(not_a_ledger(
            "it is an SQLite database with other tables".into(),
        ));
    }
    if version > 0 {
        let has_jobs: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('jobs', 'events')",
            [],
            |r| r.get(0),
        )?;
        if has_jobs != 2 {
            return Err(not_a_ledger("it lacks the jobs and events tables".into()));
        }
    }
    Ok(version)
}

fn seed_prices(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let price = crate::money::Price::default_rate();
    tx.execute(
        "INSERT INTO prices (model, per_megapixel, effective_from, recorded_at, note)
         VALUES (?1, ?2, ?3, ?4, 'the published rate')",
        rusqlite::params![
            price.model,
            crate::money::exact(price.per_megapixel),
            crate::clock::stamp(price.effective_from),
            crate::clock::now_stamp(),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table's and index's definition, as SQLite reports it (columns in order, with
    /// types, defaults and keys), so two ledgers can be compared whatever the SQL text's layout.
    fn shape(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
            .unwrap();
        let items: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (kind, name, table) in items {
            let pragma = if kind == "table" {
                format!("PRAGMA table_info('{name}')")
            } else {
                format!("PRAGMA index_info('{name}')")
            };
            let mut stmt = conn.prepare(&pragma).unwrap();
            let n = stmt.column_count();
            let cols: Vec<String> = stmt
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join(" "))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            out.push(format!("{kind} {name} on {table}: {}", cols.join("; ")));
        }
        out
    }

    #[test]
    fn times_in_millis_is_the_version_the_retyping_step_reaches() {
        let step = &MIGRATIONS[(TIMES_IN_MILLIS - 2) as usize];
        assert!(matches!(step, Step::Retype { .. }));
    }

    #[test]
    fn a_version_1_ledger_migrates_to_the_schema_of_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let old_path = dir.path().join("v1.db");
        let mut old = Connection::open(&old_path).unwrap();
        old.execute_batch(include_str!("../../tests/fixtures/schema-v1.sql"))
            .unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        migrate(&mut old, &old_path).unwrap();
        let version: i64 = old
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, CURRENT);

        let new_path = dir.path().join("new.db");
        let mut new = Connection::open(&new_path).unwrap();
        migrate(&mut new, &new_path).unwrap();
        assert_eq!(shape(&old), shape(&new));
    }
}
