//! The sandbox's counters, and their snapshot [`SandboxStats`], which is also the JSON answer of
//! `GET /sandbox/stats`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the sandbox has seen and done since it started. Money is an exact decimal string.
///
/// "API requests" are the gateway's own calls (submit, status, and unknown paths): they are
/// subject to the key, the rate limit and the faults. Static files, outputs and the
/// `/sandbox/` endpoints are not API requests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct SandboxStats {
    /// Submit calls that got past the key, the rate limit and the injected 500s (so their
    /// body was read), valid or not.
    pub submissions: u64,
    /// Those submissions by the `image` string of their body.
    pub submissions_by_image: BTreeMap<String, u64>,
    /// Submissions answered 202 (a job was created), dropped answers included.
    pub accepted: u64,
    /// Status calls that got past the key, the rate limit and the injected 500s.
    pub status_requests: u64,
    /// Every API request received.
    pub api_requests: u64,
    /// API answers by HTTP status. A dropped connection has no status and is not here.
    pub answered_by_code: BTreeMap<u16, u64>,
    /// API requests whose connection was closed without an answer (`drop_rate`).
    pub connections_dropped: u64,
    /// TCP connections accepted, for any path (the sandbox's own input fetches included). A
    /// client that keeps its connections makes far fewer of these than requests.
    pub connections: u64,
    pub completed: u64,
    pub failed: u64,
    pub errored: u64,
    /// Sum of the charges of COMPLETED jobs.
    pub charged_usd: String,
    /// request_id → charge, for COMPLETED jobs.
    pub charges_by_request: BTreeMap<String, String>,
    /// Bytes of `/static/` files written to clients. The sandbox's own input fetches are not
    /// counted here but in `input_bytes_fetched`.
    pub static_bytes_served: u64,
    /// Those bytes by relative path.
    pub static_bytes_by_path: BTreeMap<String, u64>,
    /// Bytes of outputs (`/v1/<request_id>/output.png`) written to clients.
    pub output_bytes_served: u64,
    /// Input fetches the gateway side made (header probes and whole downloads).
    pub input_fetches: u64,
    /// Bytes those fetches read.
    pub input_bytes_fetched: u64,
    /// Callback POSTs made, duplicates included.
    pub callbacks_sent: u64,
    /// Callbacks withheld on purpose (`drop_callbacks`).
    pub callbacks_dropped: u64,
    /// Callback POSTs that failed (no connection, timeout, or a non-2xx answer).
    pub callbacks_failed: u64,
    /// Objects stored in the S3-compatible store (`PUT /s3/…` answered 200).
    pub s3_puts: u64,
    /// Requests to the store refused for their signature, key id, date or expiry.
    pub s3_refused: u64,
    /// The wallet's balance, `None` when unlimited.
    pub wallet_usd: Option<String>,
}

/// The live counters behind [`SandboxStats`].
#[derive(Default)]
pub struct Counters {
    pub stats: SandboxStats,
    pub charged: Decimal,
    pub charges: BTreeMap<String, Decimal>,
}

impl Counters {
    pub fn answered(&mut self, status: u16) {
        *self.stats.answered_by_code.entry(status).or_default() += 1;
    }

    pub fn charge(&mut self, request_id: &str, usd: Decimal) {
        self.charged += usd;
        self.charges.insert(request_id.to_string(), usd);
    }

    pub fn snapshot(&self, wallet: Option<Decimal>) -> SandboxStats {
        let mut stats = self.stats.clone();
        stats.charged_usd = money(self.charged);
        stats.charges_by_request = self
            .charges
            .iter()
            .map(|(id, usd)| (id.clone(), money(*usd)))
            .collect();
        stats.wallet_usd = wallet.map(money);
        stats
    }
}

/// An exact decimal without trailing zeros: `0.0084`, `0`, `12.5`.
pub fn money(value: Decimal) -> String {
    value.normalize().to_string()
}
