//! `ledger compact`: old answer bodies dropped after their facts are written into their
//! events, in one transaction, and each run recorded in `compactions`. Bodies that a later
//! answer's reference (see [`super::bodies`]) still needs are kept.

use super::events::{insert_event, Event};
use super::{Ledger, Result};
use crate::clock;
use rusqlite::params;

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

impl Ledger {
    /// Drops the bodies of gateway answers recorded before `before` (a ledger timestamp), in
    /// one transaction: first each event gets its facts into its own columns (remote status
    /// from the body when missing; the error, if any, into `detail`), then the body goes, and
    /// the run is recorded (`compactions`, and a `compact` event).
    pub fn compact(&mut self, before: &str) -> Result<Compaction> {
        let tx = self.conn.transaction()?;
        let keep = "SELECT r.same_as FROM repeated_bodies r JOIN events k ON k.id = r.event_id
                    WHERE k.at >= ?1";
        let candidates = format!(
            "SELECT id FROM events WHERE at < ?1 AND body IS NOT NULL AND kind IN {ANSWER_KINDS}"
        );
        let kept: i64 = tx.query_row(
            &format!("SELECT count(*) FROM ({candidates}) WHERE id IN ({keep})"),
            [before],
            |r| r.get(0),
        )?;
        let chosen = format!("{candidates} AND id NOT IN ({keep})");
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
        let (events, bytes): (i64, i64) = tx.query_row(
            &format!("SELECT count(*), coalesce(sum(length(CAST(body AS BLOB))), 0) FROM events WHERE id IN ({chosen})"),
            [before],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        // Answers stored as references to those bodies go with them (every one of them is
        // older than `before`: a newer one keeps its body); their error is written first.
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
        tx.execute(
            &format!("UPDATE events SET body = NULL WHERE id IN ({chosen})"),
            [before],
        )?;
        let now = clock::now_stamp();
        tx.execute(
            "INSERT INTO compactions (at, before, events, bytes) VALUES (?1, ?2, ?3, ?4)",
            params![now, before, events, bytes],
        )?;
        insert_event(
            &tx,
            Event::new(None, None, "compact").detail(format!(
                "dropped {events} answer bodies ({bytes} bytes) recorded before {before}; their status, HTTP code, latency and error are in their events"
            )),
            &now,
        )?;
        tx.commit()?;
        Ok(Compaction {
            events: events as u64,
            bytes: bytes as u64,
            kept_for_references: kept as u64,
        })
    }

    /// Stores every body kept as a reference whole again, as ledgers stored them before
    /// `repeated_bodies`: for measuring what references save. Returns the bodies rewritten.
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
        tx.commit()?;
        Ok(n as u64)
    }

    /// Rewrites the file without its free pages (after a compaction).
    pub fn vacuum(&mut self) -> Result<()> {
        self.conn.execute_batch("VACUUM")?;
        Ok(())
    }

    /// The time before which bodies were dropped by the latest `ledger compact`, if any.
    pub fn compacted_before(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT max(before) FROM compactions", [], |r| r.get(0))?)
    }
}
