//! What an `on_submit` return value does to a job's parameters.
//!
//! Changes are checked by the rules of [`crate::params`], the same ones command-line flags and
//! manifest rows go through, so a hook cannot send what a user could not type.

use crate::params::{
    fidelity_from_f64, parse_bool, parse_fidelity, parse_upscale, validate_upscale, JobParams,
    ParamError,
};
use serde_json::Value;

/// What to do with a job after its `on_submit` hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitDecision {
    /// Send it as it is.
    Keep,
    /// Send it with these parameters.
    Change(JobParams),
    /// Do not send it; record it as skipped.
    Skip { reason: String },
}

/// The parameters `on_submit` may change.
const CHANGEABLE: &str =
    "fidelity (or the API's codeformer_fidelity), upscale, background_enhance or face_upsample";

/// Applies an `on_submit` return value ([`super::HookOutcome::result`]) to `params`, validated
/// exactly like command-line input.
///
/// `nil` keeps the job; `false` (or `false, "reason"`, which arrives as `[false, "reason"]`)
/// skips it; a table of changes (`{fidelity = 0.8, upscale = 4}`) changes it. A table that
/// changes nothing is [`SubmitDecision::Keep`]. The API's own field names are accepted too
/// (`codeformer_fidelity` for `fidelity`; the others are the same); a table that gives both
/// names with different values is refused.
pub fn apply_submit_changes(
    params: &JobParams,
    value: &Value,
) -> Result<SubmitDecision, ParamError> {
    let (first, second) = match value {
        Value::Array(values) => (values.first().unwrap_or(&Value::Null), values.get(1)),
        other => (other, None),
    };
    match first {
        Value::Null | Value::Bool(true) => Ok(SubmitDecision::Keep),
        Value::Bool(false) => {
            let reason = match second {
                Some(Value::String(reason)) if !reason.trim().is_empty() => reason.clone(),
                _ => "skipped by on_submit".to_string(),
            };
            Ok(SubmitDecision::Skip { reason })
        }
        Value::Object(changes) => {
            let mut changed = params.clone();
            let mut fidelity_given: Option<(&str, rust_decimal::Decimal)> = None;
            for (key, value) in changes {
                match key.as_str() {
                    name @ ("fidelity" | "codeformer_fidelity") => {
                        let new = fidelity(value)?;
                        if let Some((other, old)) = fidelity_given {
                            if old != new {
                                return Err(ParamError::new(
                                    "fidelity",
                                    format!("`{other}` is {} but `{name}` is {}: they name the same parameter; return one of them", old.normalize(), new.normalize()),
                                ));
                            }
                        }
                        fidelity_given = Some((name, new));
                        changed.fidelity = new;
                    }
                    "upscale" => changed.upscale = upscale(value)?,
                    "background_enhance" => {
                        changed.background_enhance = boolean("background_enhance", value)?
                    }
                    "face_upsample" => changed.face_upsample = boolean("face_upsample", value)?,
                    other => {
                        return Err(ParamError::new(
                            "on_submit",
                            format!("`{other}` is not a parameter a hook can change (expected {CHANGEABLE})"),
                        ))
                    }
                }
            }
            changed.validate()?;
            if changed == *params {
                Ok(SubmitDecision::Keep)
            } else {
                Ok(SubmitDecision::Change(changed))
            }
        }
        other => Err(ParamError::new(
            "on_submit",
            format!(
                "on_submit must return a table of changes, false or nothing; it returned {}",
                lua_type(other)
            ),
        )),
    }
}

fn fidelity(value: &Value) -> Result<rust_decimal::Decimal, ParamError> {
    match value {
        Value::Number(n) => fidelity_from_f64(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(text) => parse_fidelity(text),
        other => Err(ParamError::new(
            "fidelity",
            format!("expected a number 0..1, got {}", lua_type(other)),
        )),
    }
}

fn upscale(value: &Value) -> Result<u32, ParamError> {
    match value {
        Value::Number(n) => {
            let whole = n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            });
            match whole {
                Some(whole) => {
                    let factor = u32::try_from(whole).unwrap_or(u32::MAX);
                    validate_upscale(factor)?;
                    Ok(factor)
                }
                None => Err(ParamError::new(
                    "upscale",
                    format!("{n} is not a positive whole number"),
                )),
            }
        }
        Value::String(text) => parse_upscale(text),
        other => Err(ParamError::new(
            "upscale",
            format!("expected a whole number, got {}", lua_type(other)),
        )),
    }
}

fn boolean(field: &'static str, value: &Value) -> Result<bool, ParamError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(text) => parse_bool(field, text),
        other => Err(ParamError::new(
            field,
            format!("expected true or false, got {}", lua_type(other)),
        )),
    }
}

/// The Lua name of a JSON value's type, for messages to people who wrote Lua.
fn lua_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) | Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> JobParams {
        JobParams::new("https://x.test/a.png")
    }

    #[test]
    fn nothing_false_and_changes() {
        assert_eq!(
            apply_submit_changes(&params(), &json!(null)),
            Ok(SubmitDecision::Keep)
        );
        assert_eq!(
            apply_submit_changes(&params(), &json!({})),
            Ok(SubmitDecision::Keep)
        );
        assert_eq!(
            apply_submit_changes(&params(), &json!([false, "too large"])),
            Ok(SubmitDecision::Skip {
                reason: "too large".into()
            })
        );
        let SubmitDecision::Change(changed) = apply_submit_changes(
            &params(),
            &json!({"fidelity": 0.9, "upscale": 4.0, "face_upsample": "no"}),
        )
        .unwrap() else {
            panic!("expected a change");
        };
        assert_eq!(changed.fidelity.to_string(), "0.9");
        assert_eq!(changed.upscale, 4);
        assert!(!changed.face_upsample);
    }

    #[test]
    fn the_api_field_names_are_accepted() {
        let SubmitDecision::Change(changed) =
            apply_submit_changes(&params(), &json!({"codeformer_fidelity": 0.9})).unwrap()
        else {
            panic!("expected a change");
        };
        assert_eq!(changed.fidelity.to_string(), "0.9");
        let same = json!({"fidelity": "0.90", "codeformer_fidelity": 0.9, "upscale": 4});
        let SubmitDecision::Change(changed) = apply_submit_changes(&params(), &same).unwrap()
        else {
            panic!("expected a change");
        };
        assert_eq!(
            (changed.fidelity.normalize().to_string(), changed.upscale),
            ("0.9".into(), 4)
        );
    }

    #[test]
    fn bad_changes_name_their_field() {
        let error = |v| apply_submit_changes(&params(), &v).unwrap_err();
        assert_eq!(error(json!({"fidelity": 1.5})).field, "fidelity");
        assert_eq!(error(json!({"fidelity": true})).field, "fidelity");
        assert_eq!(error(json!({"upscale": 2.5})).field, "upscale");
        assert_eq!(error(json!({"upscale": 0})).field, "upscale");
        assert_eq!(
            error(json!({"background_enhance": 1})).field,
            "background_enhance"
        );
        assert_eq!(error(json!({"codeformer_fidelity": 1.5})).field, "fidelity");
        let both = error(json!({"fidelity": 0.5, "codeformer_fidelity": 0.9}));
        assert!(
            both.message.contains("`codeformer_fidelity` is 0.9"),
            "{both}"
        );
        let unknown = error(json!({"image": "https://x.test/b.png"}));
        assert!(unknown.message.contains("`image`"), "{unknown}");
        assert!(error(json!(42)).message.contains("returned a number"));
    }
}
