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
    /// For a download event: the `outputs.idx` of the file its detail describes, so that the
    /// detail can be stored as a reference to that row.
    pub output: Option<i64>,
    /// Its texts say more than the rows of its job hold (a probed estimate names the format
    /// and the bytes read), or soon will not match them (a job planned before its size is
    /// read), so they are stored whole without asking `event_texts` first.
    pub whole: bool,
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
    pub fn output(mut self, idx: i64) -> Self {
        self.output = Some(idx);
        self
    }
    pub fn whole(mut self) -> Self {
        self.whole = true;
        self
    }
}

/// The detail of a download event: what its `outputs` row says.
pub fn download_detail(
    url: &str,
    path: &str,
    bytes: i64,
    size: (Option<u32>, Option<u32>),
    sha256: &str,
) -> String {
    format!(
        "{url} -> {path} ({bytes} bytes, {}x{}, sha256 {sha256})",
        size.0.unwrap_or(0),
        size.1.unwrap_or(0)
    )
}

/// The detail of a charge event: what its `attempts` row says.
pub fn charge_detail(cost: &str, size: (Option<u32>, Option<u32>), per_mp: &str) -> String {
    format!(
        "{cost} USD for {}x{} output at {per_mp} USD/MP",
        size.0.unwrap_or(0),
        size.1.unwrap_or(0)
    )
}

pub(super) fn insert_event(
    tx: &Transaction<'_>,
    event: Event,
    now: &crate::clock::Stamp,
) -> Result<()> {
    let at = now.millis();
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
    let (detail, output) = detail_or_reference(tx, &event)?;
    let body = if reference.is_some() { None } else { body };
    let rebuildable = rebuildable_from_rows(&event, detail, body.as_deref());
    tx.prepare_cached(
        "INSERT INTO events (job_id, attempt, at, kind, http_status, remote_status, latency_ms, detail, body, output)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        event.job_id,
        event.attempt,
        at,
        event.kind,
        event.http_status,
        event.remote_status,
        event.latency_ms.map(|l| l as i64),
        if rebuildable { None } else { detail },
        if rebuildable { None } else { body.as_deref() },
        output
    ])?;
    let id = tx.last_insert_rowid();
    if let Some(reference) = reference {
        super::bodies::store_reference(tx, id, &reference)?;
    }
    if rebuildable {
        keep_reference_if_equal(tx, id, detail, body.as_deref())?;
    }
    Ok(())
}

/// Whether the event is of a kind whose texts `event_texts` rebuilds from the rows of its job,
/// attempt and tags (`planned`: its body; `estimate`: its detail; `submit_intent`: both), so
/// that it may be stored with both NULL.
fn rebuildable_from_rows(event: &Event, detail: Option<&str>, body: Option<&str>) -> bool {
    if event.whole || event.job_id.is_none() || event.attempt.is_none() {
        return false;
    }
    matches!(
        (event.kind, detail.is_some(), body.is_some()),
        ("planned", false, true) | ("estimate", true, false) | ("submit_intent", true, true)
    )
}

/// Keeps event `id` (inserted with detail and body NULL) as a reference when `event_texts`
/// rebuilds exactly the texts it was given; writes them whole otherwise.
fn keep_reference_if_equal(
    tx: &Transaction<'_>,
    id: i64,
    detail: Option<&str>,
    body: Option<&str>,
) -> Result<()> {
    let (rebuilt_detail, rebuilt_body): (Option<String>, Option<String>) = tx
        .prepare_cached("SELECT detail, body FROM event_texts WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if rebuilt_detail.as_deref() != detail || rebuilt_body.as_deref() != body {
        tx.prepare_cached("UPDATE events SET detail = ?2, body = ?3 WHERE id = ?1")?
            .execute(params![id, detail, body])?;
    }
    Ok(())
}

/// The detail to store and the output row it refers to: `(None, Some(idx))` for a download
/// event whose detail is what its `outputs` row says, `(None, None)` for a charge event whose
/// detail is what its `attempts` row says, else the detail whole.
fn detail_or_reference<'e>(
    tx: &Transaction<'_>,
    event: &'e Event,
) -> Result<(Option<&'e str>, Option<i64>)> {
    let whole = (event.detail.as_deref(), None);
    let (Some(detail), Some(job_id), Some(attempt)) =
        (event.detail.as_deref(), event.job_id, event.attempt)
    else {
        return Ok(whole);
    };
    let rebuilt = match (event.kind, event.output) {
        ("download", Some(idx)) => output_detail(tx, job_id, attempt, idx)?,
        ("charge", _) => attempt_charge_detail(tx, job_id, attempt)?,
        _ => None,
    };
    Ok(match rebuilt {
        Some(text) if text == detail => (None, event.output.filter(|_| event.kind == "download")),
        _ => whole,
    })
}

/// What the `outputs` row (job, attempt, idx) says, as a download event's detail.
pub(super) fn output_detail(
    conn: &rusqlite::Connection,
    job_id: i64,
    attempt: i64,
    idx: i64,
) -> Result<Option<String>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached(
            "SELECT url, path, bytes, width, height, sha256 FROM outputs
             WHERE job_id = ?1 AND attempt = ?2 AND idx = ?3",
        )?
        .query_row(params![job_id, attempt, idx], |r| {
            Ok(download_detail(
                &r.get::<_, String>(0)?,
                &r.get::<_, String>(1)?,
                r.get(2)?,
                (r.get(3)?, r.get(4)?),
                &r.get::<_, String>(5)?,
            ))
        })
        .optional()?)
}

/// What the attempt's row says about its charge, as a charge event's detail (`None` before
/// it has a cost and a price).
fn attempt_charge_detail(
    conn: &rusqlite::Connection,
    job_id: i64,
    attempt: i64,
) -> Result<Option<String>> {
    use rusqlite::OptionalExtension;
    let detail = conn
        .prepare_cached(
            "SELECT actual_cost, output_width, output_height, price_per_mp FROM attempts
             WHERE job_id = ?1 AND attempt = ?2",
        )?
        .query_row(params![job_id, attempt], |r| {
            Ok(
                match (
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<String>>(3)?,
                ) {
                    (Some(cost), Some(per_mp)) => {
                        Some(charge_detail(&cost, (r.get(1)?, r.get(2)?), &per_mp))
                    }
                    _ => None,
                },
            )
        })
        .optional()?;
    Ok(detail.flatten())
}

/// Writes whole the detail of the download events that refer to the `outputs` row (job,
/// attempt, idx), before that row changes, so they keep saying what was downloaded.
pub(super) fn write_out_download_details(
    tx: &Transaction<'_>,
    job_id: i64,
    attempt: i64,
    idx: i64,
) -> Result<()> {
    let Some(detail) = output_detail(tx, job_id, attempt, idx)? else {
        return Ok(());
    };
    tx.prepare_cached(
        "UPDATE events SET detail = ?4, output = NULL
         WHERE job_id = ?1 AND attempt = ?2 AND output = ?3 AND kind = 'download' AND detail IS NULL",
    )?
    .execute(params![job_id, attempt, idx, detail])?;
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

#[cfg(test)]
mod tests {
    use crate::ledger::{Ledger, NewJob, ProbedJob, SubmitRecord};
    use crate::params::{JobParams, WebhookMode};
    use rust_decimal::Decimal;

    const TEXTS: &str = "('planned', 'estimate', 'submit_intent')";

    /// The texts of a job's `planned`, `estimate` and `submit_intent` events as `show` reads
    /// them, and as `events_readable` does.
    fn texts(ledger: &Ledger, id: i64) -> Vec<(String, Option<String>, Option<String>)> {
        let shown: Vec<_> = ledger
            .events_of(id)
            .unwrap()
            .into_iter()
            .filter(|e| TEXTS.contains(&format!("'{}'", e.kind)))
            .map(|e| (e.kind, e.detail, e.body))
            .collect();
        let readable: Vec<_> = {
            let mut stmt = ledger
                .conn
                .prepare(&format!(
                    "SELECT kind, detail, body FROM events_readable WHERE job_id = ?1
                     AND kind IN {TEXTS} ORDER BY id"
                ))
                .unwrap();
            stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(shown, readable);
        shown
    }

    fn stored_by_reference(ledger: &Ledger, id: i64) -> i64 {
        ledger
            .conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM events WHERE job_id = ?1 AND kind IN {TEXTS}
                     AND detail IS NULL AND body IS NULL"
                ),
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn job(image: &str, webhooks: bool) -> NewJob {
        let mut params = JobParams::new(image);
        if webhooks {
            params.webhook = Some("https://hooks.test/cb".into());
            params.webhook_events_filter = Some(vec!["completed".into(), "failed".into()]);
            params.webhook_mode = Some(WebhookMode::Terminal);
            params.webhook_url = Some("https://hooks.test/cb".into());
        }
        let mut job = NewJob::new(params);
        job.batch = None;
        job.size = Some((640, 480));
        job.size_source = Some("manifest");
        job.tags = vec![
            ("client".into(), "acme \"west\"".into()),
            ("a".into(), "1".into()),
        ];
        job
    }

    /// What the job's rows already say is not copied into its `planned`, `estimate` and
    /// `submit_intent` events, the texts read back exactly, and they still read the same after
    /// the rows they were rebuilt from changed (tags added, parameters changed, size probed).
    #[test]
    fn event_texts_are_references_to_the_rows_and_survive_their_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("l.db")).unwrap();
        let jobs = [
            job("https://x.test/a.png", false),
            job("https://x.test/b.png", true),
        ];
        let ids: Vec<i64> = ledger
            .enqueue(&jobs)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        let price = Decimal::new(21, 4);
        let records: Vec<SubmitRecord> = jobs
            .iter()
            .zip(&ids)
            .map(|(job, &id)| SubmitRecord {
                job_id: id,
                attempt: 1,
                body: crate::gateway::Gateway::submit_body(&job.params),
                price,
                estimate: Some(Decimal::new(258_048, 8)),
            })
            .collect();
        ledger.mark_submitting(&records).unwrap();
        for (job, &id) in jobs.iter().zip(&ids) {
            let before = texts(&ledger, id);
            assert_eq!(before.len(), 3);
            assert_eq!(stored_by_reference(&ledger, id), 3, "{before:?}");
            let planned: serde_json::Value =
                serde_json::from_str(before[0].2.as_deref().unwrap()).unwrap();
            assert_eq!(planned["tags"]["client"], "acme \"west\"");
            assert_eq!(
                before[2].2.as_deref(),
                Some(crate::gateway::Gateway::submit_body(&job.params).as_str())
            );
            assert_eq!(
                before[2].1.as_deref(),
                Some("sending at 0.0021 USD/MP, estimate 0.00258048")
            );

            ledger
                .conn
                .execute(
                    "INSERT OR REPLACE INTO tags (job_id, key, value) VALUES (?1, 'client', 'other')",
                    [id],
                )
                .unwrap();
            assert_eq!(texts(&ledger, id), before);
            assert_eq!(stored_by_reference(&ledger, id), 2);

            let mut params = job.params.clone();
            params.fidelity = Decimal::new(7, 1);
            ledger.update_params(id, 1, &params, "a hook").unwrap();
            assert_eq!(texts(&ledger, id), before);

            ledger
                .record_probe(
                    &job.params.image,
                    (1024, 768),
                    "png",
                    33,
                    Some(ProbedJob {
                        job_id: id,
                        attempt: 1,
                        upscale: 2,
                    }),
                )
                .unwrap();
            let after = texts(&ledger, id);
            assert_eq!(after[..3], before[..], "{after:?}");
            assert_eq!(stored_by_reference(&ledger, id), 0);
        }
    }
}
