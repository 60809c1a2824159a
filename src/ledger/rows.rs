//! The rows the ledger reads and writes: jobs, their outputs and events, as plain data, and
//! how a job row is read from SQL. A leaf: it uses nothing else of the ledger but the state.

use super::JobState;
use crate::clock::stamp_of_column;
use crate::params::{JobParams, WebhookMode};
use rusqlite::Row;
use rust_decimal::Decimal;
use serde::Serialize;
use std::str::FromStr;

/// A job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub params: JobParams,
    /// The idempotency key; `None` derives one from the URL and parameters.
    pub key: Option<String>,
    pub batch: Option<String>,
    /// Input size known without the network (`--size`, manifest columns).
    pub size: Option<(u32, u32)>,
    pub size_source: Option<&'static str>,
    pub tags: Vec<(String, String)>,
    /// The local file whose object `params.image` names (a locator `s3://BUCKET/KEY`), recorded
    /// in `uploads` with the job.
    pub local: Option<crate::storage::local::LocalFile>,
}

impl NewJob {
    pub fn new(params: JobParams) -> Self {
        NewJob {
            params,
            key: None,
            batch: None,
            size: None,
            size_source: None,
            tags: Vec::new(),
            local: None,
        }
    }

    pub fn key(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| self.params.derived_key())
    }
}

/// One job with its current attempt, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub key: String,
    pub batch: Option<String>,
    pub state: JobState,
    pub attempt: i64,
    pub image_url: String,
    pub fidelity: Decimal,
    pub upscale: u32,
    pub background_enhance: bool,
    pub face_upsample: bool,
    pub webhook: Option<String>,
    pub webhook_events_filter: Option<Vec<String>>,
    pub webhook_url: Option<String>,
    pub webhook_mode: Option<String>,
    pub input_width: Option<u32>,
    pub input_height: Option<u32>,
    pub size_source: Option<String>,
    pub request_id: Option<String>,
    pub remote_status: Option<String>,
    pub next_poll_at: Option<i64>,
    pub polls: i64,
    pub post: Option<String>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub output_urls: Vec<String>,
    pub expects_callbacks: bool,
    pub price_per_mp: Option<Decimal>,
    pub estimated_cost: Option<Decimal>,
    pub actual_cost: Option<Decimal>,
    pub output_width: Option<u32>,
    pub output_height: Option<u32>,
    pub submitted_at: Option<String>,
    pub finished_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl JobRow {
    /// The post-processing this job still owes, read from `post`.
    pub fn owes(&self) -> Option<super::Post> {
        super::Post::parse(self.post.as_deref())
    }

    /// The API parameters of this job.
    pub fn params(&self) -> JobParams {
        JobParams {
            image: self.image_url.clone(),
            fidelity: self.fidelity,
            upscale: self.upscale,
            background_enhance: self.background_enhance,
            face_upsample: self.face_upsample,
            webhook: self.webhook.clone(),
            webhook_events_filter: self.webhook_events_filter.clone(),
            webhook_url: self.webhook_url.clone(),
            webhook_mode: self
                .webhook_mode
                .as_deref()
                .and_then(|m| WebhookMode::from_str(m).ok()),
        }
    }

    pub fn input_size(&self) -> Option<(u32, u32)> {
        Some((self.input_width?, self.input_height?))
    }
}

/// One event of the append-only record.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub job_id: Option<i64>,
    pub attempt: Option<i64>,
    pub at: String,
    pub kind: String,
    pub http_status: Option<i64>,
    pub remote_status: Option<String>,
    pub latency_ms: Option<i64>,
    pub detail: Option<String>,
    /// The answer's body, whole, also when it is stored as a reference to an earlier one.
    pub body: Option<String>,
    /// The earlier event whose body this one repeats (see `repeated_bodies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_as: Option<i64>,
}

/// A downloaded output file.
#[derive(Debug, Clone, Serialize)]
pub struct OutputRow {
    pub attempt: i64,
    pub idx: i64,
    pub url: String,
    pub path: String,
    pub bytes: i64,
    pub sha256: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub states: Vec<JobState>,
    pub batch: Option<String>,
    pub limit: Option<usize>,
}

pub(super) const JOB_COLUMNS: &str = "j.id, j.key, j.batch, j.state, j.attempt, j.image_url, \
    j.fidelity, j.upscale, j.background_enhance, j.face_upsample, j.webhook, \
    j.webhook_events_filter, j.webhook_url, j.webhook_mode, j.input_width, j.input_height, \
    j.size_source, j.request_id, j.remote_status, j.next_poll_at, j.polls, j.post, j.reason, \
    j.error, coalesce(j.output_urls, (SELECT json_group_array(url) FROM (SELECT url FROM outputs o \
    WHERE o.job_id = j.id AND o.attempt = j.attempt ORDER BY o.idx))), j.expects_callbacks, a.price_per_mp, a.estimated_cost, \
    a.actual_cost, a.output_width, a.output_height, a.submitted_at, a.finished_at, \
    j.created_at, j.updated_at";

pub(super) const JOB_FROM: &str =
    "FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt";

fn decimal(value: Option<String>) -> rusqlite::Result<Option<Decimal>> {
    value
        .map(|text| {
            Decimal::from_str(&text).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            })
        })
        .transpose()
}

pub(super) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRow> {
    let state: String = row.get(3)?;
    let filter: Option<String> = row.get(11)?;
    let urls: Option<String> = row.get(24)?;
    Ok(JobRow {
        id: row.get(0)?,
        key: row.get(1)?,
        batch: row.get(2)?,
        state: JobState::from_str(&state).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        attempt: row.get(4)?,
        image_url: row.get(5)?,
        fidelity: decimal(row.get(6)?)?.unwrap_or_default(),
        upscale: row.get(7)?,
        background_enhance: row.get(8)?,
        face_upsample: row.get(9)?,
        webhook: row.get(10)?,
        webhook_events_filter: filter.and_then(|f| serde_json::from_str(&f).ok()),
        webhook_url: row.get(12)?,
        webhook_mode: row.get(13)?,
        input_width: row.get(14)?,
        input_height: row.get(15)?,
        size_source: row.get(16)?,
        request_id: row.get(17)?,
        remote_status: row.get(18)?,
        next_poll_at: row.get(19)?,
        polls: row.get(20)?,
        post: row.get(21)?,
        reason: row.get(22)?,
        error: row.get(23)?,
        output_urls: urls
            .and_then(|u| serde_json::from_str(&u).ok())
            .unwrap_or_default(),
        expects_callbacks: row.get(25)?,
        price_per_mp: decimal(row.get(26)?)?,
        estimated_cost: decimal(row.get(27)?)?,
        actual_cost: decimal(row.get(28)?)?,
        output_width: row.get(29)?,
        output_height: row.get(30)?,
        submitted_at: stamp_of_column(row.get_ref(31)?),
        finished_at: stamp_of_column(row.get_ref(32)?),
        created_at: stamp_of_column(row.get_ref(33)?).unwrap_or_default(),
        updated_at: stamp_of_column(row.get_ref(34)?).unwrap_or_default(),
    })
}

pub(super) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: row.get(0)?,
        job_id: row.get(1)?,
        attempt: row.get(2)?,
        // Unix milliseconds; text in a ledger from before that, opened without migrating.
        at: match row.get_ref(3)? {
            rusqlite::types::ValueRef::Integer(ms) => crate::clock::stamp_of_millis(ms),
            other => other.as_str().map(str::to_string).unwrap_or_default(),
        },
        kind: row.get(4)?,
        http_status: row.get(5)?,
        remote_status: row.get(6)?,
        latency_ms: row.get(7)?,
        detail: row.get(8)?,
        body: row.get(9)?,
        same_as: None,
    })
}
