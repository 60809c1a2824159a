//! `ingest`: apply saved webhook callback bodies to the ledger, one body or JSON Lines.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::exit;
use codeformer_ledger::ledger::{DeliveryError, DeliveryKind, LedgerError};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

/// Apply webhook callback bodies to the ledger (idempotent by request_id).
///
/// Reads one callback body (the JSON the gateway POSTs, shaped like a status answer), or many
/// as JSON Lines (blank lines ignored), from FILE or from stdin (`-`, the default). Each body
/// is recorded as a delivery and a `callback` event, with one outcome:
///   applied    the job moved forward (a COMPLETED job is downloaded by the next `run`)
///   duplicate  already applied: nothing else changes
///   stale      late or out of order (PROCESSING after COMPLETED, an earlier attempt):
///              the job never moves backwards
///   orphan     no job in this ledger has that request_id
/// A malformed line is reported with its number and changes nothing; the other lines still
/// apply. Exit 0, or 2 when a line was malformed.
///
/// Examples:
///   codeformer-ledger ingest callback.json
///   codeformer-ledger ingest saved-callbacks.jsonl
///   cat callbacks/*.json | jq -c . | codeformer-ledger ingest -
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct IngestArgs {
    /// A file of one callback body or JSON Lines; `-` reads stdin.
    #[arg(value_name = "FILE|-", default_value = "-")]
    pub input: PathBuf,
}

pub fn run(global: &Global, args: IngestArgs) -> CmdResult {
    let input = read_input(&args.input)?;
    if !global.ledger.exists() {
        return Err(LedgerError::Missing(global.ledger.clone()).into());
    }
    let mut ledger = global.open_ledger()?;
    let mut counts: BTreeMap<DeliveryKind, u64> = BTreeMap::new();
    let mut malformed = Vec::new();
    for (line, body) in bodies(&input) {
        let body = match body {
            Ok(body) => body,
            Err(reason) => {
                eprintln!("error: line {line}: {reason}");
                malformed.push(line);
                continue;
            }
        };
        match ledger.record_delivery(body) {
            Ok(outcome) => {
                *counts.entry(outcome.kind).or_default() += 1;
                let job = outcome
                    .job_id
                    .map(|id| format!("job {id}"))
                    .unwrap_or_else(|| "no job".into());
                println!(
                    "line {line}: {} ({} {}, {job})",
                    outcome.detail, outcome.request_id, outcome.status
                );
            }
            Err(DeliveryError::Malformed(reason)) => {
                eprintln!("error: line {line}: malformed callback body: {reason}");
                malformed.push(line);
            }
            Err(DeliveryError::Ledger(e)) => {
                return Err(CliError::error(format!(
                    "line {line} could not be recorded: {e}; the lines before it were, and ingesting the file again is safe"
                )))
            }
            Err(e) => return Err(CliError::error(format!("line {line}: {e}"))),
        }
    }
    println!("{}", summary(&counts, malformed.len()));
    if malformed.is_empty() {
        return Ok(exit::DONE);
    }
    let lines: Vec<String> = malformed.iter().map(|l| l.to_string()).collect();
    let message = format!(
        "{} malformed line(s) in {} (line {}) changed nothing",
        malformed.len(),
        args.input.display(),
        lines.join(", ")
    );
    if counts.values().sum::<u64>() == 0 {
        // Exit 2 promises that nothing was written: true only when no line was recorded.
        return Err(CliError::usage(message));
    }
    Err(CliError {
        code: exit::SOME_FAILED,
        message: format!("{message}; the other lines were applied"),
    })
}

fn read_input(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    read.map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(bytes)
}

/// The bodies of the input with their line numbers: the whole input when it is one JSON
/// document (even spread over several lines), else each non-blank line.
fn bodies(input: &[u8]) -> Vec<(usize, Result<&str, String>)> {
    if let Ok(text) = std::str::from_utf8(input) {
        let first = text.lines().position(|l| !l.trim().is_empty());
        if let Some(first) = first {
            if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                return vec![(first + 1, Ok(text.trim()))];
            }
        }
    }
    input
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(i, line)| {
            let body = std::str::from_utf8(line.trim_ascii())
                .map_err(|_| "malformed callback body: it is not UTF-8 text".to_string());
            (i + 1, body)
        })
        .collect()
}

fn summary(counts: &BTreeMap<DeliveryKind, u64>, malformed: usize) -> String {
    // The four outcomes of a hint always, the others (a final status waiting for its status
    // call, ...) when they occurred.
    let parts: Vec<String> = DeliveryKind::ALL
        .iter()
        .enumerate()
        .filter(|(i, k)| *i < 4 || counts.contains_key(k))
        .map(|(_, k)| format!("{} {k}", counts.get(k).copied().unwrap_or(0)))
        .collect();
    let total = counts.values().sum::<u64>() + malformed as u64;
    format!(
        "{total} callback bodies: {}, {malformed} malformed",
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_document_may_span_lines() {
        let input = b"\n{\n  \"request_id\": \"a\",\n  \"status\": \"QUEUED\"\n}\n";
        let found = bodies(input);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 2);
        assert!(found[0].1.as_ref().unwrap().starts_with('{'));
    }

    #[test]
    fn json_lines_keep_their_numbers_and_skip_blank_lines() {
        let input = b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n\xff\n";
        let found: Vec<(usize, bool)> = bodies(input)
            .into_iter()
            .map(|(n, b)| (n, b.is_ok()))
            .collect();
        assert_eq!(found, vec![(1, true), (4, true), (5, false)]);
        assert!(bodies(b"\n \n").is_empty());
    }
}
