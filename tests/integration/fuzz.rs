//! Property-based fuzzing of every parser that reads outside input: gateway answers and
//! webhook bodies, image headers, manifests, amounts, sizes and timestamps. None may panic,
//! whatever the bytes. `scripts/fuzz.sh` runs the same properties for longer
//! (`PROPTEST_CASES`); failures are kept in `tests/proptest-regressions/fuzz.txt` and
//! replayed here on every run. That path is proptest's `SourceParallel`: the folder beside
//! the one holding this binary's `main.rs` (`tests/integration/`), named after this file.

use codeformer_ledger::gateway::RemoteJob;
use codeformer_ledger::manifest::{parse_manifest, Format};
use codeformer_ledger::params::{self, JobParams};
use codeformer_ledger::{clock, gateway::probe, money};
use proptest::prelude::*;

/// 256 cases per property in the test suite; `PROPTEST_CASES` raises it (scripts/fuzz.sh).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// JSON-ish text: mostly structure characters, so the parser gets deep.
fn jsonish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just("\"request_id\"".to_string()),
            Just("\"status\"".to_string()),
            Just("\"COMPLETED\"".to_string()),
            Just("\"output\"".to_string()),
            Just("\"media_url\"".to_string()),
            Just("null".to_string()),
            Just("1e999".to_string()),
            "\\PC{0,8}".prop_map(|s| format!("{s:?}")),
        ],
        0..64,
    )
    .prop_map(|parts| parts.concat())
}

fn status_body() -> impl Strategy<Value = String> {
    (
        prop::option::of("\\PC{0,40}"),
        prop::option::of(prop_oneof![Just("QUEUED"), Just("PROCESSING"), Just("COMPLETED"), Just("FAILED"), Just("ERROR"), Just("done")]),
        prop::option::of(prop::collection::vec("\\PC{0,30}", 0..3)),
        prop::option::of("\\PC{0,30}"),
    )
        .prop_map(|(id, status, urls, ts)| {
            serde_json::json!({
                "request_id": id, "status": status, "error": null,
                "output": urls.map(|u| serde_json::json!({"media_url": u, "media_type": "image/png"})),
                "created_at": ts.clone(), "updated_at": ts,
            })
            .to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: Some(Box::new(prop::test_runner::FileFailurePersistence::SourceParallel("proptest-regressions"))), ..ProptestConfig::default() })]

    #[test]
    fn status_and_callback_bodies_never_panic(text in prop_oneof![jsonish(), status_body(), any::<String>()]) {
        if let Ok(job) = RemoteJob::from_json(&text) {
            prop_assert!(!job.request_id.is_empty());
            if job.status.as_str() == "COMPLETED" {
                prop_assert!(!job.media_urls.is_empty());
            }
        }
    }

    #[test]
    fn image_headers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), prefix in prop_oneof![
        Just(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec()),
        Just(b"\xff\xd8\xff\xe0".to_vec()),
        Just(b"RIFF\0\0\0\0WEBPVP8 ".to_vec()),
        Just(b"GIF89a".to_vec()),
        Just(b"BM".to_vec()),
        Just(Vec::new()),
    ]) {
        let mut data = prefix;
        data.extend(bytes);
        if let Ok(size) = probe::size_from_bytes(&data) {
            prop_assert!(size.width > 0 && size.height > 0);
        }
    }

    #[test]
    fn manifests_never_panic(text in any::<String>(), which in 0..4usize) {
        let format = [None, Some(Format::Text), Some(Format::Csv), Some(Format::JsonLines)][which];
        let m = parse_manifest("fuzz.txt", &text, format, &JobParams::new("https://x.test/a.png"));
        for row in &m.rows {
            // A local path is a row of its own kind, read by the command (or refused there).
            prop_assert!(row.local || row.params.validate().is_ok());
        }
    }

    #[test]
    fn command_line_values_never_panic(text in "\\PC{0,24}") {
        let _ = params::parse_fidelity(&text);
        let _ = params::parse_upscale(&text);
        let _ = params::parse_size(&text);
        let _ = params::parse_tag(&text);
        let _ = params::validate_image_url(&text);
        let _ = clock::parse_remote(&text);
        if let Ok(d) = money::parse_usd("budget", &text) {
            prop_assert!(d >= rust_decimal::Decimal::ZERO);
        }
    }
}
