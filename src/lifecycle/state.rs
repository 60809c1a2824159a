//! The job lifecycle's states, as stored in `jobs.state` and `attempts.state`.

use std::fmt;
use std::str::FromStr;

/// Where a job stands. See the design's "Job lifecycle".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    Planned,
    Submitting,
    Queued,
    Processing,
    Completed,
    Failed,
    Error,
    Rejected,
    Uncertain,
    Held,
    Stalled,
    Skipped,
}

impl JobState {
    pub const ALL: [JobState; 12] = [
        JobState::Planned,
        JobState::Submitting,
        JobState::Queued,
        JobState::Processing,
        JobState::Completed,
        JobState::Failed,
        JobState::Error,
        JobState::Rejected,
        JobState::Uncertain,
        JobState::Held,
        JobState::Stalled,
        JobState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Planned => "planned",
            JobState::Submitting => "submitting",
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Error => "error",
            JobState::Rejected => "rejected",
            JobState::Uncertain => "uncertain",
            JobState::Held => "held",
            JobState::Stalled => "stalled",
            JobState::Skipped => "skipped",
        }
    }

    /// The state a status reported by the gateway (a poll's answer or a callback) stands
    /// for; `None` for a status the API does not document, which moves no job.
    pub fn for_remote(status: &crate::gateway::RemoteStatus) -> Option<JobState> {
        use crate::gateway::RemoteStatus;
        match status {
            RemoteStatus::Queued => Some(JobState::Queued),
            RemoteStatus::Processing => Some(JobState::Processing),
            RemoteStatus::Completed => Some(JobState::Completed),
            RemoteStatus::Failed => Some(JobState::Failed),
            RemoteStatus::Error => Some(JobState::Error),
            RemoteStatus::Undocumented(_) => None,
        }
    }

    /// The gateway has the job and it is not finished: it is polled.
    pub fn is_remote_pending(self) -> bool {
        matches!(self, JobState::Queued | JobState::Processing)
    }

    /// A state the job ends in on its own (a retry may still start a new attempt).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed
                | JobState::Failed
                | JobState::Error
                | JobState::Rejected
                | JobState::Stalled
                | JobState::Skipped
        )
    }

    /// States `run --retry` accepts.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            JobState::Failed | JobState::Error | JobState::Rejected | JobState::Stalled
        )
    }

    /// States after which `on_failed` hooks run.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            JobState::Failed | JobState::Error | JobState::Rejected | JobState::Stalled
        )
    }
}

impl serde::Serialize for JobState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                format!("`{s}` is not a job state (one of: {})", names.join(", "))
            })
    }
}
