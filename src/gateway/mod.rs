//! The gateway's protocol: its types, and the blocking ureq client that speaks it. Nothing
//! else in the program talks HTTP to the gateway.
//!
//! Every call returns an [`Exchange`]: what the ledger records about the answer (HTTP status,
//! latency, body) together with a typed outcome. The key is sent in the
//! `Ocp-Apim-Subscription-Key` header to the gateway's own origin and to nothing else, and it
//! never appears in an outcome, an error or a `Debug` print.
//!
//! [`probe`] is the other outgoing HTTP: it reads an input image's header bytes with range
//! requests, anonymously (no key), to learn its size before the job is sent.

pub mod budget;
mod client;
pub mod net;
pub mod probe;
mod types;

pub use budget::{RequestBudget, Ticket};
pub use client::{base_url_fix, request_id_problem, DownloadError, Gateway, GatewayConfig};
pub use net::{agent_builder, NetConfig};
pub use types::{
    ApiCheck, ApiKey, Exchange, PollOutcome, RemoteJob, RemoteStatus, SubmitOutcome,
    DEFAULT_BASE_URL, GENERATE_PATH, STATUS_PATH,
};
