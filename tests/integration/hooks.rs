//! The Lua hook runtime end to end: real Lua in a real worker process (this package's binary).

use crate::common::BIN;
use codeformer_ledger::hooks::{
    apply_submit_changes, FailureKind, HookConfig, HookEffect, HookError, HookFn, HookHost,
    HookOutcome, LogLevel, SubmitDecision,
};
use codeformer_ledger::params::JobParams;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A temporary directory with `hooks/` and `out/`.
struct Place {
    dir: TempDir,
}

impl Place {
    fn new() -> Place {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        Place { dir }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn hook(&self, name: &str, source: &str) -> PathBuf {
        let path = self.dir.path().join("hooks").join(name);
        std::fs::write(&path, source).unwrap();
        path
    }

    fn example(&self, name: &str) -> PathBuf {
        let source = std::fs::read_to_string(Path::new("examples/hooks").join(name)).unwrap();
        self.hook(name, &source)
    }

    fn config(&self, files: Vec<PathBuf>) -> HookConfig {
        let mut config = HookConfig::new(files, self.out());
        config.worker_exe = BIN.into();
        config
    }

    fn host(&self, files: Vec<PathBuf>) -> HookHost {
        HookHost::start(self.config(files)).unwrap()
    }

    fn put(&self, relative: &str, bytes: &[u8]) {
        let path = self.out().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.out().join(relative)).unwrap()
    }
}

/// A job as the engine passes it.
fn job(outputs: &[&str]) -> Value {
    let outputs: Vec<Value> = outputs
        .iter()
        .map(|path| json!({"path": path, "sha256": "9f86d081884c7d65", "bytes": 1234}))
        .collect();
    json!({
        "id": 12, "key": "portrait-12", "batch": "b1", "attempt": 1, "rerun": false,
        "state": "completed", "image_url": "https://img.test/12.jpg",
        "params": {"fidelity": "0.5", "upscale": 2, "background_enhance": true, "face_upsample": true},
        "input": {"width": 333, "height": 517}, "output": {"width": 666, "height": 1034},
        "outputs": outputs,
        "estimated_cost": "0.0014", "actual_cost": "0.0014",
        "tags": {"client": "acme"}, "request_id": "req-12", "error": null,
        "created_at": "2026-03-31T10:00:00.000Z", "finished_at": "2026-03-31T10:00:09.000Z"
    })
}

fn case(name: &str) -> Value {
    json!({ "case": name })
}

fn failure(outcome: &HookOutcome) -> &codeformer_ledger::hooks::HookFailure {
    outcome
        .result
        .as_ref()
        .expect_err("the hook should have failed")
}

fn value(outcome: HookOutcome) -> Value {
    match outcome.result {
        Ok(value) => value,
        Err(failure) => panic!("hook failed: {failure:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The host API

#[test]
fn log_print_and_ledger_effects_arrive_in_order() {
    let place = Place::new();
    let file = place.hook(
        "effects.lua",
        r#"
        function on_complete(job)
          log.info("job", job.id)
          print("printed", 1, true, nil)
          log.warn("careful")
          ledger.note("a note")
          ledger.tag("client", job.tags.client)
          ledger.tag("retouched", true)
          log.error("bad")
          return { seen = job.id, error_is_nil = job.error == nil }
        end
        "#,
    );
    let mut host = place.host(vec![file.clone()]);
    assert_eq!(host.defines(HookFn::OnComplete), vec![0]);
    assert!(host.defines(HookFn::OnSubmit).is_empty());
    let outcome = host.call(0, HookFn::OnComplete, &job(&[]));
    assert_eq!(outcome.file, file);
    assert!(outcome.started_at <= outcome.ended_at);
    let log = |level, message: &str| HookEffect::Log {
        level,
        message: message.into(),
    };
    assert_eq!(
        outcome.effects,
        vec![
            log(LogLevel::Info, "job 12"),
            log(LogLevel::Info, "printed\t1\ttrue\tnil"),
            log(LogLevel::Warn, "careful"),
            HookEffect::Note("a note".into()),
            HookEffect::Tag("client".into(), "acme".into()),
            HookEffect::Tag("retouched".into(), "true".into()),
            log(LogLevel::Error, "bad"),
        ]
    );
    assert_eq!(value(outcome), json!({"seen": 12, "error_is_nil": true}));
}

#[test]
fn json_and_conversion_errors_name_field_and_type() {
    let place = Place::new();
    let file = place.hook(
        "json.lua",
        r#"
        local cases = {}
        function cases.round_trip(job)
          local text = json.encode(job.outputs)
          local back = json.decode('{"list": [], "n": 1.5, "gap": [1, null, 3], "none": null}')
          return { text = text, list = back.list, n = back.n, gap = back.gap, none = back.none == nil,
                   pretty = json.encode({a = 1}, {pretty = true}) }
        end
        function cases.encode_function() return json.encode({ outputs = { { path = print } } }) end
        function cases.decode_garbage() return json.decode("{oops") end
        function cases.tag_table() ledger.tag("k", {}) end
        function cases.returns_function() return { callback = print } end
        function on_complete(job) return cases[job.case](job) end
        "#,
    );
    let mut host = place.host(vec![file]);
    let mut arg = job(&["b1/12.png"]);
    arg["case"] = json!("round_trip");
    let got = value(host.call(0, HookFn::OnComplete, &arg));
    let text: Value = serde_json::from_str(got["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, arg["outputs"]);
    assert_eq!(got["list"], json!([]));
    assert_eq!(got["n"], json!(1.5));
    assert_eq!(got["gap"], json!([1, null, 3]));
    assert_eq!(got["none"], json!(true));
    assert_eq!(got["pretty"], json!("{\n  \"a\": 1\n}"));

    let expectations = [
        ("encode_function", "json.encode: field 'outputs[1].path': a function cannot be turned into JSON"),
        ("decode_garbage", "json.decode: invalid JSON: key must be a string at line 1 column 2"),
        ("tag_table", "ledger.tag: argument 'value' must be a string, got table"),
        ("returns_function", "returned a value that cannot be recorded as JSON: field 'callback': a function cannot be turned into JSON"),
    ];
    for (name, expected) in expectations {
        let outcome = host.call(0, HookFn::OnComplete, &case(name));
        let failure = failure(&outcome);
        assert_eq!(failure.kind, FailureKind::Error);
        assert!(
            failure.message.contains(expected),
            "{name}: {}",
            failure.message
        );
        assert!(
            failure.message.starts_with("on_complete in "),
            "{}",
            failure.message
        );
    }
}

#[test]
fn fs_functions_work_inside_the_output_directory() {
    let place = Place::new();
    place.put("b1/12.png", b"\x89PNG fake");
    let out = place.out().canonicalize().unwrap();
    let file = place.hook(
        "fs.lua",
        r#"
        function on_complete(job)
          local r = {}
          fs.mkdir("a/b/c")
          fs.write("a/b/c/note.txt", "hello")
          r.read = fs.read("a/b/c/note.txt")
          r.exists = fs.exists("a/b/c/note.txt")
          r.missing = fs.exists("nope.txt")
          fs.copy("b1/12.png", "a/copy.png")
          fs.rename("a/copy.png", "a/b/moved.png")
          r.moved = fs.exists("a/b/moved.png") and not fs.exists("a/copy.png")
          fs.write("a/b/c/note.txt", "replaced")
          r.replaced = fs.read("a/b/c/note.txt")
          r.relative = fs.relative(job.absolute)
          r.dotted = fs.relative("./a/../b1/12.png")
          return r
        end
        "#,
    );
    let mut host = place.host(vec![file]);
    let arg = json!({"absolute": out.join("b1/12.png")});
    let got = value(host.call(0, HookFn::OnComplete, &arg));
    assert_eq!(
        got,
        json!({"read": "hello", "exists": true, "missing": false, "moved": true,
               "replaced": "replaced", "relative": "b1/12.png", "dotted": "b1/12.png"})
    );
    assert_eq!(
        std::fs::read(place.out().join("a/b/moved.png")).unwrap(),
        b"\x89PNG fake"
    );
    let leftovers: Vec<_> = std::fs::read_dir(place.out().join("a/b/c"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec!["note.txt"],
        "no temporary files are left behind"
    );
}

// ---------------------------------------------------------------------------------------------
// The examples

#[test]
fn example_sidecar_writes_cost_and_parameters_next_to_each_output() {
    let place = Place::new();
    place.put("b1/12.png", b"png");
    place.put("b1/12-2.png", b"png");
    let mut host = place.host(vec![place.example("sidecar.lua")]);
    let absolute = place.out().join("b1/12-2.png");
    let outcome = host.call(
        0,
        HookFn::OnComplete,
        &job(&["b1/12.png", absolute.to_str().unwrap()]),
    );
    assert_eq!(outcome.effects.len(), 2, "{:?}", outcome.effects);
    value(outcome);
    for stem in ["b1/12", "b1/12-2"] {
        let sidecar: Value = serde_json::from_str(&place.read(&format!("{stem}.json"))).unwrap();
        assert_eq!(sidecar["actual_cost"], "0.0014");
        assert_eq!(sidecar["estimated_cost"], "0.0014");
        assert_eq!(sidecar["params"]["fidelity"], "0.5");
        assert_eq!(sidecar["params"]["upscale"], 2);
        assert_eq!(sidecar["file"], format!("{stem}.png"));
        assert_eq!(sidecar["job"], 12);
    }
}

#[test]
fn example_sort_by_tag_moves_outputs_into_tag_folders() {
    let place = Place::new();
    place.put("b1/12.png", b"one");
    place.put("b1/12_face.png", b"two");
    let mut host = place.host(vec![place.example("sort_by_tag.lua")]);
    let outcome = host.call(
        0,
        HookFn::OnComplete,
        &job(&["b1/12.png", "b1/12_face.png"]),
    );
    // Each rename is reported with full paths, so that the ledger's output paths follow it.
    let root = place.out().canonicalize().unwrap();
    let full = |p: &str| root.join(p).to_string_lossy().into_owned();
    let moved = |from: &str, to: &str| HookEffect::Moved {
        from: full(from),
        to: full(to),
    };
    assert_eq!(
        outcome.effects,
        vec![
            moved("b1/12.png", "acme/b1-12-1.png"),
            HookEffect::Note("moved b1/12.png to acme/b1-12-1.png".into()),
            moved("b1/12_face.png", "acme/b1-12-2.png"),
            HookEffect::Note("moved b1/12_face.png to acme/b1-12-2.png".into()),
            HookEffect::Tag("folder".into(), "acme".into()),
        ]
    );
    value(outcome);
    assert_eq!(place.read("acme/b1-12-1.png"), "one");
    assert_eq!(place.read("acme/b1-12-2.png"), "two");
    assert!(!place.out().join("b1/12.png").exists());

    let mut untagged = job(&["b1/13.png"]);
    untagged["tags"] = json!({});
    place.put("b1/13.png", b"three");
    value(host.call(0, HookFn::OnComplete, &untagged));
    assert_eq!(place.read("untagged/b1-12-1.png"), "three");
}

#[test]
fn example_tune_raises_fidelity_for_small_inputs_and_skips_large_ones() {
    let place = Place::new();
    let file = place.example("tune.lua");
    let mut host = place.host(vec![file.clone()]);
    assert_eq!(host.defines(HookFn::OnSubmit), vec![0]);
    let params = JobParams::new("https://img.test/12.jpg");

    let small = job(&[]);
    let outcome = host.call(0, HookFn::OnSubmit, &small);
    assert_eq!(outcome.effects.len(), 1);
    match apply_submit_changes(&params, &value(outcome)).unwrap() {
        SubmitDecision::Change(changed) => assert_eq!(changed.fidelity.to_string(), "0.7"),
        other => panic!("expected a change, got {other:?}"),
    }

    let mut large = job(&[]);
    large["input"] = json!({"width": 6000, "height": 4000});
    let result = value(host.call(0, HookFn::OnSubmit, &large));
    assert_eq!(result, json!([false, "too large"]));
    assert_eq!(
        apply_submit_changes(&params, &result).unwrap(),
        SubmitDecision::Skip {
            reason: "too large".into()
        }
    );

    let mut medium = job(&[]);
    medium["input"] = json!({"width": 1024, "height": 768});
    let result = value(host.call(0, HookFn::OnSubmit, &medium));
    assert_eq!(
        apply_submit_changes(&params, &result).unwrap(),
        SubmitDecision::Keep
    );

    let mut unknown = job(&[]);
    unknown.as_object_mut().unwrap().remove("input");
    let result = value(host.call(0, HookFn::OnSubmit, &unknown));
    assert_eq!(
        apply_submit_changes(&params, &result).unwrap(),
        SubmitDecision::Keep
    );
}

#[test]
fn example_summary_writes_summary_json() {
    let place = Place::new();
    let mut host = place.host(vec![place.example("summary.lua")]);
    let summary =
        json!({"batch": "b1", "jobs": 10, "completed": 9, "failed": 1, "charged": "0.0123"});
    let outcome = host.call(0, HookFn::OnBatchDone, &summary);
    assert!(
        matches!(&outcome.effects[..], [HookEffect::Log { level: LogLevel::Info, message }]
        if message == "summary: batch b1, 9 of 10 completed, charged $0.0123")
    );
    value(outcome);
    let written: Value = serde_json::from_str(&place.read("summary.json")).unwrap();
    assert_eq!(written["charged"], "0.0123");
    assert_eq!(written["completed"], 9);
    assert_eq!(written["success_rate"], 0.9);
    assert_eq!(written["details"], summary);
}

#[test]
fn on_submit_skip_without_reason_names_the_file_and_bad_changes_are_refused() {
    let place = Place::new();
    let file = place.hook(
        "submit.lua",
        r#"
        function on_submit(job)
          if job.case == "skip" then return false end
          if job.case == "fidelity" then return { fidelity = 1.5 } end
          if job.case == "unknown" then return { image = "https://elsewhere.test/x.png" } end
          return { upscale = 4, face_upsample = false }
        end
        "#,
    );
    let mut host = place.host(vec![file.clone()]);
    let params = JobParams::new("https://img.test/12.jpg");
    let decide = |host: &mut HookHost, name| {
        let result = value(host.call(0, HookFn::OnSubmit, &case(name)));
        apply_submit_changes(&params, &result)
    };
    assert_eq!(
        decide(&mut host, "skip").unwrap(),
        SubmitDecision::Skip {
            reason: format!("skipped by on_submit in {}", file.display())
        }
    );
    let error = decide(&mut host, "fidelity").unwrap_err();
    assert_eq!(error.field, "fidelity");
    assert_eq!(error.to_string(), "fidelity: 1.5 is outside 0..1");
    let error = decide(&mut host, "unknown").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("`image` is not a parameter a hook can change"),
        "{error}"
    );
    match decide(&mut host, "change").unwrap() {
        SubmitDecision::Change(changed) => {
            assert_eq!(changed.upscale, 4);
            assert!(!changed.face_upsample);
        }
        other => panic!("expected a change, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Escapes and failures: each stopped with a clear error, the host usable afterwards

const ESCAPES: &str = r#"
local cases = {}
function cases.ok() return "fine" end
function cases.io_open() return io.open("/etc/passwd"):read("a") end
function cases.os_execute() return os.execute("echo escaped") end
function cases.os_remove() return os.remove("x") end
function cases.dofile() return dofile("/etc/passwd") end
function cases.binary_chunk()
  local chunk, err = load(string.dump(function() return 1 end))
  if not chunk then error(err, 0) end
  return chunk()
end
function cases.binary_mode() return load("return 1", "x", "b") end
function cases.require_c() return require("socket.core") end
function cases.debug() return debug.getinfo(1) end
function cases.write_up() fs.write("../x", "escaped") end
function cases.write_absolute() fs.write("/tmp/escaped", "escaped") end
function cases.read_through_link() return fs.read("link/secret.txt") end
function cases.write_through_link() fs.write("link/new.txt", "escaped") end
function cases.copy_out() fs.copy("inside.txt", "link/copied.txt") end
function cases.spin() while true do end end
function cases.spin_pcall() while true do pcall(function() while true do end end) end end
function cases.spin_coroutine()
  while true do coroutine.resume(coroutine.create(function() while true do end end)) end
end
local function deeper(t)
  local value = t.missing.field
  return value
end
function cases.runtime(job)
  local value = deeper(job)
  return value
end
function cases.os_time() return os.time() > 0 and type(os.clock()) == "number" and #os.date("%Y") == 4 end
function on_complete(job) return cases[job.case](job) end
"#;

fn escapes_host(place: &Place) -> HookHost {
    let file = place.hook("escapes.lua", ESCAPES);
    let mut config = place.config(vec![file]);
    config.instruction_limit = 5_000_000;
    HookHost::start(config).unwrap()
}

fn assert_still_usable(host: &mut HookHost) {
    assert_eq!(
        value(host.call(0, HookFn::OnComplete, &case("ok"))),
        json!("fine")
    );
}

#[test]
fn sandbox_refuses_unsafe_libraries_with_clear_errors() {
    let place = Place::new();
    let mut host = escapes_host(&place);
    let expectations = [
        (
            "io_open",
            "io.open is not available to sandboxed hooks; use fs.read and fs.write",
        ),
        (
            "os_execute",
            "os.execute is not available to sandboxed hooks",
        ),
        ("os_remove", "os.remove is not available to sandboxed hooks"),
        ("dofile", "dofile is not available to sandboxed hooks"),
        (
            "binary_chunk",
            "attempt to load a binary chunk (mode is 't')",
        ),
        (
            "binary_mode",
            "load: sandboxed hooks may load text chunks only (mode 't'), not mode 'b'",
        ),
        (
            "require_c",
            "require is not available to sandboxed hooks: they cannot load modules",
        ),
        ("debug", "debug.getinfo is not available to sandboxed hooks"),
    ];
    for (name, expected) in expectations {
        let outcome = host.call(0, HookFn::OnComplete, &case(name));
        let failure = failure(&outcome);
        assert_eq!(failure.kind, FailureKind::Error, "{name}");
        assert!(
            failure.message.contains(expected),
            "{name}: {}",
            failure.message
        );
        assert!(
            failure.message.contains("escapes.lua"),
            "{name}: {}",
            failure.message
        );
        assert_still_usable(&mut host);
    }
    assert_eq!(
        value(host.call(0, HookFn::OnComplete, &case("os_time"))),
        json!(true)
    );
}

#[test]
#[cfg(unix)]
fn fs_refuses_paths_that_leave_the_output_directory() {
    let place = Place::new();
    let outside = place.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, place.out().join("link")).unwrap();
    place.put("inside.txt", b"inside");
    let mut host = escapes_host(&place);
    let expectations = [
        (
            "write_up",
            "fs.write: path '../x' leaves the output directory",
        ),
        (
            "write_absolute",
            "fs.write: path '/tmp/escaped' is absolute; paths are relative to the output directory",
        ),
        (
            "read_through_link",
            "fs.read: path 'link/secret.txt' leaves the output directory (through a symbolic link)",
        ),
        (
            "write_through_link",
            "fs.write: path 'link/new.txt' leaves the output directory (through a symbolic link)",
        ),
        (
            "copy_out",
            "fs.copy: path 'link/copied.txt' leaves the output directory (through a symbolic link)",
        ),
    ];
    for (name, expected) in expectations {
        let outcome = host.call(0, HookFn::OnComplete, &case(name));
        let failure = failure(&outcome);
        assert!(
            failure.message.contains(expected),
            "{name}: {}",
            failure.message
        );
        assert_still_usable(&mut host);
    }
    assert!(!place.dir.path().join("x").exists());
    let mut outside_files: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    outside_files.sort();
    assert_eq!(outside_files, vec!["secret.txt"]);
}

#[test]
fn runaway_loops_hit_the_instruction_limit_even_when_they_catch_errors() {
    let place = Place::new();
    let mut host = escapes_host(&place);
    for name in ["spin", "spin_pcall", "spin_coroutine"] {
        let outcome = host.call(0, HookFn::OnComplete, &case(name));
        let failure = failure(&outcome);
        assert_eq!(
            failure.kind,
            FailureKind::InstructionLimit,
            "{name}: {failure:?}"
        );
        assert!(
            failure.message.contains("on_complete in")
                && failure
                    .message
                    .contains("ran more than 5000000 Lua instructions"),
            "{}",
            failure.message
        );
        assert!(
            failure
                .traceback
                .as_deref()
                .unwrap_or("")
                .contains("escapes.lua"),
            "{failure:?}"
        );
        assert_still_usable(&mut host);
    }
}

#[test]
fn a_runtime_error_comes_back_with_its_traceback() {
    let place = Place::new();
    let mut host = escapes_host(&place);
    let outcome = host.call(0, HookFn::OnComplete, &case("runtime"));
    let failure = failure(&outcome);
    assert_eq!(failure.kind, FailureKind::Error);
    assert!(
        failure
            .message
            .contains("escapes.lua:27: attempt to index a nil value (field 'missing')"),
        "{}",
        failure.message
    );
    let traceback = failure.traceback.as_deref().expect("a traceback");
    assert!(traceback.starts_with("stack traceback:"), "{traceback}");
    assert!(traceback.contains("in upvalue 'deeper'"), "{traceback}");
    assert!(
        traceback.contains("escapes.lua:31: in function"),
        "{traceback}"
    );
    assert_still_usable(&mut host);
}

#[test]
fn a_pathological_pattern_is_stopped_by_the_wall_clock() {
    let place = Place::new();
    let file = place.hook(
        "slow.lua",
        r#"
        function on_complete(job)
          if job.case == "ok" then return "fine" end
          log.info("before the pattern")
          return string.find(("a"):rep(30), ("a*"):rep(30) .. "b")
        end
        "#,
    );
    let mut config = place.config(vec![file]);
    config.timeout = Duration::from_secs(1);
    let mut host = HookHost::start(config).unwrap();
    let started = Instant::now();
    let outcome = host.call(0, HookFn::OnComplete, &case("slow"));
    let elapsed = started.elapsed();
    let failure = failure(&outcome);
    assert_eq!(failure.kind, FailureKind::Timeout);
    assert!(
        failure.message.contains("ran longer than 1s"),
        "{}",
        failure.message
    );
    // Not before its limit (what it measured as a Timeout rather than another failure).
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(
        outcome.effects,
        vec![HookEffect::Log {
            level: LogLevel::Info,
            message: "before the pattern".into()
        }],
        "effects before the kill are kept"
    );
    // A fresh worker, with the same hooks loaded.
    assert_still_usable(&mut host);
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let place = Place::new();
    let file = place.hook(
        "bomb.lua",
        r#"
        function on_complete(job)
          if job.case == "ok" then return "fine" end
          local t, i = {}, 0
          while true do
            i = i + 1
            t[i] = string.rep("x", 1024 * 1024) .. i
          end
        end
        "#,
    );
    let mut config = place.config(vec![file]);
    config.memory_limit = 32 * 1024 * 1024;
    let mut host = HookHost::start(config).unwrap();
    let outcome = host.call(0, HookFn::OnComplete, &case("bomb"));
    let failure = failure(&outcome);
    assert_eq!(failure.kind, FailureKind::MemoryLimit, "{failure:?}");
    assert!(
        failure.message.contains("needed more than 32 MiB"),
        "{}",
        failure.message
    );
    assert_still_usable(&mut host);
    // The memory of the failed call was given back: the same bomb fails the same way.
    let again = host.call(0, HookFn::OnComplete, &case("bomb"));
    assert_eq!(again.result.unwrap_err().kind, FailureKind::MemoryLimit);
}

#[test]
fn a_syntax_error_is_reported_at_start_with_file_and_line() {
    let place = Place::new();
    let good = place.hook("good.lua", "function on_complete(job) end\n");
    let bad = place.hook(
        "bad.lua",
        "function on_complete(job)\n  local x = = 1\nend\n",
    );
    let error = HookHost::start(place.config(vec![good, bad.clone()])).unwrap_err();
    match &error {
        HookError::Load {
            path,
            line,
            message,
        } => {
            assert_eq!(path, &bad);
            assert_eq!(*line, Some(2));
            assert!(
                message.contains("bad.lua:2: unexpected symbol near '='"),
                "{message}"
            );
        }
        other => panic!("expected a load error, got {other:?}"),
    }
    assert!(error.to_string().contains("bad.lua:2:"), "{error}");

    let top = place.hook("top.lua", "local n = nil\nprint(n.x)\n");
    match HookHost::start(place.config(vec![top])).unwrap_err() {
        HookError::Load { line, message, .. } => {
            assert_eq!(line, Some(2), "{message}");
            assert!(
                message.contains("attempt to index a nil value"),
                "{message}"
            );
        }
        other => panic!("expected a load error, got {other:?}"),
    }

    let missing = place.dir.path().join("hooks/missing.lua");
    assert!(matches!(
        HookHost::start(place.config(vec![missing])),
        Err(HookError::Read { .. })
    ));
}

#[test]
fn trusted_hooks_get_the_standard_library_but_not_the_api_key() {
    // Only this test sets the variable; the worker must not inherit it in either mode.
    std::env::set_var("PIXAZO_API_KEY", "sk-test-must-not-leak");
    let place = Place::new();
    let file = place.hook(
        "trusted.lua",
        r#"
        function on_complete(job)
          if job.case == "ok" then return "fine" end
          if job.case == "crash" then os.exit(3) end
          io.write("noise on stdout must not break the protocol\n")
          io.stdout:flush()
          local ok = pcall(fs.write, "../escaped", "x")
          return { key = os.getenv("PIXAZO_API_KEY") or json.null, io = io.open ~= nil,
                   debug = debug.traceback ~= nil, fs_confined = not ok }
        end
        "#,
    );
    let mut config = place.config(vec![file]);
    config.trusted = true;
    let mut host = HookHost::start(config).unwrap();
    let got = value(host.call(0, HookFn::OnComplete, &case("look")));
    assert_eq!(
        got,
        json!({"key": null, "io": true, "debug": true, "fs_confined": true})
    );

    let outcome = host.call(0, HookFn::OnComplete, &case("crash"));
    let failure = failure(&outcome);
    assert_eq!(failure.kind, FailureKind::WorkerCrashed);
    assert!(
        failure.message.contains("the hook worker died"),
        "{}",
        failure.message
    );
    assert_still_usable(&mut host);
}

#[test]
fn a_missing_function_returns_null_and_a_bad_index_fails() {
    let place = Place::new();
    let file = place.hook("one.lua", "function on_complete(job) return 1 end\n");
    let mut host = place.host(vec![file]);
    assert_eq!(
        value(host.call(0, HookFn::OnFailed, &json!({}))),
        Value::Null
    );
    let outcome = host.call(7, HookFn::OnComplete, &json!({}));
    assert_eq!(failure(&outcome).kind, FailureKind::Error);
    assert_eq!(
        value(host.call(0, HookFn::OnComplete, &json!({}))),
        json!(1)
    );
}

#[test]
#[cfg(unix)]
fn a_worker_that_is_not_this_program_is_reported_at_start() {
    let place = Place::new();
    use std::os::unix::fs::PermissionsExt;
    let file = place.hook("one.lua", "function on_complete(job) end\n");
    let chatty = place.hook("chatty.sh", "#!/bin/sh\necho hello\nexec cat >/dev/null\n");
    std::fs::set_permissions(&chatty, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (exe, expected) in [
        (PathBuf::from("/bin/true"), "exited while loading the hooks"),
        (chatty, "does not speak the hook protocol: hello"),
    ] {
        let mut config = place.config(vec![file.clone()]);
        config.worker_exe = exe.clone();
        match HookHost::start(config) {
            Err(HookError::Worker(message)) => {
                assert!(message.contains(expected), "{}: {message}", exe.display())
            }
            other => panic!("{}: expected a worker error, got {other:?}", exe.display()),
        }
    }
}
