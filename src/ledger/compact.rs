//! `ledger compact`: old answer bodies dropped after their facts are written into their
//! events, in one transaction, and each run recorded in `compactions`. Bodies that a later
//! answer's reference (see [`super::bodies`]) still needs are kept.

use super::events::{insert_event, Event};
use super::{Ledger, Result};
use crate::clock;
use rusqlite::{params, Transaction};

/// What `ledger compact` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Compaction {
    /// Answer bodies dropped.
    pub events: u64,
    /// Their total length in bytes.
    pub bytes: u64,
    /// Bodies kept because a later answer's reference still needs them.
    pub kept_for_references: u64,
}

/// The kinds of event whose body is a gateway answer (raw, and repeated in the event's columns).
const ANSWER_KINDS: &str = "('poll', 'submit_answer', 'callback')";

/// The bodies that an answer recorded at or after `?1` refers to.
const KEEP: &str = "SELECT r.same_as FROM repeated_bodies r JOIN events k ON k.id = r.event_id
                    WHERE k.at >= ?1";

impl Ledger {
    /// Drops the bodies of gateway answers recorded before `before` (a ledger timestamp), in
    /// one transaction: first each event gets its facts into its own columns (remote status
    /// from the body when missing; the error, if any, into `detail`), then the body goes, and
    /// the run is recorded (`compactions`, and a `compact` event).
    pub fn compact(&mut self, before_stamp: &str) -> Result<Compaction> {
        // Events carry unix milliseconds.
        let before =
            clock::stamp_millis(before_stamp).ok_or_else(|| super::LedgerError::Corrupt {
                what: "compaction time",
                value: before_stamp.to_string(),
            })?;
        let tx = self.conn.transaction()?;
        let candidates = format!(
            "SELECT id FROM events WHERE at < ?1 AND body IS NOT NULL AND kind IN {ANSWER_KINDS}"
        );
        let kept: i64 = tx.query_row(
            &format!("SELECT count(*) FROM ({candidates}) WHERE id IN ({KEEP})"),
            [before],
            |r| r.get(0),
        )?;
        let chosen = format!("{candidates} AND id NOT IN ({KEEP})");
        write_facts_into_events(&tx, &chosen, before)?;
        let (events, bytes): (i64, i64) = tx.query_row(
            &format!("SELECT count(*), coalesce(sum(length(CAST(body AS BLOB))), 0) FROM events WHERE id IN ({chosen})"),
            [before],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        drop_references_to(&tx, &chosen, before)?;
        tx.execute(
            &format!("UPDATE events SET body = NULL WHERE id IN ({chosen})"),
            [before],
        )?;
        record_compaction(&tx, before_stamp, events, bytes)?;
        tx.commit()?;
        Ok(Compaction {
            events: events as u64,
            bytes: bytes as u64,
            kept_for_references: kept as u64,
        })
    }

    /// Stores every body kept as a reference whole again, as ledgers stored them before
    /// `repeated_bodies`, and the `planned`, `estimate` and `submit_intent` texts rebuilt by
    /// `event_texts`: for measuring what references save. Returns the events rewritten.
    #[doc(hidden)]
    pub fn expand_references(&mut self) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE events SET body = (
                 SELECT CAST(substr(CAST(b.body AS BLOB), 1, r.prefix) || CAST(r.middle AS BLOB)
                        || substr(CAST(b.body AS BLOB), length(CAST(b.body AS BLOB)) - r.suffix + 1) AS TEXT)
                 FROM repeated_bodies r JOIN events b ON b.id = r.same_as WHERE r.event_id = events.id)
             WHERE id IN (SELECT event_id FROM repeated_bodies)",
            [],
        )?;
        tx.execute("DELETE FROM repeated_bodies", [])?;
        let texts = tx.execute(
            "UPDATE events SET detail = t.detail, body = t.body FROM event_texts t
             WHERE t.id = events.id AND events.kind IN ('planned', 'estimate', 'submit_intent')
               AND events.detail IS NULL AND events.body IS NULL",
            [],
        )?;
        tx.commit()?;
        Ok((n + texts) as u64)
    }

    /// Rewrites the file without its free pages (after a compaction).
    pub fn vacuum(&mut self) -> Result<()> {
        self.conn.execute_batch("VACUUM")?;
        Ok(())
    }

    /// Bytes on disk of each table and index (its pages, from SQLite's `dbstat`), largest
    /// first: for measuring where a ledger's size goes.
    #[doc(hidden)]
    pub fn bytes_by_table(&self) -> Result<Vec<(String, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC, 1")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The time before which bodies were dropped by the latest `ledger compact`, if any.
    pub fn compacted_before(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT max(before) FROM compactions", [], |r| r.get(0))?)
    }
}

/// Writes each chosen event's facts into its own columns before its body goes: the remote
/// status from the body when missing, and the error, if any, into `detail`.
fn write_facts_into_events(tx: &Transaction<'_>, chosen: &str, before: i64) -> Result<()> {
    tx.execute(
        &format!(
            "UPDATE events SET
               remote_status = coalesce(remote_status,
                   CASE WHEN json_valid(body) THEN json_extract(body, '$.status') END),
               detail = CASE
                   WHEN json_valid(body) AND json_type(body, '$.error') = 'text'
                   THEN coalesce(detail || '; ', '') || 'error: ' || json_extract(body, '$.error')
                   ELSE detail END
             WHERE id IN ({chosen})"
        ),
        [before],
    )?;
    Ok(())
}

/// Answers stored as references to the chosen bodies go with them (every one of them is
/// older than `before`: a newer one keeps its body); their error is written first.
fn drop_references_to(tx: &Transaction<'_>, chosen: &str, before: i64) -> Result<()> {
    tx.execute(
        &format!(
            "UPDATE events SET detail = coalesce(events.detail || '; ', '') || 'error: '
                 || json_extract(src.body, '$.error')
             FROM (SELECT r.event_id, b.body FROM repeated_bodies r JOIN events b ON b.id = r.same_as
                   WHERE r.same_as IN ({chosen})) AS src
             WHERE events.id = src.event_id AND json_valid(src.body)
               AND json_type(src.body, '$.error') = 'text'"
        ),
        [before],
    )?;
    tx.execute(
        &format!("DELETE FROM repeated_bodies WHERE same_as IN ({chosen})"),
        [before],
    )?;
    Ok(())
}

/// Records the run, in `compactions` and as a `compact` event.
fn record_compaction(tx: &Transaction<'_>, before: &str, events: i64, bytes: i64) -> Result<()> {
    let now = clock::Stamp::now();
    tx.execute(
        "INSERT INTO compactions (at, before, events, bytes) VALUES (?1, ?2, ?3, ?4)",
        params![now, before, events, bytes],
    )?;
    insert_event(
        tx,
        Event::new(None, None, "compact").detail(format!(
            "dropped {events} answer bodies ({bytes} bytes) recorded before {before}; their status, HTTP code, latency and error are in their events"
        )),
        &now,
    )?;
    Ok(())
}
