//! JSON ⇄ Lua, for the job table going in, return values coming out, and `json.*`.
//!
//! JSON `null` becomes `nil` in objects (so `if job.error then` reads naturally) and `json.null`
//! inside arrays (so positions survive). Arrays carry mlua's array metatable, so an empty array
//! goes back out as `[]`. Going out, a table whose keys are exactly `1..n` is an array; any other
//! table is an object with string (or integer) keys. A value with no JSON form is an error that
//! names the field it sits in and its Lua type.

use mlua::{Lua, Table, Value};
use serde_json::Value as Json;
use std::fmt;

/// Deeper than this is almost certainly a table that contains itself.
const MAX_DEPTH: usize = 100;

pub(crate) fn json_to_lua(lua: &Lua, value: &Json) -> mlua::Result<Value> {
    Ok(match value {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                let item = match item {
                    Json::Null => Value::NULL,
                    other => json_to_lua(lua, other)?,
                };
                table.raw_set(i + 1, item)?;
            }
            table.set_metatable(Some(mlua::LuaSerdeExt::array_metatable(lua)))?;
            Value::Table(table)
        }
        Json::Object(map) => {
            let table = lua.create_table_with_capacity(0, map.len())?;
            for (key, item) in map {
                if !item.is_null() {
                    table.raw_set(key.as_str(), json_to_lua(lua, item)?)?;
                }
            }
            Value::Table(table)
        }
    })
}

/// A Lua value with no JSON form, and where it sits.
#[derive(Debug)]
pub(crate) struct ConvertError {
    /// Innermost step last once [`lua_to_json`] returns.
    path: Vec<Step>,
    message: String,
}

#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            return f.write_str(&self.message);
        }
        f.write_str("field '")?;
        for (i, step) in self.path.iter().enumerate() {
            match step {
                Step::Key(key) if i == 0 => f.write_str(key)?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        write!(f, "': {}", self.message)
    }
}

impl ConvertError {
    fn new(message: String) -> Self {
        ConvertError {
            path: Vec::new(),
            message,
        }
    }

    fn at(mut self, step: Step) -> Self {
        self.path.push(step);
        self
    }
}

pub(crate) fn lua_to_json(value: &Value, array_mt: &Table) -> Result<Json, ConvertError> {
    to_json(value, array_mt, 0).map_err(|mut e| {
        e.path.reverse();
        e
    })
}

fn to_json(value: &Value, array_mt: &Table, depth: usize) -> Result<Json, ConvertError> {
    Ok(match value {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::from(*i),
        Value::Number(n) => serde_json::Number::from_f64(*n)
            .map(Json::Number)
            .ok_or_else(|| ConvertError::new(format!("the number {n} has no JSON form")))?,
        Value::String(s) => match s.to_str() {
            Ok(text) => Json::String(text.to_string()),
            Err(_) => {
                return Err(ConvertError::new(
                    "a string that is not UTF-8 text (binary data) has no JSON form".into(),
                ))
            }
        },
        Value::Table(table) => table_to_json(table, array_mt, depth)?,
        Value::LightUserData(ud) if ud.0.is_null() => Json::Null,
        other => {
            return Err(ConvertError::new(format!(
                "a {} cannot be turned into JSON",
                other.type_name()
            )))
        }
    })
}

fn table_to_json(table: &Table, array_mt: &Table, depth: usize) -> Result<Json, ConvertError> {
    if depth >= MAX_DEPTH {
        return Err(ConvertError::new(format!(
            "tables nested more than {MAX_DEPTH} deep (does a table contain itself?)"
        )));
    }
    let lua_error = |e: mlua::Error| ConvertError::new(e.to_string());
    let mut entries = Vec::new();
    for pair in table.pairs::<Value, Value>() {
        entries.push(pair.map_err(lua_error)?);
    }
    let len = table.raw_len();
    let marked_array = table.metatable().is_some_and(|mt| mt == *array_mt);
    let is_sequence = entries.len() == len && (len > 0 || marked_array);
    if is_sequence {
        let mut items = Vec::with_capacity(len);
        for index in 1..=len {
            let item: Value = table.raw_get(index).map_err(lua_error)?;
            items.push(to_json(&item, array_mt, depth + 1).map_err(|e| e.at(Step::Index(index)))?);
        }
        return Ok(Json::Array(items));
    }
    let mut map = serde_json::Map::with_capacity(entries.len());
    for (key, item) in entries {
        let key = match &key {
            Value::String(s) => s.to_str().map(|s| s.to_string()).map_err(|_| {
                ConvertError::new("a table key that is not UTF-8 text has no JSON form".into())
            })?,
            Value::Integer(i) => i.to_string(),
            other => {
                return Err(ConvertError::new(format!(
                    "a table key of type {} cannot be a JSON object key",
                    other.type_name()
                )))
            }
        };
        let item = to_json(&item, array_mt, depth + 1).map_err(|e| e.at(Step::Key(key.clone())))?;
        map.insert(key, item);
    }
    Ok(Json::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::LuaSerdeExt;
    use serde_json::json;

    fn round_trip(value: Json) -> Json {
        let lua = Lua::new();
        let lua_value = json_to_lua(&lua, &value).unwrap();
        lua_to_json(&lua_value, &lua.array_metatable()).unwrap()
    }

    #[test]
    fn job_shapes_survive_a_round_trip() {
        let job = json!({"id": 12, "outputs": [], "tags": {}, "params": {"fidelity": "0.5"},
                         "sizes": [1, 2.5, null, "x"], "error": null});
        let mut expected = job.clone();
        expected.as_object_mut().unwrap().remove("error");
        assert_eq!(round_trip(job), expected);
    }

    #[test]
    fn errors_name_the_field_and_the_type() {
        let lua = Lua::new();
        let value: Value = lua
            .load("return {outputs = {{path = 'a'}, {path = print}}}")
            .eval()
            .unwrap();
        let error = lua_to_json(&value, &lua.array_metatable()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field 'outputs[2].path': a function cannot be turned into JSON"
        );
        let cycle: Value = lua.load("local t = {} t.t = t return t").eval().unwrap();
        let error = lua_to_json(&cycle, &lua.array_metatable()).unwrap_err();
        assert!(error.to_string().contains("contain itself"), "{error}");
    }
}
