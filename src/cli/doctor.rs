//! `doctor`: checks the set-up, each with its result and a fix.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::gateway::{base_url_fix, ApiCheck};
use codeformer_ledger::ledger::Ledger;
use codeformer_ledger::KEY_ENV;
use std::path::PathBuf;

/// Check the set-up: the key, the gateway, the ledger, the output folder and hook files, and
/// with --upload the bucket (a probe object written, read back and deleted).
///
/// The gateway check asks for the status of a request id that does not exist: it tells
/// whether the base URL leads to the API (an answer of the API's shape, not an HTML page or
/// a redirect, and not the same 404 as a path that does not exist) and accepts the key,
/// without submitting anything.
///
/// Examples:
///   codeformer-ledger doctor
///   codeformer-ledger doctor --out-dir restored --hook hooks/sidecar.lua
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DoctorArgs {
    /// The output folder to check [default: the config file's out_dir, else ./restored].
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Hook files to compile (repeatable).
    #[arg(long = "hook", value_name = "FILE")]
    pub hooks: Vec<PathBuf>,
}

struct Check {
    name: &'static str,
    ok: bool,
    result: String,
    fix: Option<String>,
}

pub fn run(global: &Global, args: DoctorArgs) -> CmdResult {
    let out_dir = super::options::out_dir(&global.config, args.out_dir.as_deref(), None);
    let checks = vec![
        key_check(global),
        network_check(global),
        gateway_check(global),
        ledger_check(global),
        out_dir_check(&out_dir),
        hooks_check(&args.hooks, &out_dir),
    ];
    let mut checks = checks;
    if global.upload.is_some() {
        checks.push(bucket_check(global));
    }
    let mut failed = 0;
    for c in &checks {
        println!(
            "{} {:<12} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.result
        );
        if let Some(fix) = &c.fix {
            println!("     {:<12} fix: {fix}", "");
        }
        failed += usize::from(!c.ok);
    }
    if failed > 0 {
        return Err(CliError::error(format!("{failed} check(s) failed")));
    }
    Ok(codeformer_ledger::exit::DONE)
}

/// With `--upload`: a small probe object PUT, read back and deleted, so the bucket, the
/// endpoint, the credentials and the clock are all known to work before a batch needs them.
fn bucket_check(global: &Global) -> Check {
    let fail = |result: String, fix: Option<String>| Check {
        name: "bucket",
        ok: false,
        result,
        fix,
    };
    let storage = match global.storage() {
        Ok(Some(s)) => s,
        Ok(None) => return fail("no --upload".into(), None),
        Err(e) => return fail(e.message, None),
    };
    let dest = storage.destination().clone();
    let key = dest.object_key(&format!(".doctor-probe-{}", std::process::id()), "txt");
    let body = b"codeformer-ledger doctor probe";
    let outcome = storage
        .put_bytes(&key, body, "text/plain")
        .and_then(|_| storage.get(&key, 1024))
        .and_then(|read| {
            let same = read == body;
            storage.delete(&key).map(|_| same)
        });
    match outcome {
        Ok(true) => Check {
            name: "bucket",
            ok: true,
            result: format!(
                "{dest} at {}: a probe object was written, read back and deleted",
                storage.config().endpoint_url()
            ),
            fix: None,
        },
        Ok(false) => fail(
            format!("{dest}: the probe object read back differs from what was written"),
            Some(
                "check that --s3-endpoint leads to the bucket itself, not a proxy or cache".into(),
            ),
        ),
        Err(e) => fail(format!("{dest}: {e}"), None),
    }
}

fn key_check(global: &Global) -> Check {
    match global.api_key() {
        Ok(Some(_)) => Check {
            name: "api key",
            ok: true,
            result: "set (not shown)".into(),
            fix: None,
        },
        Ok(None) => Check {
            name: "api key",
            ok: false,
            result: "not set".into(),
            fix: Some(format!("export {KEY_ENV}=... or pass --api-key-file FILE")),
        },
        Err(e) => Check {
            name: "api key",
            ok: false,
            result: e.message,
            fix: None,
        },
    }
}

fn gateway_check(global: &Global) -> Check {
    let gateway = match global.gateway() {
        Ok(g) => g,
        Err(e) => {
            return Check {
                name: "gateway",
                ok: false,
                result: e.message,
                fix: None,
            }
        }
    };
    let base = &global.base_url;
    let key = if gateway.config().key.is_some() {
        "and accepts the key"
    } else {
        "(no key was sent)"
    };
    let (ok, result, fix) = match gateway.check_api() {
        ApiCheck::Answers {
            http_status,
            latency_ms,
        } => (
            true,
            format!("{base} answers as the API does (HTTP {http_status} for a made-up request id) in {latency_ms} ms {key}"),
            None,
        ),
        ApiCheck::KeyRefused { http_status } => (
            false,
            format!("{base} refused the key (HTTP {http_status})"),
            Some(format!("check {KEY_ENV}")),
        ),
        ApiCheck::RateLimited => (
            true,
            format!("{base} answers but rate-limits (HTTP 429)"),
            None,
        ),
        ApiCheck::Unreachable { reason } if reason.contains("TLS") => (
            false,
            format!("{base} cannot be trusted: {reason}"),
            Some(
                "pass --ca-cert FILE (or config key ca_cert) with the PEM certificate of the CA that signs the gateway's or the proxy's certificate, or set SSL_CERT_FILE to a bundle holding it"
                    .into(),
            ),
        ),
        ApiCheck::Unreachable { reason } => (
            false,
            format!("{base} cannot be reached: {reason}"),
            Some("check the network and --base-url / PIXAZO_BASE_URL".into()),
        ),
        ApiCheck::NotTheApi { answer } => (
            false,
            format!("{base} is not the gateway's API: {answer}"),
            Some(base_url_fix(base)),
        ),
        other => (false, format!("{base}: unexpected answer ({other:?})"), None),
    };
    Check {
        name: "gateway",
        ok,
        result,
        fix,
    }
}

/// What the requests trust and which proxy they go through (never its credentials).
fn network_check(global: &Global) -> Check {
    let net = match global.net() {
        Ok(n) => n,
        Err(e) => {
            return Check {
                name: "network",
                ok: false,
                result: e.message,
                fix: Some("give --ca-cert a PEM file of CA certificates".into()),
            }
        }
    };
    let t = &net.trust;
    let mut result = format!(
        "trusts the bundled web roots, {} of the machine's store",
        t.machine
    );
    if let Some((path, n)) = &t.ca_cert {
        result.push_str(&format!(" and {n} from --ca-cert {}", path.display()));
    }
    result.push_str(&format!(
        "; proxy for the gateway: {}",
        net.describe_proxy(&global.base_url)
    ));
    let mut ok = true;
    let mut fix = None;
    if let Some(problem) = net.key_in_clear(&global.base_url) {
        ok = false;
        result.push_str(&format!("; {problem}"));
        fix = Some("use an https base URL, or add the gateway's host to NO_PROXY".into());
    } else if !t.machine_errors.is_empty() {
        result.push_str(&format!(
            "; the machine's store could not all be read: {}",
            t.machine_errors.join("; ")
        ));
        fix = Some("check SSL_CERT_FILE / SSL_CERT_DIR, or pass --ca-cert FILE".into());
    }
    Check {
        name: "network",
        ok,
        result,
        fix,
    }
}

fn ledger_check(global: &Global) -> Check {
    let path = &global.ledger;
    if !path.exists() {
        return Check {
            name: "ledger",
            ok: true,
            result: format!(
                "{} does not exist yet; the first submit or batch creates it",
                path.display()
            ),
            fix: None,
        };
    }
    match Ledger::open_read_only(path).and_then(|l| l.verify(false).map(|p| (l, p))) {
        Ok((_, problems)) if problems.is_empty() => Check {
            name: "ledger",
            ok: true,
            result: format!("{} opens and verifies", path.display()),
            fix: None,
        },
        Ok((_, problems)) => Check {
            name: "ledger",
            ok: false,
            result: format!("{} has {} problem(s)", path.display(), problems.len()),
            fix: Some("run `codeformer-ledger verify` for the list".into()),
        },
        Err(e) => Check {
            name: "ledger",
            ok: false,
            result: e.to_string(),
            fix: None,
        },
    }
}

fn out_dir_check(dir: &PathBuf) -> Check {
    let result = std::fs::create_dir_all(dir).and_then(|_| tempfile::tempfile_in(dir).map(|_| ()));
    match result {
        Ok(()) => Check {
            name: "output dir",
            ok: true,
            result: format!("{} is writable", dir.display()),
            fix: None,
        },
        Err(e) => Check {
            name: "output dir",
            ok: false,
            result: format!("{}: {e}", dir.display()),
            fix: Some("pass --out-dir with a folder you can write to".into()),
        },
    }
}

fn hooks_check(hooks: &[PathBuf], out_dir: &std::path::Path) -> Check {
    if hooks.is_empty() {
        return Check {
            name: "hooks",
            ok: true,
            result: "none given".into(),
            fix: None,
        };
    }
    let config = codeformer_ledger::hooks::HookConfig::new(hooks.to_vec(), out_dir);
    match codeformer_ledger::hooks::HookHost::start(config) {
        Ok(_) => Check {
            name: "hooks",
            ok: true,
            result: format!("{} file(s) compile", hooks.len()),
            fix: None,
        },
        Err(e) => Check {
            name: "hooks",
            ok: false,
            result: e.to_string(),
            fix: Some("fix the script at the line named".into()),
        },
    }
}
