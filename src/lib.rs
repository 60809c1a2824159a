//! codeformer-ledger: an offline-first job ledger for the hosted CodeFormer restoration API.
pub mod clock;
pub mod exit;
pub mod hooks;
pub mod manifest;
pub mod money;
pub mod params;
pub mod probe;
pub mod sandbox;
