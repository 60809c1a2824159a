//! Events: the append-only record that explains every change, and how one is written.
//! A leaf of the ledger: every other part that writes an event uses it.

use super::Result;
use rusqlite::{params, Transaction};

/// Largest answer body kept in an event, in bytes; longer bodies are cut and marked.
pub const MAX_EVENT_BODY: usize = 16 * 1024;

/// One entry of the append-only record.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub job_id: Option<i64>,
    pub attempt: Option<i64>,
    pub kind: &'static str,
    pub http_status: Option<u16>,
    pub remote_status: Option<String>,
    pub latency_ms: Option<u64>,
    pub detail: Option<String>,
    pub body: Option<String>,
}

impl Event {
    pub fn new(job_id: Option<i64>, attempt: Option<i64>, kind: &'static str) -> Self {
        Event {
            job_id,
            attempt,
            kind,
            ..Event::default()
        }
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn http(mut self, status: Option<u16>, latency_ms: u64) -> Self {
        self.http_status = status;
        self.latency_ms = Some(latency_ms);
        self
    }
    pub fn remote(mut self, status: Option<&str>) -> Self {
        self.remote_status = status.map(str::to_string);
        self
    }
}

pub(super) fn insert_event(tx: &Transaction<'_>, event: Event, now: &str) -> Result<()> {
    let body = event.body.as_deref().map(cap_body);
    let reference = match (&body, event.kind, event.job_id, event.attempt) {
        (Some(body), "poll", Some(job_id), Some(attempt)) => super::bodies::repeat_of(
            tx,
            job_id,
            attempt,
            (event.http_status, event.remote_status.as_deref()),
            body,
        )?,
        _ => None,
    };
    tx.prepare_cached(
        "INSERT INTO events (job_id, attempt, at, kind, http_status, remote_status, latency_ms, detail, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        event.job_id,
        event.attempt,
        now,
        event.kind,
        event.http_status,
        event.remote_status,
        event.latency_ms.map(|l| l as i64),
        event.detail,
        if reference.is_some() { None } else { body }
    ])?;
    if let Some(reference) = reference {
        super::bodies::store_reference(tx, tx.last_insert_rowid(), &reference)?;
    }
    Ok(())
}

/// Cuts an answer body to `MAX_EVENT_BODY` (16 KiB) on a character boundary.
pub fn cap_body(body: &str) -> String {
    if body.len() <= MAX_EVENT_BODY {
        return body.to_string();
    }
    let mut end = MAX_EVENT_BODY;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes cut]", &body[..end], body.len() - end)
}
