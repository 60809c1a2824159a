//! codeformer-ledger: an offline-first job ledger for the hosted CodeFormer restoration API.
pub mod clock;
pub mod engine;
pub mod exit;
pub mod gateway;
pub mod hooks;
pub mod ledger;
pub mod manifest;
pub mod money;
pub mod params;
pub mod probe;
pub mod sandbox;

/// The environment variable that holds the API key.
pub const KEY_ENV: &str = "PIXAZO_API_KEY";
