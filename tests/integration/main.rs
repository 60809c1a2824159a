//! The integration suite: the real binary, real SQLite files in fresh temporary folders, real
//! HTTP on loopback against the project's own sandbox gateway.

mod audits;
mod batches;
mod budget;
mod callbacks;
mod common;
mod config;
mod connections;
mod cost;
mod examples_run;
mod fuzz;
mod gateway_answers;
mod help;
mod hooks;
mod hooks_e2e;
mod hostile;
mod inputs;
mod ledger_files;
mod listen;
mod photos;
mod probe;
mod progress;
mod report_html;
mod report_output;
mod report_totals;
mod resume;
mod s3;
mod sandbox;
mod secrets;
mod skeleton;
mod small_things;
mod submit;
mod trust;
mod webhooks;
