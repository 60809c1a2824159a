//! codeformer-ledger: an offline-first job ledger for the hosted CodeFormer face-restoration
//! API.
//!
//! Every fact the engine learns (submission intents and answers, polls, estimates, downloads,
//! charges, hook runs) goes into a SQLite [`ledger`] first, so a run can be killed at any
//! instant and resumed without paying twice. The same pieces the `codeformer-ledger` binary
//! uses are available here: open a ledger, enqueue jobs, run the [`engine`] against a
//! [`gateway`] (the real one, or the in-process [`sandbox`]), read [`ledger::Report`]s.
//!
//! ```no_run
//! use codeformer_ledger::engine::{self, EngineOptions};
//! use codeformer_ledger::gateway::{ApiKey, Gateway, GatewayConfig};
//! use codeformer_ledger::ledger::{GroupBy, Ledger, NewJob};
//! use codeformer_ledger::params::JobParams;
//!
//! let mut ledger = Ledger::open("restore.db".as_ref())?;
//! let mut job = NewJob::new(JobParams::new("https://example.com/face.jpg"));
//! job.size = Some((1024, 768));
//! ledger.enqueue(&[job])?;
//!
//! let key = std::env::var("PIXAZO_API_KEY").ok().and_then(|k| ApiKey::new(&k));
//! let gateway = Gateway::new(GatewayConfig::new("https://gateway.pixazo.ai", key));
//! let _lock = ledger.lock_engine()?;
//! let summary = engine::run(&mut ledger, &gateway, &EngineOptions::new("restored".into()), None, &mut ())?;
//! println!("charged {}", codeformer_ledger::money::exact(summary.charged));
//! let report = ledger.report(None, None, &GroupBy::Month)?;
//! println!("total {}", codeformer_ledger::money::exact(report.total.charged));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `examples/library.rs` runs the same flow end to end against the sandbox gateway.

pub mod clock;
pub mod digest;
pub mod durable;
pub mod engine;
pub mod exit;
pub mod gateway;
pub mod hooks;
mod http_server;
pub mod ledger;
pub mod lifecycle;
pub mod manifest;
pub mod money;
pub mod params;
pub mod sandbox;
pub mod storage;
pub mod webhooks;

/// The environment variable that holds the API key.
pub const KEY_ENV: &str = "PIXAZO_API_KEY";
