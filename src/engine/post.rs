//! Lua hooks as the engine's post-processor: which hooks a job owes, the job table they get,
//! and the record of every run. Exactly once: a run is committed as `running` before the call
//! and finished after it; a hook whose latest run is `ok` never runs again for that job and
//! attempt, and one left `running` by a crash runs again on resume with `rerun = true`.

use super::{PostProcessor, SubmitVerdict};
use crate::hooks::{HookConfig, HookEffect, HookError, HookFn, HookHost, SubmitDecision};
use crate::ledger::{Event, FileOp, JobRow, JobState, Ledger, LedgerError};
use crate::money;
use serde_json::{json, Value};

/// Runs the hook files of a run.
pub struct LuaHooks {
    host: HookHost,
    names: Vec<String>,
}

impl LuaHooks {
    pub fn start(config: HookConfig) -> Result<LuaHooks, HookError> {
        let names = config
            .files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        Ok(LuaHooks {
            host: HookHost::start(config)?,
            names,
        })
    }

    /// Calls `func` of file `idx` unless its latest run for this job (or batch) succeeded;
    /// returns the outcome when it ran.
    fn call_once(
        &mut self,
        ledger: &mut Ledger,
        idx: usize,
        func: HookFn,
        (job, batch): (Option<&JobRow>, Option<&str>),
        arg: Value,
        retry_failed: bool,
    ) -> Result<Option<crate::hooks::HookOutcome>, LedgerError> {
        let file = self.names[idx].clone();
        let key = job.map(|j| (j.id, j.attempt));
        let status = ledger.hook_run_status(key, batch, &file, func.name())?;
        let rerun = match status.as_deref() {
            Some("ok") => return Ok(None),
            Some("failed") if !retry_failed => return Ok(None),
            Some("running") => true,
            _ => false,
        };
        let arg = with_rerun(arg, rerun);
        let run_id = ledger.start_hook_run(key, batch, &file, func.name())?;
        let outcome = self.host.call(idx, func, &arg);
        record_outcome(ledger, run_id, key, &file, func, &outcome)?;
        Ok(Some(outcome))
    }
}

fn record_outcome(
    ledger: &mut Ledger,
    run_id: i64,
    key: Option<(i64, i64)>,
    file: &str,
    func: HookFn,
    outcome: &crate::hooks::HookOutcome,
) -> Result<(), LedgerError> {
    let (job_id, attempt) = (key.map(|k| k.0), key.map(|k| k.1));
    let mut events = Vec::new();
    let mut tags = Vec::new();
    let mut files = Vec::new();
    for effect in &outcome.effects {
        match effect {
            HookEffect::Log { level, message } => {
                log_line(level.as_str(), file, message);
                events.push(
                    Event::new(job_id, attempt, "hook_log")
                        .detail(format!("{} {file}: {message}", level.as_str())),
                );
            }
            HookEffect::Note(text) => {
                events.push(Event::new(job_id, attempt, "note").detail(text.clone()))
            }
            HookEffect::Tag(k, v) => {
                events.push(Event::new(job_id, attempt, "tag").detail(format!("{k}={v}")));
                tags.push((k.clone(), v.clone()));
            }
            HookEffect::Moved { from, to } => files.push(FileOp::Moved {
                from: from.clone(),
                to: to.clone(),
            }),
            HookEffect::Copied { from, to } => files.push(FileOp::Copied {
                from: from.clone(),
                to: to.clone(),
            }),
        }
    }
    let millis = (outcome.ended_at - outcome.started_at).num_milliseconds();
    let (error, detail) = match &outcome.result {
        Ok(_) => (None, format!("{file} {} ok in {millis} ms", func.name())),
        Err(f) => (
            Some(format!("{}: {}", f.kind.as_str(), f.message)),
            format!(
                "{file} {} failed ({}) in {millis} ms: {}",
                func.name(),
                f.kind.as_str(),
                f.message
            ),
        ),
    };
    if let Err(f) = &outcome.result {
        let subject = job_id.map(|id| format!(" (job {id})")).unwrap_or_default();
        eprintln!(
            "hook failed [{file}] {}{subject}: {}: {}",
            func.name(),
            f.kind.as_str(),
            f.message
        );
    }
    let mut event = Event::new(job_id, attempt, "hook").detail(detail);
    if let Err(f) = &outcome.result {
        if let Some(tb) = &f.traceback {
            event = event.body(tb.clone());
        }
    }
    events.insert(0, event);
    ledger.finish_hook_run(run_id, error.as_deref(), events, &tags, &files)
}

fn log_line(level: &str, file: &str, message: &str) {
    eprintln!("hook {level} [{file}] {message}");
}

impl LuaHooks {
    /// An `on_submit` call that succeeded but whose answer is refused: a failed run is
    /// recorded, so the hook is asked again next time rather than taken as passed.
    fn refuse_submit_change(
        &mut self,
        ledger: &mut Ledger,
        job: &JobRow,
        idx: usize,
        error: &str,
    ) -> Result<SubmitVerdict, LedgerError> {
        let message = format!(
            "on_submit in {} returned a bad change: {error}",
            self.names[idx]
        );
        let key = Some((job.id, job.attempt));
        let run = ledger.start_hook_run(key, None, &self.names[idx], HookFn::OnSubmit.name())?;
        let event = Event::new(Some(job.id), Some(job.attempt), "hook").detail(message.clone());
        ledger.finish_hook_run(run, Some(&message), vec![event], &[], &[])?;
        Ok(SubmitVerdict::Failed(message))
    }
}

impl PostProcessor for LuaHooks {
    fn wants(&self, state: JobState) -> bool {
        let func = if state == JobState::Completed {
            HookFn::OnComplete
        } else if state.is_failure() {
            HookFn::OnFailed
        } else {
            return false;
        };
        !self.host.defines(func).is_empty()
    }

    fn wants_submit(&self) -> bool {
        !self.host.defines(HookFn::OnSubmit).is_empty()
    }

    fn on_submit(
        &mut self,
        ledger: &mut Ledger,
        job: &JobRow,
    ) -> Result<SubmitVerdict, LedgerError> {
        let mut params = job.params();
        let mut changed = false;
        for idx in self.host.defines(HookFn::OnSubmit) {
            let view_job = JobRow {
                fidelity: params.fidelity,
                upscale: params.upscale,
                background_enhance: params.background_enhance,
                face_upsample: params.face_upsample,
                ..job.clone()
            };
            let view = job_view(&view_job, None);
            let outcome =
                self.call_once(ledger, idx, HookFn::OnSubmit, (Some(job), None), view, true);
            let outcome = match outcome? {
                None => continue,
                Some(o) => o,
            };
            let value = match outcome.result {
                Ok(v) => v,
                Err(f) => {
                    return Ok(SubmitVerdict::Failed(format!(
                        "on_submit in {} failed: {}",
                        self.names[idx], f.message
                    )))
                }
            };
            match crate::hooks::apply_submit_changes(&params, &value) {
                Ok(SubmitDecision::Keep) => {}
                Ok(SubmitDecision::Change(p)) => {
                    params = p;
                    changed = true;
                }
                Ok(SubmitDecision::Skip { reason }) => {
                    return Ok(SubmitVerdict::Skip(format!(
                        "{reason} (on_submit in {})",
                        self.names[idx]
                    )))
                }
                Err(e) => return self.refuse_submit_change(ledger, job, idx, &e.to_string()),
            }
        }
        Ok(if changed {
            SubmitVerdict::Change(params)
        } else {
            SubmitVerdict::Keep
        })
    }

    fn run_job_hooks(&mut self, ledger: &mut Ledger, job: &JobRow) -> Result<(), LedgerError> {
        let func = if job.state == JobState::Completed {
            HookFn::OnComplete
        } else {
            HookFn::OnFailed
        };
        let mut all_ok = true;
        for idx in self.host.defines(func) {
            let view = job_view_full(ledger, job)?;
            let outcome = self.call_once(ledger, idx, func, (Some(job), None), view, false)?;
            if let Some(o) = outcome {
                all_ok &= o.is_ok();
            }
        }
        let why = if all_ok {
            "hooks done"
        } else {
            "hooks done, some failed (see `hooks failed`)"
        };
        ledger.set_post(job.id, job.attempt, None, why)
    }

    fn batch_done(&mut self, ledger: &mut Ledger, batch: &str) -> Result<(), LedgerError> {
        let indices = self.host.defines(HookFn::OnBatchDone);
        if indices.is_empty() {
            return Ok(());
        }
        let summary = batch_summary(ledger, batch)?;
        for idx in indices {
            self.call_once(
                ledger,
                idx,
                HookFn::OnBatchDone,
                (None, Some(batch)),
                summary.clone(),
                false,
            )?;
        }
        Ok(())
    }
}

fn with_rerun(mut value: Value, rerun: bool) -> Value {
    value["rerun"] = rerun.into();
    value
}

/// The job table hooks receive before sending: the job without outputs.
fn job_view(job: &JobRow, extra: Option<(Value, Value)>) -> Value {
    let (outputs, tags) = extra.unwrap_or((json!([]), json!({})));
    json!({
        "id": job.id,
        "key": job.key,
        "batch": job.batch,
        "attempt": job.attempt,
        "rerun": false,
        "state": job.state.as_str(),
        "image_url": job.image_url,
        "params": {
            "fidelity": job.fidelity.normalize().to_string(),
            "upscale": job.upscale,
            "background_enhance": job.background_enhance,
            "face_upsample": job.face_upsample,
        },
        "input": job.input_size().map(|(w, h)| json!({"width": w, "height": h})),
        "output": match (job.output_width, job.output_height) { (Some(w), Some(h)) => json!({"width": w, "height": h}), _ => Value::Null },
        "outputs": outputs,
        "estimated_cost": job.estimated_cost.map(money::exact),
        "actual_cost": job.actual_cost.map(money::exact),
        "tags": tags,
        "request_id": job.request_id,
        "error": job.error.clone().or_else(|| job.reason.clone()),
        "created_at": job.created_at,
        "submitted_at": job.submitted_at,
        "finished_at": job.finished_at,
    })
}

/// The job table with its outputs and tags, read from the ledger.
pub fn job_view_full(ledger: &Ledger, job: &JobRow) -> Result<Value, LedgerError> {
    let outputs: Vec<Value> = ledger
        .outputs_of(job.id)?
        .into_iter()
        .filter(|o| o.attempt == job.attempt)
        .map(|o| json!({"path": o.path, "sha256": o.sha256, "bytes": o.bytes, "width": o.width, "height": o.height}))
        .collect();
    let tags: serde_json::Map<String, Value> = ledger
        .tags_of(job.id)?
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Ok(job_view(
        job,
        Some((Value::Array(outputs), Value::Object(tags))),
    ))
}

fn batch_summary(ledger: &Ledger, batch: &str) -> Result<Value, LedgerError> {
    let counts = ledger.count_by_state(Some(batch))?;
    let get = |s: JobState| {
        counts
            .iter()
            .find(|(x, _)| *x == s)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let report = ledger.report(None, None, &crate::ledger::GroupBy::Batch)?;
    let row = report
        .rows
        .iter()
        .find(|r| r.group == batch)
        .cloned()
        .unwrap_or_default();
    Ok(json!({
        "batch": batch,
        "jobs": counts.iter().map(|(_, n)| n).sum::<i64>(),
        "completed": get(JobState::Completed),
        "failed": get(JobState::Failed),
        "errored": get(JobState::Error),
        "rejected": get(JobState::Rejected),
        "stalled": get(JobState::Stalled),
        "skipped": get(JobState::Skipped),
        "uncertain": get(JobState::Uncertain),
        "estimated": money::exact(row.estimated),
        "charged": money::exact(row.charged),
        "charge_unknown": money::exact(row.charge_unknown),
        "output_megapixels": money::exact(row.output_megapixels),
    }))
}

impl LuaHooks {
    /// The files this host runs, as recorded in the ledger.
    pub fn files(&self) -> &[String] {
        &self.names
    }

    /// Runs a failed (or interrupted) hook run again; true when it succeeded this time.
    pub fn retry(
        &mut self,
        ledger: &mut Ledger,
        run: &crate::ledger::HookRunRow,
    ) -> Result<bool, LedgerError> {
        let Some(idx) = self.names.iter().position(|n| *n == run.hook_file) else {
            return Ok(false);
        };
        let Some(func) = HookFn::from_name(&run.function) else {
            return Ok(false);
        };
        if !self.host.defines(func).contains(&idx) {
            return Ok(false);
        }
        let (job, arg) = match run.job_id {
            Some(id) => {
                let Some(job) = ledger.job(id)? else {
                    return Ok(false);
                };
                let view = job_view_full(ledger, &job)?;
                (Some(job), view)
            }
            None => {
                let batch = run.batch.clone().unwrap_or_default();
                (None, batch_summary(ledger, &batch)?)
            }
        };
        let outcome = self.call_once(
            ledger,
            idx,
            func,
            (job.as_ref(), run.batch.as_deref()),
            arg,
            true,
        )?;
        Ok(outcome.is_some_and(|o| o.is_ok()))
    }
}
