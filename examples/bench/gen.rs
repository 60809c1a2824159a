//! Synthetic ledgers, written through the library's own calls (enqueue, mark_submitting,
//! record, record_download, record_no_charge) in large transactions, so every job carries the
//! rows and events a real run leaves: planned, estimate, submit_intent, submit_answer, poll,
//! download and charge.

use crate::util::{note, thousands, Res};
use codeformer_ledger::gateway::Gateway;
use codeformer_ledger::ledger::{
    Change, Downloaded, Event, Field, JobState, JobUpdate, Ledger, NewJob, OutputRow, Post,
    SubmitRecord,
};
use codeformer_ledger::params::JobParams;
use rust_decimal::Decimal;
use std::time::Instant;

/// Jobs written per transaction group.
const CHUNK: usize = 10_000;

const SIZES: [(u32, u32); 4] = [(512, 512), (640, 480), (800, 600), (1024, 768)];
const CLIENTS: [&str; 3] = ["acme", "globex", "initech"];

/// What to write into a ledger.
pub struct Plan<'a> {
    pub batch: &'a str,
    /// Jobs that end completed (mostly), failed or error.
    pub finished: usize,
    /// Jobs left PROCESSING at the gateway, their next poll due now.
    pub in_flight: usize,
    /// Completed jobs still owe hooks (`post = 'hooks'`) instead of nothing.
    pub owe_hooks: bool,
    /// PROCESSING polls before the final one (a typical job is polled a few times; every
    /// repeated answer but the first differs from the previous only in `updated_at`, or not
    /// at all).
    pub processing_polls: usize,
    /// The first part of the gateway's request ids, so that ledgers written apart do not
    /// share them by accident.
    pub request_tag: &'a str,
}

/// Writes the plan into `ledger`; returns jobs written per second.
pub fn fill(ledger: &mut Ledger, plan: &Plan<'_>) -> Res<f64> {
    let start = Instant::now();
    let total = plan.finished + plan.in_flight;
    let mut done = 0;
    let mut last_note = Instant::now();
    while done < total {
        let n = CHUNK.min(total - done);
        chunk(ledger, plan, done, n)?;
        done += n;
        if last_note.elapsed().as_secs() >= 10 {
            last_note = Instant::now();
            note(format!(
                "  {} / {} jobs written ({:.0} jobs/s)",
                thousands(done as u64),
                thousands(total as u64),
                done as f64 / start.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn new_job(batch: &str, i: usize) -> NewJob {
    let mut job = NewJob::new(JobParams::new(format!(
        "https://photos.example.com/{batch}/{i:07}.jpg"
    )));
    job.key = Some(format!("{batch}-{i}"));
    job.batch = Some(batch.to_string());
    job.size = Some(SIZES[i % SIZES.len()]);
    job.size_source = Some("manifest");
    job.tags = vec![("client".into(), CLIENTS[i % CLIENTS.len()].into())];
    job
}

fn chunk(ledger: &mut Ledger, plan: &Plan<'_>, first: usize, n: usize) -> Res<()> {
    let jobs: Vec<NewJob> = (first..first + n).map(|i| new_job(plan.batch, i)).collect();
    let ids: Vec<i64> = ledger.enqueue(&jobs)?.iter().map(|e| e.id).collect();
    let price = Decimal::new(21, 4);
    let records: Vec<SubmitRecord> = jobs
        .iter()
        .zip(&ids)
        .map(|(job, &id)| {
            let (w, h) = job.size.unwrap_or((512, 512));
            SubmitRecord {
                job_id: id,
                attempt: 1,
                body: Gateway::submit_body(&job.params),
                price,
                estimate: Some(
                    price * Decimal::from(w as u64 * h as u64 * 4) / Decimal::from(1_000_000),
                ),
            }
        })
        .collect();
    ledger.mark_submitting(&records)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let answers = ids
        .iter()
        .map(|&id| {
            let change = Change {
                state: Some(JobState::Queued),
                request_id: Some(request_id(plan.request_tag, id)),
                remote_status: Some("QUEUED".into()),
                next_poll_at: Field::Set(now_ms + 500),
                ..Change::default()
            };
            let event = Event::new(Some(id), Some(1), "submit_answer")
                .http(Some(202), 41)
                .body(format!(
                    r#"{{"request_id":"{}","status":"QUEUED","polling_url":"https://gateway.example.com/v2/requests/status/{}"}}"#,
                    request_id(plan.request_tag, id),
                    request_id(plan.request_tag, id)
                ));
            JobUpdate::new(id, 1, change, event)
        })
        .collect();
    ledger.record(answers)?;
    for round in 0..plan.processing_polls {
        let polls = ids
            .iter()
            .map(|&id| processing_poll(plan.request_tag, id, round, now_ms))
            .collect();
        ledger.record(polls)?;
    }
    let mut polls = Vec::with_capacity(n);
    let mut downloads = Vec::new();
    let mut errors = Vec::new();
    for (k, &id) in ids.iter().enumerate() {
        let i = first + k;
        let (change, event, outcome) = poll_answer(plan, i, id, now_ms);
        match outcome {
            Outcome::Completed => downloads.push((id, i)),
            Outcome::Error => errors.push(id),
            Outcome::Other => {}
        }
        polls.push(JobUpdate::new(id, 1, change, event));
    }
    ledger.record(polls)?;
    for id in errors {
        ledger.record_no_charge(id, 1, "ERROR jobs are not charged")?;
    }
    let post = plan.owe_hooks.then_some(Post::Hooks);
    let files: Vec<_> = downloads
        .into_iter()
        .map(|(id, i)| {
            let (w, h) = SIZES[i % SIZES.len()];
            let file = OutputRow {
                attempt: 1,
                idx: 0,
                url: format!(
                    "https://cdn.example.com/{}/output.png",
                    request_id(plan.request_tag, id)
                ),
                path: format!("/srv/restored/{}/{i:07}-{id}.png", plan.batch),
                bytes: (w * h) as i64,
                sha256: format!("{:064x}", id as u128 * 0x9e37_79b9_7f4a_7c15),
                width: Some(w * 2),
                height: Some(h * 2),
            };
            Downloaded {
                job_id: id,
                attempt: 1,
                files: vec![file],
                post_after: post,
            }
        })
        .collect();
    ledger.record_downloads(&files)?;
    Ok(())
}

enum Outcome {
    Completed,
    Error,
    Other,
}

/// A PROCESSING answer as the gateway repeats it: `updated_at` moves every other poll.
fn processing_poll(tag: &str, id: i64, round: usize, now_ms: i64) -> JobUpdate {
    let rid = request_id(tag, id);
    let body = format!(
        r#"{{"request_id":"{rid}","status":"PROCESSING","model_id":"codeformer-image-restoration","error":null,"output":null,"created_at":"2026-05-22T13:17:32.110Z","updated_at":"2026-05-22 13:17:{:02}"}}"#,
        33 + round / 2
    );
    let change = Change {
        state: Some(JobState::Processing),
        remote_status: Some("PROCESSING".into()),
        count_poll: true,
        next_poll_at: Field::Set(now_ms),
        ..Change::default()
    };
    let event = Event::new(Some(id), Some(1), "poll")
        .http(Some(200), 12)
        .remote(Some("PROCESSING"))
        .body(body);
    JobUpdate::new(id, 1, change, event)
}

/// The poll that moves job `i` (ledger id `id`) to where the plan wants it.
fn poll_answer(plan: &Plan<'_>, i: usize, id: i64, now_ms: i64) -> (Change, Event, Outcome) {
    let rid = request_id(plan.request_tag, id);
    let (status, state, outcome) = if i >= plan.finished {
        ("PROCESSING", JobState::Processing, Outcome::Other)
    } else if i % 50 == 7 {
        ("FAILED", JobState::Failed, Outcome::Other)
    } else if i % 100 == 13 {
        ("ERROR", JobState::Error, Outcome::Error)
    } else {
        ("COMPLETED", JobState::Completed, Outcome::Completed)
    };
    let media = if matches!(outcome, Outcome::Completed) {
        format!(r#""output":{{"media_url":["https://cdn.example.com/{rid}/output.png"]}},"#)
    } else {
        String::new()
    };
    let body = format!(
        r#"{{"request_id":"{rid}","status":"{status}",{media}"created_at":"2026-05-22T13:17:32.110Z","updated_at":"2026-05-22T13:17:40.512Z"}}"#
    );
    let mut change = Change {
        state: Some(state),
        remote_status: Some(status.into()),
        count_poll: true,
        ..Change::default()
    };
    match outcome {
        Outcome::Completed => {
            change.output_urls = Some(vec![format!("https://cdn.example.com/{rid}/output.png")]);
            change.post = Field::Set(Post::Download);
            change.next_poll_at = Field::Set(now_ms);
            change.finished = true;
        }
        Outcome::Error => {
            change.error = Field::Set("the gateway reported ERROR".into());
            change.next_poll_at = Field::Clear;
            change.finished = true;
        }
        Outcome::Other if state == JobState::Failed => {
            change.error = Field::Set("no face found".into());
            change.next_poll_at = Field::Clear;
            change.finished = true;
        }
        Outcome::Other => change.next_poll_at = Field::Set(now_ms),
    }
    let event = Event::new(Some(id), Some(1), "poll")
        .http(Some(200), 12)
        .remote(Some(status))
        .body(body);
    (change, event, outcome)
}

fn request_id(tag: &str, id: i64) -> String {
    format!("{tag}-{id:08x}-5f2c-4e1a-9b7d")
}
