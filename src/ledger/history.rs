//! What earlier runs learned about a gateway: the job durations a run saw, recorded as a
//! `durations` event when it ends, so that the next run against the same gateway schedules its
//! first polls from them instead of from nothing.

use super::{Event, Ledger, Result};
use serde::{Deserialize, Serialize};

/// How far back the last `durations` event of a gateway is looked for.
const LOOK_BACK: i64 = 64;

/// The body of a `durations` event.
#[derive(Debug, Serialize, Deserialize)]
struct Durations {
    /// The gateway's origin (scheme, host and port: never a path, query or credentials).
    gateway: String,
    /// Evenly spaced quantiles of the job durations seen, in milliseconds, ascending.
    durations_ms: Vec<u64>,
}

/// A URL's origin, without credentials, path or query.
pub fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    format!("{scheme}://{}", host.to_ascii_lowercase())
}

/// The event recording the durations a run learned at `gateway`; `detail` says it in words.
pub fn durations_event(gateway: &str, durations_ms: Vec<u64>, detail: String) -> Event {
    let body = Durations {
        gateway: origin(gateway),
        durations_ms,
    };
    let json = serde_json::to_string(&body).unwrap_or_default();
    Event::new(None, None, "durations")
        .detail(detail)
        .body(json)
}

impl Ledger {
    /// The durations the last run against `gateway` learned (milliseconds, ascending), if one
    /// recorded them. Events whose body does not parse are passed over.
    pub fn learned_durations(&self, gateway: &str) -> Result<Option<Vec<u64>>> {
        let want = origin(gateway);
        let mut stmt = self.conn.prepare_cached(
            "SELECT body FROM events WHERE job_id IS NULL AND kind = 'durations' AND body IS NOT NULL
             ORDER BY id DESC LIMIT ?1",
        )?;
        let bodies = stmt
            .query_map([LOOK_BACK], |row| row.get::<_, String>(0))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for body in bodies {
            let Ok(mut found) = serde_json::from_str::<Durations>(&body) else {
                continue;
            };
            if found.gateway == want && !found.durations_ms.is_empty() {
                found.durations_ms.sort_unstable();
                return Ok(Some(found.durations_ms));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_has_no_credentials_path_or_query() {
        assert_eq!(origin("http://127.0.0.1:8787"), "http://127.0.0.1:8787");
        assert_eq!(
            origin("https://user:secret@Gateway.Pixazo.ai/v1?x=1"),
            "https://gateway.pixazo.ai"
        );
    }

    #[test]
    fn the_last_run_at_the_same_gateway_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("l.db")).unwrap();
        assert_eq!(ledger.learned_durations("http://a").unwrap(), None);
        ledger
            .append(vec![
                durations_event("http://a", vec![3000, 1000], "a, older".into()),
                durations_event("http://b", vec![9000], "b".into()),
                Event::new(None, None, "durations").body("not json"),
            ])
            .unwrap();
        ledger
            .append(vec![durations_event(
                "http://a/",
                vec![2000, 4000],
                "a".into(),
            )])
            .unwrap();
        assert_eq!(
            ledger.learned_durations("http://a").unwrap(),
            Some(vec![2000, 4000])
        );
        assert_eq!(
            ledger.learned_durations("http://b").unwrap(),
            Some(vec![9000])
        );
        assert_eq!(ledger.learned_durations("http://c").unwrap(), None);
    }
}
