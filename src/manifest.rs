//! Manifest readers: the list of jobs a `batch` enqueues, as plain text, CSV or JSON Lines.
//!
//! A manifest is read whole and every row is checked before anything is enqueued: the result
//! is the rows that passed *and* every problem found, each naming its file, line and field, so
//! a user fixes a manifest in one pass. A caller must enqueue nothing while
//! [`Manifest::errors`] is not empty. Parameter values go through [`crate::params`], so a
//! value means the same in a manifest as on the command line, and the command line's values
//! are the defaults of every row.
//!
//! Formats:
//! - **Text**: one image URL a line. Blank lines and lines starting with `#` are skipped.
//! - **CSV**: a header row naming the columns, then one job a row. Columns: `image`
//!   (required), `fidelity`, `upscale`, `background_enhance`, `face_upsample`, `width`,
//!   `height`, `key`, `tags` (`k=v;k2=v2`), `webhook_events_filter` (`start;completed`). Header names are matched ignoring case and
//!   surrounding spaces; an empty cell means "the default". Lines starting with `#` are
//!   skipped.
//! - **JSON Lines**: one object a line, with the same names as fields. Numbers must be JSON
//!   numbers and booleans JSON booleans (a quoted `"0.7"` is an error, not a guess); `null`
//!   means "the default"; `tags` is an object of strings or a `k=v;k2=v2` string, and
//!   `webhook_events_filter` an array of strings. A number's
//!   shortest decimal form is read exactly as the command line reads its text. Blank lines and
//!   lines starting with `#` are skipped.
//!
//! In every format `width` and `height` go together, unknown columns or fields are errors, and
//! one explicit `key` given twice with different parameters is an error on its second line
//! (identical repeats are kept: the ledger's idempotency drops them). The format is taken from
//! the file's extension (`.txt`, `.csv`, `.jsonl`, `.ndjson`), else from its content.
//! No input makes these readers panic.

use crate::params::{self, JobParams, ParamError};
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The columns (CSV) and fields (JSON Lines) a manifest may have.
pub const COLUMNS: [&str; 10] = [
    "image",
    "fidelity",
    "upscale",
    "background_enhance",
    "face_upsample",
    "width",
    "height",
    "key",
    "tags",
    "webhook_events_filter",
];

/// The longest key accepted, in characters.
pub const MAX_KEY_CHARS: usize = 200;

/// How much of a message an error keeps, so that an enormous cell cannot flood a terminal.
const MAX_MESSAGE_CHARS: usize = 300;

/// A manifest's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Csv,
    JsonLines,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Csv => "csv",
            Format::JsonLines => "jsonl",
        }
    }

    /// The format a file's extension names, if it names one.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" => Some(Format::Text),
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            _ => None,
        }
    }

    /// The format of a text judged by its first significant line: `{` (or `[`) starts JSON
    /// Lines; a comma-separated line with an `image` cell (or `image` alone) is a CSV header;
    /// anything else is plain text.
    pub fn detect(text: &str) -> Format {
        let Some(first) = significant_lines(text).next().map(|(_, line)| line) else {
            return Format::Text;
        };
        if first.starts_with('{') || first.starts_with('[') {
            return Format::JsonLines;
        }
        let is_image_cell =
            |cell: &str| cell.trim().trim_matches('"').eq_ignore_ascii_case("image");
        if first.split(',').any(is_image_cell) {
            return Format::Csv;
        }
        Format::Text
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "txt" => Ok(Format::Text),
            "csv" => Ok(Format::Csv),
            "jsonl" | "ndjson" | "json-lines" => Ok(Format::JsonLines),
            _ => Err(format!(
                "`{s}` is not a manifest format (expected text, csv or jsonl)"
            )),
        }
    }
}

/// One valid job of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    /// The line it starts on (1-based).
    pub line: usize,
    pub params: JobParams,
    /// The input's size from `width`/`height`, for estimates without a network.
    pub size: Option<(u32, u32)>,
    pub key: Option<String>,
    pub tags: Vec<(String, String)>,
    /// `params.image` is a local file path as written (relative paths are relative to the
    /// manifest's folder); the command reads and uploads it, or refuses it without `--upload`.
    pub local: bool,
}

/// A problem in a manifest. Displays as `FILE:LINE: FIELD: MESSAGE` (without `FIELD: ` when
/// it concerns no one field, and without `:LINE` when it concerns the whole file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub file: String,
    /// 1-based; 0 for the whole file.
    pub line: usize,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every valid row and every problem of a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub rows: Vec<ManifestRow>,
    pub errors: Vec<ManifestError>,
}

impl Manifest {
    /// True when the manifest may be enqueued: no problem at all.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Reads and checks a manifest file. `defaults` gives each row the command line's parameters
/// (its `image` is ignored). The error is for a file that cannot be read as text at all;
/// problems in rows are in [`Manifest::errors`].
pub fn read_manifest(path: &Path, defaults: &JobParams) -> Result<Manifest, ManifestError> {
    let name = path.display().to_string();
    let file_error = |line: usize, message: String| ManifestError {
        file: name.clone(),
        line,
        field: None,
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| file_error(0, format!("cannot be read: {e}")))?;
    let text = decode(&bytes).map_err(|(line, message)| file_error(line, message))?;
    Ok(parse_manifest(&name, text, None, defaults))
}

/// Checks a manifest already in memory. `name` names it in errors; without a `format`, the
/// format is taken from `name`'s extension, else from the content.
pub fn parse_manifest(
    name: &str,
    text: &str,
    format: Option<Format>,
    defaults: &JobParams,
) -> Manifest {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let format = format
        .or_else(|| Format::from_extension(Path::new(name)))
        .unwrap_or_else(|| Format::detect(text));
    let mut reader = Reader {
        name,
        defaults,
        manifest: Manifest::default(),
        keys: HashMap::new(),
    };
    match format {
        Format::Text => reader.text(text),
        Format::Csv => reader.csv(text),
        Format::JsonLines => reader.json_lines(text),
    }
    reader.manifest
}

/// Text from a file's bytes, or the line and description of why it is not UTF-8 text.
fn decode(bytes: &[u8]) -> Result<&str, (usize, String)> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err((0, "is UTF-16 text; save it as UTF-8".into()));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        (
            line,
            format!(
                "is not UTF-8 text (an invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Lines that carry content: (1-based number, trimmed text), without blanks and `#` comments.
fn significant_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// Line numbers of byte offsets, for the CSV reader. (The csv crate's own line of a record
/// that follows a blank line is the blank line's.) Offsets must come in increasing order.
struct LineCounter<'a> {
    text: &'a [u8],
    offset: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> Self {
        LineCounter {
            text: text.as_bytes(),
            offset: 0,
            line: 1,
        }
    }

    /// The line of the first character at or after `byte` that does not end a line.
    fn line_at(&mut self, byte: u64) -> usize {
        let target = usize::try_from(byte)
            .unwrap_or(usize::MAX)
            .min(self.text.len());
        let mut start = target.max(self.offset);
        while self
            .text
            .get(start)
            .is_some_and(|b| matches!(b, b'\r' | b'\n'))
        {
            start += 1;
        }
        let passed = &self.text[self.offset..start];
        self.line += passed.iter().filter(|&&b| b == b'\n').count();
        self.offset = start;
        self.line
    }
}

/// A problem with one field of a row, before it is placed in a file and line.
struct Problem {
    field: Option<String>,
    message: String,
}

impl Problem {
    fn field(field: &str, message: impl Into<String>) -> Self {
        Problem {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    fn row(message: impl Into<String>) -> Self {
        Problem {
            field: None,
            message: message.into(),
        }
    }
}

impl From<ParamError> for Problem {
    fn from(e: ParamError) -> Self {
        Problem::field(e.field, e.message)
    }
}

/// The values a row gives, each checked on its own; `None` means "the default".
#[derive(Default)]
struct Fields {
    image: Option<String>,
    fidelity: Option<Decimal>,
    upscale: Option<u32>,
    background_enhance: Option<bool>,
    face_upsample: Option<bool>,
    width: Option<u32>,
    height: Option<u32>,
    key: Option<String>,
    tags: Vec<(String, String)>,
    webhook_events_filter: Option<Vec<String>>,
}

/// Reads the rows of one manifest, whatever its format, into a [`Manifest`].
struct Reader<'a> {
    name: &'a str,
    defaults: &'a JobParams,
    manifest: Manifest,
    /// Explicit keys seen so far, with the row that first used each.
    keys: HashMap<String, ManifestRow>,
}

impl Reader<'_> {
    fn text(&mut self, text: &str) {
        for (line, url) in significant_lines(text) {
            let fields = Fields {
                image: Some(url.to_string()),
                ..Fields::default()
            };
            self.finish(line, fields, Vec::new());
        }
    }

    fn csv(&mut self, text: &str) {
        let mut lines = LineCounter::new(text);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let mut header: Option<Vec<Option<&'static str>>> = None;
        for record in reader.records() {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    let line = e.position().map_or(0, |p| lines.line_at(p.byte()));
                    self.error(line, Problem::row(format!("unreadable CSV: {e}")));
                    break;
                }
            };
            let line = record.position().map_or(0, |p| lines.line_at(p.byte()));
            // Comments are skipped here, not by the csv crate, whose line numbers would then
            // leave them out.
            let comment = record.get(0).is_some_and(|cell| cell.starts_with('#'));
            if comment || record.iter().all(str::is_empty) {
                continue;
            }
            match &header {
                None => match self.csv_header(line, &record) {
                    Some(columns) => header = Some(columns),
                    None => return,
                },
                Some(columns) => self.csv_row(line, columns, &record),
            }
        }
    }

    /// Checks the header row; `None` when no row can be read under it.
    fn csv_header(
        &mut self,
        line: usize,
        record: &csv::StringRecord,
    ) -> Option<Vec<Option<&'static str>>> {
        let columns: Vec<Option<&'static str>> = record
            .iter()
            .map(|cell| {
                let name = cell.to_ascii_lowercase();
                COLUMNS.iter().copied().find(|c| *c == name)
            })
            .collect();
        if !columns.contains(&Some("image")) {
            // Most likely no header at all: say that, rather than call each cell unknown.
            let first = record.get(0).unwrap_or("");
            let hint = if first.contains("://") {
                " (the first line must be a header naming the columns, e.g. `image,upscale`)"
            } else {
                ""
            };
            let message = format!("the header has no `image` column{hint}");
            self.error(line, Problem::row(message));
            return None;
        }
        for (i, (cell, column)) in record.iter().zip(&columns).enumerate() {
            match column {
                None => self.error(line, unknown_name("column", cell)),
                Some(c) if columns[..i].contains(column) => {
                    let message = "this column appears twice in the header";
                    self.error(line, Problem::field(c, message))
                }
                Some(_) => {}
            }
        }
        Some(columns)
    }

    fn csv_row(
        &mut self,
        line: usize,
        columns: &[Option<&'static str>],
        record: &csv::StringRecord,
    ) {
        if record.len() != columns.len() {
            let message = format!(
                "this row has {} fields but the header has {}",
                record.len(),
                columns.len()
            );
            self.error(line, Problem::row(message));
            return;
        }
        let mut fields = Fields::default();
        let mut problems = Vec::new();
        for (column, cell) in columns.iter().zip(record) {
            if let (Some(column), false) = (column, cell.is_empty()) {
                if let Err(p) = set_text(&mut fields, column, cell) {
                    problems.push(p);
                }
            }
        }
        self.finish(line, fields, problems);
    }

    fn json_lines(&mut self, text: &str) {
        for (line, json) in significant_lines(text) {
            if let Some(field) = repeated_field(json) {
                let message = "this field appears twice in the object";
                self.error(line, Problem::field(&field, message));
                continue;
            }
            let object = match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(object)) => object,
                Ok(Value::Array(_)) => {
                    let message = "expected a JSON object, found an array \
                                   (JSON Lines holds one object per line)";
                    self.error(line, Problem::row(message));
                    continue;
                }
                Ok(other) => {
                    let message = format!("expected a JSON object, found {}", describe(&other));
                    self.error(line, Problem::row(message));
                    continue;
                }
                Err(e) => {
                    self.error(line, Problem::row(format!("not valid JSON: {e}")));
                    continue;
                }
            };
            let mut fields = Fields::default();
            let mut problems = Vec::new();
            for (name, value) in &object {
                if let Err(p) = set_json(&mut fields, name, value) {
                    problems.push(p);
                }
            }
            self.finish(line, fields, problems);
        }
    }

    /// Turns a row's fields into a job, or records its problems.
    fn finish(&mut self, line: usize, fields: Fields, mut problems: Vec<Problem>) {
        let row = build_row(line, fields, self.defaults, &mut problems);
        match row {
            Some(row) if problems.is_empty() => {
                if let Err(p) = self.check_key(&row) {
                    self.error(line, p);
                } else {
                    self.manifest.rows.push(row);
                }
            }
            _ => {
                for p in problems {
                    self.error(line, p);
                }
            }
        }
    }

    /// One explicit key names one job: a second use must repeat the first exactly.
    fn check_key(&mut self, row: &ManifestRow) -> Result<(), Problem> {
        let Some(key) = &row.key else { return Ok(()) };
        match self.keys.get(key) {
            None => {
                self.keys.insert(key.clone(), row.clone());
                Ok(())
            }
            Some(first) if same_job(first, row) => Ok(()),
            Some(first) => Err(Problem::field(
                "key",
                format!(
                    "`{}` is already used on line {} with different parameters",
                    clip(key),
                    first.line
                ),
            )),
        }
    }

    fn error(&mut self, line: usize, problem: Problem) {
        self.manifest.errors.push(ManifestError {
            file: self.name.to_string(),
            line,
            field: problem.field,
            message: clip(&problem.message),
        });
    }
}

fn same_job(a: &ManifestRow, b: &ManifestRow) -> bool {
    a.params == b.params && a.size == b.size && a.tags == b.tags
}

/// Applies defaults and cross-field rules; `None` (with problems) when the row is unusable.
fn build_row(
    line: usize,
    fields: Fields,
    defaults: &JobParams,
    problems: &mut Vec<Problem>,
) -> Option<ManifestRow> {
    // A field whose value was refused is not reported again as missing.
    let refused = |problems: &[Problem], name: &str| {
        problems.iter().any(|p| p.field.as_deref() == Some(name))
    };
    let Some(image) = fields.image else {
        if !refused(problems, "image") {
            let message = "missing (every row needs an image URL)";
            problems.push(Problem::field("image", message));
        }
        return None;
    };
    let local = params::is_local_path(&image);
    if !local {
        if let Err(e) = params::validate_image_url(&image) {
            problems.push(e.into());
        }
    }
    let together = "missing: width and height go together";
    let size = match (fields.width, fields.height) {
        (Some(w), Some(h)) => Some((w, h)),
        (None, None) => None,
        _ if refused(problems, "width") || refused(problems, "height") => None,
        (Some(_), None) => {
            problems.push(Problem::field("height", together));
            None
        }
        (None, Some(_)) => {
            problems.push(Problem::field("width", together));
            None
        }
    };
    let mut job = defaults.clone();
    job.image = image;
    job.fidelity = fields.fidelity.unwrap_or(job.fidelity);
    job.upscale = fields.upscale.unwrap_or(job.upscale);
    job.background_enhance = fields.background_enhance.unwrap_or(job.background_enhance);
    job.face_upsample = fields.face_upsample.unwrap_or(job.face_upsample);
    if fields.webhook_events_filter.is_some() {
        job.webhook_events_filter = fields.webhook_events_filter;
    }
    if problems.is_empty() {
        let mut check = job.clone();
        if local {
            check.image = "https://local.invalid/".into();
        }
        if let Err(e) = check.validate() {
            problems.push(e.into());
        }
    }
    Some(ManifestRow {
        line,
        params: job,
        size,
        key: fields.key,
        tags: fields.tags,
        local,
    })
}

/// Sets one field from a CSV cell (non-empty, trimmed).
fn set_text(fields: &mut Fields, column: &str, cell: &str) -> Result<(), Problem> {
    match column {
        "image" => fields.image = Some(cell.to_string()),
        "fidelity" => fields.fidelity = Some(params::parse_fidelity(cell)?),
        "upscale" => fields.upscale = Some(params::parse_upscale(cell)?),
        "background_enhance" => {
            fields.background_enhance = Some(params::parse_bool("background_enhance", cell)?)
        }
        "face_upsample" => fields.face_upsample = Some(params::parse_bool("face_upsample", cell)?),
        "width" => fields.width = Some(parse_side("width", cell)?),
        "height" => fields.height = Some(parse_side("height", cell)?),
        "key" => fields.key = parse_key(cell)?,
        "tags" => fields.tags = parse_tags(cell)?,
        "webhook_events_filter" => {
            fields.webhook_events_filter = Some(params::parse_events_filter(cell, ';')?)
        }
        other => return Err(unknown_name("column", other)),
    }
    Ok(())
}

/// Sets one field from a JSON value; `null` leaves the default.
fn set_json(fields: &mut Fields, name: &str, value: &Value) -> Result<(), Problem> {
    if !COLUMNS.contains(&name) {
        return Err(unknown_name("field", name));
    }
    if value.is_null() {
        return Ok(());
    }
    match (name, value) {
        ("image", Value::String(s)) => fields.image = Some(s.trim().to_string()),
        ("fidelity", Value::Number(n)) => fields.fidelity = Some(json_fidelity(n)?),
        ("upscale", Value::Number(n)) => {
            fields.upscale = Some(params::parse_upscale(&n.to_string())?)
        }
        ("background_enhance", Value::Bool(b)) => fields.background_enhance = Some(*b),
        ("face_upsample", Value::Bool(b)) => fields.face_upsample = Some(*b),
        ("width", Value::Number(n)) => fields.width = Some(parse_side("width", &n.to_string())?),
        ("height", Value::Number(n)) => fields.height = Some(parse_side("height", &n.to_string())?),
        ("key", Value::String(s)) => fields.key = parse_key(s)?,
        ("tags", Value::String(s)) => fields.tags = parse_tags(s)?,
        ("tags", Value::Object(map)) => fields.tags = json_tags(map)?,
        ("webhook_events_filter", Value::Array(items)) => {
            let events = items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| wrong_type(name, value))?;
            params::validate_events_filter(&events)?;
            fields.webhook_events_filter = Some(events);
        }
        _ => return Err(wrong_type(name, value)),
    }
    Ok(())
}

/// A JSON number's shortest decimal form, read as the command line reads `--fidelity`
/// (so `0.7` is exactly 0.7); forms with an exponent go through the float rule of `params`.
fn json_fidelity(n: &serde_json::Number) -> Result<Decimal, ParamError> {
    let text = n.to_string();
    if text.contains(['e', 'E']) {
        params::fidelity_from_f64(n.as_f64().unwrap_or(f64::NAN))
    } else {
        params::parse_fidelity(&text)
    }
}

fn json_tags(map: &serde_json::Map<String, Value>) -> Result<Vec<(String, String)>, Problem> {
    let mut tags = Vec::new();
    for (k, v) in map {
        if k.contains('=') {
            let message = format!(
                "the tag name `{}` contains `=`: tag names cannot (a tag is written KEY=VALUE everywhere else)",
                clip(k)
            );
            return Err(Problem::field("tags", message));
        }
        let Value::String(v) = v else {
            let message = format!(
                "`{}`: expected a string value, found {}",
                clip(k),
                describe(v)
            );
            return Err(Problem::field("tags", message));
        };
        let tag = params::parse_tag(&format!("{k}={v}"))
            .map_err(|e| Problem::field("tags", e.message))?;
        tags.push(tag);
    }
    check_unique_tags(tags)
}

/// The first field (at any depth, path dotted) that a JSON object gives twice, if any:
/// serde_json keeps the last of two silently, so a row would lose a value without a word.
/// Text that is not valid JSON gives `None` (the caller reports it).
fn repeated_field(json: &str) -> Option<String> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

    /// Walks a JSON value; fails with the dotted path of the first repeated field.
    struct Walk(String);

    impl<'de> serde::de::DeserializeSeed<'de> for Walk {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let path = if self.0.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.0)
                };
                if !seen.insert(key) {
                    return Err(serde::de::Error::custom(format!("\u{0}{path}")));
                }
                map.next_value_seed(Walk(path))?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Walk(self.0.clone()))?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_str(json);
    let err = serde::de::DeserializeSeed::deserialize(Walk(String::new()), &mut de).err()?;
    let text = err.to_string();
    let start = text.find('\u{0}')? + 1;
    let end = text[start..]
        .find(" at line ")
        .map_or(text.len(), |i| start + i);
    Some(text[start..end].to_string())
}

/// `k=v;k2=v2`, empty pieces ignored.
fn parse_tags(text: &str) -> Result<Vec<(String, String)>, Problem> {
    let tags = text
        .split(';')
        .filter(|piece| !piece.trim().is_empty())
        .map(|piece| params::parse_tag(piece).map_err(|e| Problem::field("tags", e.message)))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique_tags(tags)
}

fn check_unique_tags(tags: Vec<(String, String)>) -> Result<Vec<(String, String)>, Problem> {
    for (i, (k, _)) in tags.iter().enumerate() {
        if tags[..i].iter().any(|(earlier, _)| earlier == k) {
            return Err(Problem::field(
                "tags",
                format!("`{}` is given twice", clip(k)),
            ));
        }
    }
    Ok(tags)
}

/// A key: blank means none; no control characters; at most [`MAX_KEY_CHARS`].
fn parse_key(text: &str) -> Result<Option<String>, Problem> {
    let key = text.trim();
    if key.is_empty() {
        return Ok(None);
    }
    if key.chars().any(char::is_control) {
        return Err(Problem::field(
            "key",
            format!("`{}` contains a control character", clip(key)),
        ));
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(Problem::field(
            "key",
            format!("is longer than {MAX_KEY_CHARS} characters"),
        ));
    }
    Ok(Some(key.to_string()))
}

/// A width or height: a positive whole number of pixels.
fn parse_side(field: &str, text: &str) -> Result<u32, Problem> {
    match text.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Problem::field(
            field,
            format!("`{}` is not a positive whole number of pixels", clip(text)),
        )),
    }
}

fn unknown_name(what: &str, name: &str) -> Problem {
    Problem::field(
        name,
        format!("unknown {what} (expected one of: {})", COLUMNS.join(", ")),
    )
}

fn wrong_type(name: &str, value: &Value) -> Problem {
    let expected = match name {
        "image" | "key" => "a string",
        "fidelity" | "upscale" | "width" | "height" => "a number",
        "background_enhance" | "face_upsample" => "true or false",
        "webhook_events_filter" => "an array of strings",
        _ => "an object of strings or a \"k=v;k2=v2\" string",
    };
    let hint = match value {
        Value::String(_) if expected != "a string" => " (write it without quotes)",
        _ => "",
    };
    Problem::field(
        name,
        format!("expected {expected}, found {}{hint}", describe(value)),
    )
}

/// A JSON value as an error message shows it.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", clip(&Value::String(s.clone()).to_string())),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// At most [`MAX_MESSAGE_CHARS`] characters of `text`, marked when cut.
fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn defaults() -> JobParams {
        JobParams::new("")
    }

    fn parse(name: &str, text: &str) -> Manifest {
        parse_manifest(name, text, None, &defaults())
    }

    fn messages(m: &Manifest) -> Vec<String> {
        m.errors.iter().map(ToString::to_string).collect()
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn text_lines_comments_bom_and_crlf() {
        let text =
            "\u{feff}# photos\r\n\r\nhttp://x.test/a.png\r\n   \r\n  https://x.test/b.jpg  \r\n";
        let m = parse("list.txt", text);
        assert!(m.is_valid(), "{:?}", m.errors);
        let got: Vec<_> = m
            .rows
            .iter()
            .map(|r| (r.line, r.params.image.as_str()))
            .collect();
        assert_eq!(
            got,
            [(3, "http://x.test/a.png"), (5, "https://x.test/b.jpg")]
        );
        assert_eq!(m.rows[0].params.upscale, 2);
        assert_eq!(m.rows[0].size, None);
    }

    #[test]
    fn text_errors_name_file_line_and_field() {
        let m = parse(
            "list.txt",
            "http://x.test/a.png\nftp://x.test/b.png\n/tmp/c.png\n",
        );
        // A local path is a row of its own kind: the command reads it (with --upload) or
        // refuses it naming --upload.
        assert_eq!(m.rows.len(), 2);
        assert_eq!(messages(&m).len(), 1);
        assert_eq!(
            messages(&m)[0],
            "list.txt:2: image: `ftp://x.test/b.png` is not an http(s) URL"
        );
        assert!(m.rows[1].local && !m.rows[0].local);
        assert_eq!(m.rows[1].params.image, "/tmp/c.png");
    }

    #[test]
    fn a_json_field_given_twice_is_refused_naming_it() {
        let m = parse(
            "m.jsonl",
            "{\"image\": \"http://x.test/a.png\", \"upscale\": 2, \"upscale\": 4}\n\
             {\"image\": \"http://x.test/b.png\", \"tags\": {\"c\": \"a\", \"c\": \"b\"}}\n\
             {\"image\": \"http://x.test/c.png\"}\n",
        );
        assert_eq!(
            messages(&m),
            [
                "m.jsonl:1: upscale: this field appears twice in the object",
                "m.jsonl:2: tags.c: this field appears twice in the object",
            ]
        );
        assert_eq!(m.rows.len(), 1);
        assert_eq!(
            repeated_field("{\"a\": [{\"b\": 1, \"b\": 2}]}").as_deref(),
            Some("a.b")
        );
        assert_eq!(repeated_field("{\"a\": 1, \"b\": {\"a\": 2}}"), None);
        assert_eq!(repeated_field("{not json"), None);
    }

    #[test]
    fn a_tag_name_with_an_equals_sign_is_refused() {
        let m = parse(
            "m.jsonl",
            "{\"image\": \"http://x.test/a.png\", \"tags\": {\"a=b\": \"c\"}}\n",
        );
        assert_eq!(m.rows.len(), 0);
        assert!(
            messages(&m)[0].starts_with("m.jsonl:1: tags: the tag name `a=b` contains `=`"),
            "{:?}",
            m.errors
        );
    }

    #[test]
    fn defaults_come_from_the_command_line() {
        let mut d = defaults();
        d.upscale = 4;
        d.fidelity = dec("0.9");
        d.face_upsample = false;
        let m = parse_manifest(
            "m.csv",
            "image,upscale\nhttp://x.test/a.png,\nhttp://x.test/b.png,1\n",
            None,
            &d,
        );
        assert!(m.is_valid(), "{:?}", m.errors);
        assert_eq!(m.rows[0].params.upscale, 4);
        assert_eq!(m.rows[1].params.upscale, 1);
        assert_eq!(m.rows[1].params.fidelity, dec("0.9"));
        assert!(!m.rows[1].params.face_upsample);
    }

    #[test]
    fn csv_with_every_column() {
        let text =
            "Image , fidelity,upscale,background_enhance,face_upsample,width,height,key,tags\n\
                    \"http://x.test/a,b.png\",0.70,4,no,1,640,480, k-1 ,album=1998; who = gran ;\n";
        let m = parse("rows.csv", text);
        assert!(m.is_valid(), "{:?}", m.errors);
        let row = &m.rows[0];
        assert_eq!(row.line, 2);
        assert_eq!(row.params.image, "http://x.test/a,b.png");
        assert_eq!(row.params.fidelity, dec("0.7"));
        assert_eq!(row.params.upscale, 4);
        assert!(!row.params.background_enhance);
        assert!(row.params.face_upsample);
        assert_eq!(row.size, Some((640, 480)));
        assert_eq!(row.key.as_deref(), Some("k-1"));
        assert_eq!(
            row.tags,
            [
                ("album".into(), "1998".into()),
                ("who".into(), "gran".into())
            ]
        );
    }

    #[test]
    fn csv_errors_are_all_collected() {
        let text = "image,fidelity,upscale,width,height,tags\n\
                    http://x.test/1.png,7,2,,,\n\
                    http://x.test/2.png,0.5,16,10,,\n\
                    # a comment, with a comma\n\
                    \n\
                    http://x.test/3.png,abc,x,0,5,novalue\n\
                    http://x.test/4.png,0.5\n\
                    ,0.5,2,,,\n\
                    http://x.test/6.png,1,1,,,\n";
        let m = parse("rows.csv", text);
        assert_eq!(m.rows.len(), 1);
        assert_eq!(m.rows[0].line, 9);
        assert_eq!(
            messages(&m),
            [
                "rows.csv:2: fidelity: 7 is outside 0..1",
                "rows.csv:3: upscale: 16 is outside 1..8",
                "rows.csv:3: height: missing: width and height go together",
                "rows.csv:6: fidelity: `abc` is not a number (expected 0..1)",
                "rows.csv:6: upscale: `x` is not a positive whole number",
                "rows.csv:6: width: `0` is not a positive whole number of pixels",
                "rows.csv:6: tags: `novalue` is not KEY=VALUE",
                "rows.csv:7: this row has 2 fields but the header has 6",
                "rows.csv:8: image: missing (every row needs an image URL)",
            ]
        );
    }

    #[test]
    fn webhook_events_filter_is_a_list_in_csv_and_an_array_in_json() {
        let m = parse(
            "w.csv",
            "image,webhook_events_filter\nhttp://x.test/a.png,start;completed\nhttp://x.test/b.png,\n",
        );
        assert!(m.errors.is_empty(), "{:?}", messages(&m));
        assert_eq!(
            m.rows[0].params.webhook_events_filter.as_deref(),
            Some(&["start".to_string(), "completed".to_string()][..])
        );
        assert_eq!(m.rows[1].params.webhook_events_filter, None);
        let m = parse(
            "w.jsonl",
            "{\"image\": \"http://x.test/a.png\", \"webhook_events_filter\": [\"logs\"]}\n\
             {\"image\": \"http://x.test/b.png\", \"webhook_events_filter\": \"logs\"}\n\
             {\"image\": \"http://x.test/c.png\", \"webhook_events_filter\": [\"a b\"]}\n",
        );
        assert_eq!(
            m.rows[0].params.webhook_events_filter.as_deref(),
            Some(&["logs".to_string()][..])
        );
        let said = messages(&m);
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("w.jsonl:2: webhook_events_filter: expected an array of strings"),
            "{said:?}"
        );
        assert!(
            said[1].starts_with("w.jsonl:3: webhook_events_filter:"),
            "{said:?}"
        );
    }

    #[test]
    fn csv_header_problems() {
        let m = parse(
            "h.csv",
            "image,colour,fidelity\nhttp://x.test/a.png,red,0.5\n",
        );
        assert_eq!(
            messages(&m),
            [
                "h.csv:1: colour: unknown column (expected one of: image, fidelity, upscale, \
              background_enhance, face_upsample, width, height, key, tags, webhook_events_filter)"
            ]
        );
        assert_eq!(m.rows.len(), 1, "the other columns are still checked");

        let m = parse("h.csv", "url,fidelity\nhttp://x.test/a.png,0.5\n");
        assert_eq!(messages(&m), ["h.csv:1: the header has no `image` column"]);
        assert!(m.rows.is_empty());

        let m = parse_manifest(
            "h",
            "http://x.test/a.png,0.5\n",
            Some(Format::Csv),
            &defaults(),
        );
        assert_eq!(
            messages(&m),
            [
                "h:1: the header has no `image` column (the first line must be a header naming \
              the columns, e.g. `image,upscale`)"
            ]
        );

        let m = parse("h.csv", "image,key,KEY\nhttp://x.test/a.png,a,b\n");
        assert_eq!(
            messages(&m),
            ["h.csv:1: key: this column appears twice in the header"]
        );
    }

    #[test]
    fn csv_line_numbers_count_blank_lines_comments_and_crlf() {
        let text = "\u{feff}# made by hand\r\nimage\r\n\r\n\r\nhttp://x.test/a.png\r\n  \r\n\
                    # \"quoted\", comment\r\nftp://bad\r\n";
        let m = parse("crlf.csv", text);
        assert_eq!(m.rows[0].line, 5);
        assert_eq!(m.rows[0].params.image, "http://x.test/a.png");
        assert_eq!(
            messages(&m),
            ["crlf.csv:8: image: `ftp://bad` is not an http(s) URL"]
        );
    }

    #[test]
    fn csv_records_spanning_lines_report_their_first_line() {
        let text = "image,tags\nhttp://x.test/a.png,\"a=1;\nb=2\"\nhttp://x.test/b.png,c\n";
        let m = parse("q.csv", text);
        assert_eq!(m.rows[0].tags.len(), 2);
        assert_eq!(messages(&m), ["q.csv:4: tags: `c` is not KEY=VALUE"]);
    }

    #[test]
    fn json_lines_with_every_field() {
        let text = r#"
# jobs
{"image": " http://x.test/a.png ", "fidelity": 0.7, "upscale": 4, "background_enhance": false,
{"image": "http://x.test/b.png", "fidelity": 1, "upscale": 1, "background_enhance": false, "face_upsample": true, "width": 640, "height": 480, "key": "k", "tags": {"a": "1", "b": "2"}}
{"image": "http://x.test/c.png", "fidelity": null, "tags": "a=1;b=2", "key": null}
{"image": "http://x.test/d.png", "fidelity": 1e-1}
"#;
        let m = parse("jobs.jsonl", text);
        assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
        assert_eq!(m.errors[0].line, 3);
        assert!(m.errors[0].message.starts_with("not valid JSON: "));
        let b = &m.rows[0];
        assert_eq!(
            (b.line, b.params.fidelity, b.params.upscale),
            (4, dec("1"), 1)
        );
        assert_eq!((b.size, b.key.as_deref()), (Some((640, 480)), Some("k")));
        assert_eq!(b.tags, [("a".into(), "1".into()), ("b".into(), "2".into())]);
        let c = &m.rows[1];
        assert_eq!(c.params.fidelity, dec("0.5"));
        assert_eq!(c.tags, b.tags);
        assert_eq!(c.key, None);
        assert_eq!(m.rows[2].params.fidelity, dec("0.1"));
    }

    #[test]
    fn json_numbers_are_read_exactly() {
        let m = parse(
            "j.jsonl",
            r#"{"image": "http://x.test/a.png", "fidelity": 0.1234567}"#,
        );
        assert_eq!(m.rows[0].params.fidelity, dec("0.1234567"));
        assert_eq!(
            m.rows[0].params.fidelity,
            params::parse_fidelity("0.1234567").unwrap()
        );
    }

    #[test]
    fn json_types_are_strict() {
        let text = r#"{"image": "http://x.test/a.png", "fidelity": "0.7", "upscale": 2.0, "face_upsample": "yes", "width": -3, "height": 1.5, "key": 17, "tags": {"a": 1}, "colour": "red"}
[1, 2]
"just a string"
{"image": 5}
"#;
        let m = parse("t.jsonl", text);
        assert!(m.rows.is_empty());
        assert_eq!(
            messages(&m),
            [
                "t.jsonl:1: colour: unknown field (expected one of: image, fidelity, upscale, \
                 background_enhance, face_upsample, width, height, key, tags, webhook_events_filter)",
                "t.jsonl:1: face_upsample: expected true or false, found the string \"yes\" \
                 (write it without quotes)",
                "t.jsonl:1: fidelity: expected a number, found the string \"0.7\" \
                 (write it without quotes)",
                "t.jsonl:1: height: `1.5` is not a positive whole number of pixels",
                "t.jsonl:1: key: expected a string, found the number 17",
                "t.jsonl:1: tags: `a`: expected a string value, found the number 1",
                "t.jsonl:1: upscale: `2.0` is not a positive whole number",
                "t.jsonl:1: width: `-3` is not a positive whole number of pixels",
                "t.jsonl:2: expected a JSON object, found an array (JSON Lines holds one object \
                 per line)",
                "t.jsonl:3: expected a JSON object, found the string \"just a string\"",
                "t.jsonl:4: image: expected a string, found the number 5",
            ]
        );
    }

    #[test]
    fn a_key_reused_with_other_parameters_is_an_error() {
        let text = "image,key,upscale\n\
                    http://x.test/a.png,k1,2\n\
                    http://x.test/a.png,k1,2\n\
                    http://x.test/b.png,k1,2\n\
                    http://x.test/a.png,,2\n\
                    http://x.test/a.png,,2\n";
        let m = parse("k.csv", text);
        assert_eq!(
            messages(&m),
            ["k.csv:4: key: `k1` is already used on line 2 with different parameters"]
        );
        let lines: Vec<_> = m.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3, 5, 6], "identical rows are kept");

        let text = "{\"image\": \"http://x.test/a.png\", \"key\": \"k\", \"tags\": \"a=1\"}\n\
                    {\"image\": \"http://x.test/a.png\", \"key\": \"k\", \"tags\": \"a=2\"}\n";
        assert_eq!(parse("k.jsonl", text).errors[0].line, 2);
    }

    #[test]
    fn keys_and_tags_are_checked() {
        let long = "k".repeat(MAX_KEY_CHARS + 1);
        let text = format!(
            "{{\"image\": \"http://x.test/a.png\", \"key\": \"{long}\"}}\n\
             {{\"image\": \"http://x.test/a.png\", \"key\": \"a\\u0007b\"}}\n\
             {{\"image\": \"http://x.test/a.png\", \"tags\": \"a=1;a=2\"}}\n"
        );
        assert_eq!(
            messages(&parse("k.jsonl", &text)),
            [
                "k.jsonl:1: key: is longer than 200 characters",
                "k.jsonl:2: key: `a\u{7}b` contains a control character",
                "k.jsonl:3: tags: `a` is given twice",
            ]
        );
    }

    #[test]
    fn formats_by_extension_then_content() {
        let p = |s: &str| Format::from_extension(Path::new(s));
        assert_eq!(p("a.CSV"), Some(Format::Csv));
        assert_eq!(p("a.ndjson"), Some(Format::JsonLines));
        assert_eq!(p("a.jsonl"), Some(Format::JsonLines));
        assert_eq!(p("a.txt"), Some(Format::Text));
        assert_eq!(p("a.json"), None);
        assert_eq!(p("manifest"), None);
        assert_eq!(Format::detect("# c\n\n  {\"image\": 1}"), Format::JsonLines);
        assert_eq!(
            Format::detect("# c\nurl, \"Image\", upscale\n"),
            Format::Csv
        );
        assert_eq!(Format::detect("image\nhttp://x.test/a.png\n"), Format::Csv);
        assert_eq!(Format::detect("http://x.test/image,1.png\n"), Format::Text);
        assert_eq!(Format::detect("http://x.test/a.png\n"), Format::Text);
        assert_eq!(Format::detect(""), Format::Text);
        let m = parse("stdin", "image,upscale\nhttp://x.test/a.png,4\n");
        assert_eq!(m.rows[0].params.upscale, 4);
        assert_eq!("ndjson".parse::<Format>(), Ok(Format::JsonLines));
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn enormous_values_are_clipped_in_messages() {
        let huge = "9".repeat(1_000_000);
        let m = parse(
            "big.csv",
            &format!("image,fidelity\nhttp://x.test/a.png,{huge}\n"),
        );
        let message = &m.errors[0].message;
        assert!(
            message.chars().count() <= MAX_MESSAGE_CHARS + 1,
            "{}",
            message.len()
        );
        assert!(message.ends_with('…'));
    }

    #[test]
    fn read_manifest_reports_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.txt");
        let err = read_manifest(&missing, &defaults()).unwrap_err();
        assert_eq!(err.line, 0);
        assert!(
            err.to_string().contains("none.txt: cannot be read: "),
            "{err}"
        );

        let latin1 = dir.path().join("latin1.csv");
        std::fs::write(&latin1, b"image,key\nhttp://x.test/a.png,caf\xe9\n").unwrap();
        let err = read_manifest(&latin1, &defaults()).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err
            .to_string()
            .ends_with(":2: is not UTF-8 text (an invalid byte at offset 33)"));

        let utf16 = dir.path().join("u16.txt");
        std::fs::write(&utf16, b"\xff\xfeh\0t\0").unwrap();
        let err = read_manifest(&utf16, &defaults()).unwrap_err();
        assert!(err
            .to_string()
            .ends_with("u16.txt: is UTF-16 text; save it as UTF-8"));

        let good = dir.path().join("jobs");
        std::fs::write(&good, "{\"image\": \"http://x.test/a.png\"}\n").unwrap();
        let m = read_manifest(&good, &defaults()).unwrap();
        assert_eq!(m.rows.len(), 1);
    }

    #[test]
    fn example_manifests_are_valid() {
        let examples = [
            (
                "photos.txt",
                include_str!("../examples/manifests/photos.txt"),
                3,
            ),
            (
                "photos.csv",
                include_str!("../examples/manifests/photos.csv"),
                4,
            ),
            (
                "photos.jsonl",
                include_str!("../examples/manifests/photos.jsonl"),
                3,
            ),
        ];
        for (name, text, rows) in examples {
            let m = parse(name, text);
            assert!(m.is_valid(), "{name}: {:?}", messages(&m));
            assert_eq!(m.rows.len(), rows, "{name}");
            // Content detection agrees with the extension.
            assert_eq!(
                Format::detect(text),
                Format::from_extension(Path::new(name)).unwrap()
            );
        }
    }

    proptest! {
        #[test]
        fn parse_manifest_never_panics(text in any::<String>(), which in 0usize..4) {
            let format = [None, Some(Format::Text), Some(Format::Csv), Some(Format::JsonLines)][which];
            let m = parse_manifest("fuzz", &text, format, &defaults());
            for e in &m.errors {
                let _ = e.to_string();
            }
        }

        #[test]
        fn manifest_like_text_never_panics(
            lines in prop::collection::vec(
                "(image|fidelity|upscale|key|tags|width|height|http://x.test/[a-z]{1,3}|[0-9.]{0,4}|\
                 [,;=\"{}:#\\[\\] \r\t]|true|null|\u{feff}|é){0,12}",
                0..8,
            ),
            which in 0usize..4,
        ) {
            let format = [None, Some(Format::Text), Some(Format::Csv), Some(Format::JsonLines)][which];
            let _ = parse_manifest("fuzz", &lines.join("\n"), format, &defaults());
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(text) = decode(&bytes) {
                let _ = parse_manifest("fuzz", text, None, &defaults());
            }
        }
    }
}
