//! Answer bodies that stay small: a poll answer that only repeats the previous poll answer of
//! the same attempt is stored as a reference (`repeated_bodies`), and `ledger compact` drops
//! old answer bodies once their facts are in the events' own columns.
//!
//! Invariants kept here:
//! - a reference always rebuilds the answer's exact text: the writer rebuilds it and compares
//!   before storing it, and stores a whole copy otherwise;
//! - a reference points at an event whose body is stored whole (never at another reference);
//! - compaction never drops a body that a kept reference still needs, and runs in one
//!   transaction with the record of what it did.

use super::Result;
use rusqlite::{params, OptionalExtension, Transaction};

/// How a new answer's body is rebuilt from an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reference {
    pub same_as: i64,
    pub prefix: usize,
    pub suffix: usize,
    pub middle: String,
}

/// The body `base` with its bytes between `prefix` and `len - suffix` replaced by `middle`;
/// `None` when the numbers do not fit `base` (a reference to a body since dropped or edited).
pub fn rebuild(base: &str, prefix: usize, suffix: usize, middle: &str) -> Option<String> {
    let end = base.len().checked_sub(suffix)?;
    if prefix > end || !base.is_char_boundary(prefix) || !base.is_char_boundary(end) {
        return None;
    }
    Some(format!("{}{middle}{}", &base[..prefix], &base[end..]))
}

/// Whether `body` repeats the answer of the attempt's previous poll (same HTTP status, same
/// remote status, same JSON fields but for top-level `*_at` timestamps), and how to rebuild it.
pub(super) fn repeat_of(
    tx: &Transaction<'_>,
    job_id: i64,
    attempt: i64,
    answer: (Option<u16>, Option<&str>),
    body: &str,
) -> Result<Option<Reference>> {
    let previous: Option<(Option<i64>, Option<String>, i64)> = tx
        .prepare_cached(
            "SELECT e.http_status, e.remote_status, coalesce(r.same_as, e.id)
             FROM events e LEFT JOIN repeated_bodies r ON r.event_id = e.id
             WHERE e.job_id = ?1 AND e.kind = 'poll' AND e.attempt = ?2
             ORDER BY e.id DESC LIMIT 1",
        )?
        .query_row(params![job_id, attempt], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((http, remote, base_id)) = previous else {
        return Ok(None);
    };
    if http != answer.0.map(i64::from) || remote.as_deref() != answer.1 {
        return Ok(None);
    }
    let base: Option<String> = tx
        .prepare_cached("SELECT body FROM events WHERE id = ?1")?
        .query_row([base_id], |r| r.get(0))
        .optional()?
        .flatten();
    let Some(base) = base else {
        return Ok(None);
    };
    if base != body && !same_but_timestamps(&base, body) {
        return Ok(None);
    }
    let reference = diff(base_id, &base, body);
    let rebuilt = rebuild(&base, reference.prefix, reference.suffix, &reference.middle);
    Ok((rebuilt.as_deref() == Some(body)).then_some(reference))
}

pub(super) fn store_reference(tx: &Transaction<'_>, event_id: i64, r: &Reference) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO repeated_bodies (event_id, same_as, prefix, suffix, middle)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        event_id,
        r.same_as,
        r.prefix as i64,
        r.suffix as i64,
        r.middle
    ])?;
    Ok(())
}

/// Two JSON objects with the same keys and the same values, except for top-level keys ending
/// in `_at` (the gateway's timestamps).
fn same_but_timestamps(a: &str, b: &str) -> bool {
    let parse = |t: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(t);
    let (Ok(a), Ok(b)) = (parse(a), parse(b)) else {
        return false;
    };
    a.len() == b.len()
        && a.iter().all(|(k, v)| match b.get(k) {
            None => false,
            Some(w) => k.ends_with("_at") || v == w,
        })
}

/// The shortest middle that turns `base` into `body`, keeping their common start and end.
fn diff(same_as: i64, base: &str, body: &str) -> Reference {
    let (a, b) = (base.as_bytes(), body.as_bytes());
    let mut prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    while !body.is_char_boundary(prefix) || !base.is_char_boundary(prefix) {
        prefix -= 1;
    }
    let room = a.len().min(b.len()) - prefix;
    let mut suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(room)
        .take_while(|(x, y)| x == y)
        .count();
    while !body.is_char_boundary(b.len() - suffix) || !base.is_char_boundary(a.len() - suffix) {
        suffix -= 1;
    }
    Reference {
        same_as,
        prefix,
        suffix,
        middle: body[prefix..b.len() - suffix].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Change, NewJob};
    use crate::ledger::{Compaction, Event, Ledger};

    fn at(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        crate::clock::parse_remote(text)
    }

    fn poll(ledger: &mut Ledger, id: i64, status: &str, body: &str) {
        let event = Event::new(Some(id), Some(1), "poll")
            .http(Some(200), 7)
            .remote(Some(status))
            .body(body);
        ledger
            .record(vec![super::super::JobUpdate::new(
                id,
                1,
                Change::default(),
                event,
            )])
            .unwrap();
    }

    fn body(status: &str, updated: &str, extra: &str) -> String {
        format!(
            r#"{{"request_id":"r-1","status":"{status}","model_id":"m","error":{extra},"created_at":"2026-05-22T13:17:32.110Z","updated_at":"{updated}"}}"#
        )
    }

    /// Repeated answers cost a reference each, every body reads back exactly, and a
    /// compaction keeps what a newer reference still needs.
    #[test]
    fn repeated_polls_are_references_and_compaction_keeps_what_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("l.db")).unwrap();
        // With its size known when it is planned, so that its `planned` text is a reference.
        let mut job = NewJob::new(crate::params::JobParams::new("https://x.test/a.png"));
        job.size = Some((100, 100));
        job.size_source = Some("given");
        let id = ledger.enqueue(&[job]).unwrap()[0].id;
        let bodies = [
            (
                "2026-05-01T10:00:00Z",
                "QUEUED",
                body("QUEUED", "2026-05-22 13:17:32", "null"),
            ),
            (
                "2026-05-01T10:00:01Z",
                "PROCESSING",
                body("PROCESSING", "2026-05-22 13:17:33", "null"),
            ),
            (
                "2026-05-01T10:00:02Z",
                "PROCESSING",
                body("PROCESSING", "2026-05-22 13:17:33", "null"),
            ),
            (
                "2026-05-01T10:00:03Z",
                "PROCESSING",
                body("PROCESSING", "2026-05-22 13:17:39", "null"),
            ),
            (
                "2026-06-01T10:00:04Z",
                "PROCESSING",
                body("PROCESSING", "2026-05-22 13:17:40", "null"),
            ),
            (
                "2026-06-01T10:00:05Z",
                "FAILED",
                body("FAILED", "2026-05-22 13:17:41", "\"no face\""),
            ),
            (
                "2026-06-01T10:00:06Z",
                "FAILED",
                body("FAILED", "2026-05-22 13:17:41", "\"no face!\""),
            ),
        ];
        for (time, status, text) in &bodies {
            crate::clock::pin_thread(at(time));
            poll(&mut ledger, id, status, text);
        }
        crate::clock::pin_thread(None);
        let refs: i64 = ledger
            .conn
            .query_row("SELECT count(*) FROM repeated_bodies", [], |r| r.get(0))
            .unwrap();
        assert_eq!(refs, 3, "three PROCESSING answers repeat the first one");
        let middles: Vec<String> = {
            let mut stmt = ledger
                .conn
                .prepare("SELECT middle FROM repeated_bodies ORDER BY event_id")
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(|m| m.unwrap())
                .collect()
        };
        assert_eq!(middles, ["", "9", "40"]);
        let polls = |ledger: &Ledger| -> Vec<Option<String>> {
            ledger
                .events_of(id)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == "poll")
                .map(|e| e.body)
                .collect()
        };
        let want: Vec<Option<String>> = bodies.iter().map(|b| Some(b.2.clone())).collect();
        assert_eq!(polls(&ledger), want);
        let copy = dir.path().join("copy.db");
        std::fs::copy(dir.path().join("l.db"), &copy).unwrap();
        std::fs::copy(dir.path().join("l.db-wal"), dir.path().join("copy.db-wal")).unwrap();
        let mut expanded = Ledger::open(&copy).unwrap();
        let by_reference = "SELECT count(*) FROM events WHERE detail IS NULL AND body IS NULL
                            AND kind IN ('planned', 'estimate', 'submit_intent')";
        let texts: i64 = expanded
            .conn
            .query_row(by_reference, [], |r| r.get(0))
            .unwrap();
        assert!(texts >= 1, "the planned body is stored by reference");
        assert_eq!(expanded.expand_references().unwrap(), 3 + texts as u64);
        let left: i64 = expanded
            .conn
            .query_row(by_reference, [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(polls(&expanded), want);

        // Compacting May drops the QUEUED body and the PROCESSING ones stored by reference,
        // but keeps the PROCESSING body that June's reference rebuilds from.
        let done = ledger.compact("2026-05-15T00:00:00.000Z").unwrap();
        assert_eq!(
            done,
            Compaction {
                events: 1,
                bytes: bodies[0].2.len() as u64,
                kept_for_references: 1
            }
        );
        let after = polls(&ledger);
        assert_eq!(after[0], None);
        assert_eq!(after[1..], want[1..]);
        let remote: Option<String> = ledger
            .conn
            .query_row(
                "SELECT remote_status FROM events WHERE kind = 'poll' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(remote.as_deref(), Some("QUEUED"));
        // Everything before July: the facts stay in the events, the error in the detail.
        ledger.compact("2026-07-01T00:00:00.000Z").unwrap();
        let events = ledger.events_of(id).unwrap();
        let polls: Vec<_> = events.iter().filter(|e| e.kind == "poll").collect();
        assert_eq!(polls.len(), 7);
        assert!(polls
            .iter()
            .all(|e| e.body.is_none() && e.http_status == Some(200) && e.latency_ms == Some(7)));
        assert_eq!(polls[5].detail.as_deref(), Some("error: no face"));
        assert_eq!(polls[6].detail.as_deref(), Some("error: no face!"));
        let runs: i64 = ledger
            .conn
            .query_row("SELECT count(*) FROM compactions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(runs, 2);
        assert_eq!(
            ledger.compacted_before().unwrap().as_deref(),
            Some("2026-07-01T00:00:00.000Z")
        );
    }

    #[test]
    fn a_diff_rebuilds_the_body_exactly() {
        let base = r#"{"status":"PROCESSING","updated_at":"2026-05-22 13:17:32","x":"é"}"#;
        for body in [
            base.to_string(),
            base.replace("13:17:32", "13:19:03"),
            base.replace("13:17:32", "13:17:3é"),
            base.replace("\"x\":\"é\"", "\"x\":\"è\""),
        ] {
            let r = diff(1, base, &body);
            assert_eq!(rebuild(base, r.prefix, r.suffix, &r.middle).unwrap(), body);
        }
        let r = diff(1, base, base);
        assert_eq!((r.prefix, r.suffix, r.middle.as_str()), (base.len(), 0, ""));
        let r = diff(1, base, &base.replace("13:17:32", "13:19:03"));
        assert_eq!(r.middle, "9:03");
    }

    #[test]
    fn only_timestamps_may_differ() {
        let a = r#"{"status":"PROCESSING","updated_at":"1","output":null}"#;
        assert!(same_but_timestamps(
            a,
            r#"{"status":"PROCESSING","updated_at":"2","output":null}"#
        ));
        assert!(!same_but_timestamps(
            a,
            r#"{"status":"PROCESSING","updated_at":"1","output":{}}"#
        ));
        assert!(!same_but_timestamps(
            a,
            r#"{"status":"PROCESSING","updated_at":"1"}"#
        ));
        assert!(!same_but_timestamps(a, "not json"));
        assert!(rebuild("abc", 2, 2, "").is_none());
    }
}
