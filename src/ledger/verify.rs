//! `verify`: SQLite's own integrity check plus the ledger's invariants.

use super::{Ledger, Result};

/// One broken invariant, in words.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub check: &'static str,
    pub detail: String,
}

/// The invariants, each a query that lists what breaks it.
const CHECKS: &[(&str, &str)] = &[
    (
        "job has its current attempt",
        "SELECT 'job ' || j.id || ' is at attempt ' || j.attempt || ' which has no attempts row'
         FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt
         WHERE a.job_id IS NULL",
    ),
    (
        "job state matches its attempt",
        "SELECT 'job ' || j.id || ' is ' || j.state || ' but its attempt ' || a.attempt || ' is ' || a.state
         FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt
         WHERE a.state != j.state",
    ),
    (
        "job state is explained by an event",
        "SELECT 'job ' || j.id || ' has no event for its attempt ' || j.attempt
         FROM jobs j WHERE NOT EXISTS
           (SELECT 1 FROM events e WHERE e.job_id = j.id AND e.attempt = j.attempt)",
    ),
    (
        "every charge is counted once",
        "SELECT 'job ' || a.job_id || ' attempt ' || a.attempt || ' has ' ||
                (SELECT count(*) FROM events e WHERE e.job_id = a.job_id AND e.attempt = a.attempt AND e.kind = 'charge')
                || ' charge events for one charge'
         FROM attempts a WHERE a.actual_cost IS NOT NULL AND
           (SELECT count(*) FROM events e WHERE e.job_id = a.job_id AND e.attempt = a.attempt AND e.kind = 'charge') != 1",
    ),
    (
        "a charge belongs to a finished attempt",
        "SELECT 'job ' || job_id || ' attempt ' || attempt || ' is charged ' || actual_cost || ' while ' || state
         FROM attempts WHERE actual_cost IS NOT NULL AND actual_cost != '0' AND state != 'completed'",
    ),
    (
        "a completed attempt with no download owed has its outputs",
        "SELECT 'job ' || j.id || ' is completed with no output recorded'
         FROM jobs j WHERE j.state = 'completed' AND (j.post IS NULL OR j.post != 'download')
           AND NOT EXISTS (SELECT 1 FROM outputs o WHERE o.job_id = j.id AND o.attempt = j.attempt)",
    ),
    (
        "money is exact decimal text",
        "SELECT 'job ' || job_id || ' attempt ' || attempt || ' holds a cost that is not a decimal: ' ||
                coalesce(estimated_cost, '') || ' / ' || coalesce(actual_cost, '')
         FROM attempts WHERE (estimated_cost IS NOT NULL AND (typeof(estimated_cost) != 'text' OR estimated_cost GLOB '*[^0-9.]*'))
            OR (actual_cost IS NOT NULL AND (typeof(actual_cost) != 'text' OR actual_cost GLOB '*[^0-9.]*'))",
    ),
];

impl Ledger {
    /// Every problem found; an empty list is a sound ledger. Every recorded output must exist;
    /// with `files`, it is also checked against its recorded size and sha256.
    pub fn verify(&self, files: bool) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        problems.extend(
            rows.into_iter()
                .filter(|r| r != "ok")
                .map(|detail| Problem {
                    check: "sqlite integrity",
                    detail,
                }),
        );
        for (check, sql) in CHECKS {
            let mut stmt = self.conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            for row in rows {
                problems.push(Problem {
                    check,
                    detail: row?,
                });
            }
        }
        if !files {
            // Cheap enough for every run of `verify`: one stat per output.
            let mut stmt = self
                .conn
                .prepare("SELECT job_id, path FROM outputs ORDER BY job_id")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (job, path) = row?;
                if let Err(e) = std::fs::metadata(&path) {
                    problems.push(Problem {
                        check: "output file",
                        detail: format!("job {job}: {path}: {e}"),
                    });
                }
            }
        }
        if files {
            let mut stmt = self.conn.prepare(
                "SELECT job_id, path, bytes, sha256 FROM outputs
                     UNION ALL SELECT job_id, path, bytes, sha256 FROM member_outputs
                     ORDER BY job_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (job, path, bytes, sha) = row?;
                match std::fs::read(&path) {
                    Err(e) => problems.push(Problem {
                        check: "output file",
                        detail: format!("job {job}: {path}: {e}"),
                    }),
                    Ok(data) => {
                        let actual = crate::digest::sha256_hex(&data);
                        if data.len() as i64 != bytes || actual != sha {
                            problems.push(Problem {
                                check: "output file",
                                detail: format!("job {job}: {path} is {} bytes with sha256 {actual}; the ledger recorded {bytes} bytes, {sha}", data.len()),
                            });
                        }
                    }
                }
            }
        }
        Ok(problems)
    }
}
