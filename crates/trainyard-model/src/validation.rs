//! The machinery of validation: field paths, violations, and the checks the generated code calls.
//!
//! Validation never stops at the first problem: every check appends to [`Violations`], so a rejected
//! request lists everything wrong with it, each with the field path
//! (`TrainingJobDefinition.InputDataConfig[3].ChannelName`) and the limit it broke.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Implemented by every API structure (generated) to check its members against the service model.
pub trait Validate {
    fn validate(&self, path: &Path<'_>, out: &mut Violations);

    /// Validates a whole request, rooted at the empty path.
    fn violations(&self) -> Violations {
        let mut out = Violations::default();
        self.validate(&Path::root(), &mut out);
        out
    }
}

/// A field path built on the stack as validation descends; rendered only when a check fails.
#[derive(Debug, Clone, Copy)]
pub struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    segment: Segment<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Segment<'a> {
    Root,
    Field(&'a str),
    Index(usize),
    MapValue(&'a str),
    MapKey(&'a str),
}

impl<'a> Path<'a> {
    pub const fn root() -> Path<'static> {
        Path { parent: None, segment: Segment::Root }
    }

    pub fn field(&'a self, name: &'a str) -> Path<'a> {
        Path { parent: Some(self), segment: Segment::Field(name) }
    }

    pub fn index(&'a self, index: usize) -> Path<'a> {
        Path { parent: Some(self), segment: Segment::Index(index) }
    }

    /// The value stored under `key` in a map.
    pub fn map_value(&'a self, key: &'a str) -> Path<'a> {
        Path { parent: Some(self), segment: Segment::MapValue(key) }
    }

    /// The key itself of a map entry (a key that breaks a limit).
    pub fn map_key(&'a self, key: &'a str) -> Path<'a> {
        Path { parent: Some(self), segment: Segment::MapKey(key) }
    }

    fn is_map_key(&self) -> bool {
        matches!(self.segment, Segment::MapKey(_))
    }

    fn render_into(&self, out: &mut String) {
        if let Some(parent) = self.parent {
            parent.render_into(out);
        }
        match self.segment {
            Segment::Root => {}
            Segment::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Segment::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
            Segment::MapValue(key) | Segment::MapKey(key) => {
                out.push_str("['");
                out.push_str(key);
                out.push_str("']");
            }
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.render_into(&mut s);
        f.write_str(&s)
    }
}

/// One broken rule: where, and what the rule is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The field path, e.g. `TrainingJobDefinition.InputDataConfig[3].ChannelName`.
    pub field: String,
    /// The rule, phrased as a limit: "must have length less than or equal to 63 (got 70)".
    pub description: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Everything wrong with one request, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(Vec<Violation>);

impl Violations {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.0.iter()
    }

    pub fn into_vec(self) -> Vec<Violation> {
        self.0
    }

    pub fn push(&mut self, path: &Path<'_>, description: impl Into<String>) {
        let mut description = description.into();
        if path.is_map_key() {
            description = format!("map key {description}");
        }
        self.0.push(Violation { field: path.to_string(), description });
    }

    /// A violation at a path given as text (for rules that span several fields).
    pub fn push_at(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(Violation { field: field.into(), description: description.into() });
    }

    pub fn missing(&mut self, path: &Path<'_>) {
        self.push(path, "is required");
    }

    /// `Ok(())` when nothing was found, else the violations as an error.
    pub fn into_result(self) -> Result<(), Vec<Violation>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}

/// Short, safe rendering of an offending value for messages.
pub(crate) fn quote(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        format!("'{value}'")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("'{head}…'")
    }
}

/// The checks that the generated `Validate` impls call. Wording follows SageMaker's
/// ("Member must have length less than or equal to 63"), with the value that broke the rule.
pub mod check {
    use super::*;

    pub fn length(out: &mut Violations, path: &Path<'_>, value: &str, min: Option<u64>, max: Option<u64>) {
        let len = value.chars().count() as u64;
        if let Some(min) = min.filter(|&min| len < min) {
            out.push(path, format!("must have length greater than or equal to {min} (got {len})"));
        }
        if let Some(max) = max.filter(|&max| len > max) {
            out.push(path, format!("must have length less than or equal to {max} (got {len})"));
        }
    }

    pub fn count(out: &mut Violations, path: &Path<'_>, len: usize, min: Option<u64>, max: Option<u64>) {
        let len = len as u64;
        if let Some(min) = min.filter(|&min| len < min) {
            out.push(path, format!("must have at least {min} item(s) (got {len})"));
        }
        if let Some(max) = max.filter(|&max| len > max) {
            out.push(path, format!("must have at most {max} item(s) (got {len})"));
        }
    }

    pub fn one_of(out: &mut Violations, path: &Path<'_>, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            let shown = if allowed.len() > 12 {
                format!("{} … ({} values)", allowed[..12].join(", "), allowed.len())
            } else {
                allowed.join(", ")
            };
            out.push(path, format!("value {} must satisfy enum value set: [{shown}]", quote(value)));
        }
    }

    pub fn pattern(out: &mut Violations, path: &Path<'_>, value: &str, regex: &Regex, shown: &str) {
        if !regex.is_match(value) {
            out.push(path, format!("value {} must satisfy regular expression pattern: {shown}", quote(value)));
        }
    }

    pub fn no_trailing_dash(out: &mut Violations, path: &Path<'_>, value: &str) {
        if value.ends_with('-') {
            out.push(path, format!("value {} must not end with '-'", quote(value)));
        }
    }

    pub fn range_int(out: &mut Violations, path: &Path<'_>, value: i64, min: Option<i64>, max: Option<i64>) {
        if let Some(min) = min.filter(|&min| value < min) {
            out.push(path, format!("must be greater than or equal to {min} (got {value})"));
        }
        if let Some(max) = max.filter(|&max| value > max) {
            out.push(path, format!("must be less than or equal to {max} (got {value})"));
        }
    }

    pub fn range_float(out: &mut Violations, path: &Path<'_>, value: f64, min: Option<f64>, max: Option<f64>) {
        if !value.is_finite() {
            out.push(path, format!("must be a finite number (got {value})"));
            return;
        }
        if let Some(min) = min.filter(|&min| value < min) {
            out.push(path, format!("must be greater than or equal to {min} (got {value})"));
        }
        if let Some(max) = max.filter(|&max| value > max) {
            out.push(path, format!("must be less than or equal to {max} (got {value})"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_the_api_documents_them() {
        let root = Path::root();
        let def = root.field("TrainingJobDefinition");
        let input = def.field("InputDataConfig");
        let third = input.index(3);
        let name = third.field("ChannelName");
        assert_eq!(name.to_string(), "TrainingJobDefinition.InputDataConfig[3].ChannelName");
        let hp = def.field("StaticHyperParameters");
        assert_eq!(hp.map_value("lr").to_string(), "TrainingJobDefinition.StaticHyperParameters['lr']");
        let mut v = Violations::default();
        v.push(&hp.map_key("k"), "must have length less than or equal to 256 (got 300)");
        assert_eq!(
            v.iter().next().map(|v| v.description.as_str()),
            Some("map key must have length less than or equal to 256 (got 300)")
        );
    }

    #[test]
    fn checks_report_the_limit_and_the_value() {
        let root = Path::root();
        let p = root.field("X");
        let mut v = Violations::default();
        check::length(&mut v, &p, "abcd", Some(1), Some(3));
        check::range_int(&mut v, &p, 0, Some(1), None);
        check::one_of(&mut v, &p, "Maybe", &["File", "Pipe"]);
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "X: must have length less than or equal to 3 (got 4)",
                "X: must be greater than or equal to 1 (got 0)",
                "X: value 'Maybe' must satisfy enum value set: [File, Pipe]",
            ]
        );
    }
}
