//! Reads SageMaker's service model (the 2017-07-24 JSON shipped beside this crate) and writes the three
//! artefacts that must agree with it field for field:
//!
//! * [`rust_model`]: the API shapes as plain Rust structs (serde, PascalCase on the wire) plus a
//!   `Validate` impl per structure that checks every documented constraint — required members,
//!   lengths, patterns, enums, list and map sizes, numeric ranges;
//! * [`proto`]: the same shapes as protobuf messages (`proto/trainyard/v1/sagemaker.proto`);
//! * [`rust_conversions`]: lossless `From` conversions between the two.
//!
//! Generating all three from one source is what keeps 260 shapes honest: a new member appears in the
//! model, the wire format, the conversions and the validator at once, or the build fails.
//!
//! Conventions that make the round trip lossless:
//! * every member is optional in both the model and the proto (`optional` scalars, message presence),
//!   so "absent" and "empty" stay distinct and the validator, not the decoder, reports what is missing;
//! * every named list or map shape is a message of its own (`items` / `entries`), for the same reason;
//! * enums travel as strings, so an unknown value reaches the validator and is reported with the
//!   allowed set instead of failing to decode;
//! * proto field numbers follow the members' alphabetical order (the order of the service model).
//!   A later service model that adds members must keep existing numbers: see `field_numbers` below.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Deserialize;

/// The service model this crate reads, embedded so that builds need nothing outside the repository.
pub const SERVICE_MODEL_JSON: &str = include_str!("../service-model/sagemaker-2017-07-24.json");

/// Limits from the founding page that are stricter than the service model ("where the founding page
/// states a limit, it holds"). Each names a member of a structure and replaces a constraint of the
/// shape it points at, for that member only.
const FOUNDING_PAGE_OVERRIDES: &[Override] = &[Override {
    structure: "HyperParameterTrainingJobDefinition",
    member: "StaticHyperParameters",
    map_value_max_len: 256,
}];

/// Trainyard's documented extension of the service model: a bucket URI may also be a local
/// `file:///absolute/path`, so one machine needs no object store (DESIGN.md, "Storage").
const PATTERN_EXTENSIONS: &[(&str, &str)] = &[("S3Uri", "file:///.*")];

/// Enums whose allowed values come from the coordinator's configuration instead of the service
/// model: the instance-type catalog decides which `InstanceType` values exist (checked by the
/// model's semantic rules against the catalog in force).
const ENUMS_FROM_CONFIGURATION: &[&str] = &["TrainingInstanceType"];

struct Override {
    structure: &'static str,
    member: &'static str,
    map_value_max_len: u64,
}

#[derive(Debug, Deserialize)]
pub struct ServiceModel {
    pub operations: BTreeMap<String, Operation>,
    pub shapes: BTreeMap<String, Shape>,
}

#[derive(Debug, Deserialize)]
pub struct Operation {
    pub input: Option<ShapeRef>,
    pub output: Option<ShapeRef>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct ShapeRef {
    pub shape: String,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Shape {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub members: BTreeMap<String, ShapeRef>,
    #[serde(default)]
    pub required: Vec<String>,
    pub member: Option<ShapeRef>,
    pub key: Option<ShapeRef>,
    pub value: Option<ShapeRef>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub pattern: Option<String>,
    #[serde(rename = "enum")]
    pub enum_values: Option<Vec<String>>,
    #[serde(default)]
    pub exception: bool,
}

impl ServiceModel {
    /// Parses the embedded service model.
    pub fn load() -> Result<Self, serde_json::Error> {
        serde_json::from_str(SERVICE_MODEL_JSON)
    }

    fn shape(&self, name: &str) -> &Shape {
        // The service model is closed: every reference names a shape in it (checked by a test).
        &self.shapes[name]
    }

    /// Shapes reachable from the operations' inputs and outputs, in name order.
    pub fn reachable(&self) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = self
            .operations
            .values()
            .flat_map(|op| [op.input.clone(), op.output.clone()])
            .flatten()
            .map(|r| r.shape)
            .collect();
        while let Some(name) = stack.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let shape = self.shape(&name);
            stack.extend(shape.members.values().map(|r| r.shape.clone()));
            for r in [&shape.member, &shape.key, &shape.value].into_iter().flatten() {
                stack.push(r.shape.clone());
            }
        }
        seen
    }

    fn structures(&self) -> Vec<(&str, &Shape)> {
        self.reachable_of_kind(&["structure"])
    }

    fn collections(&self) -> Vec<(&str, &Shape)> {
        self.reachable_of_kind(&["list", "map"])
    }

    fn reachable_of_kind(&self, kinds: &[&str]) -> Vec<(&str, &Shape)> {
        let reachable = self.reachable();
        self.shapes
            .iter()
            .filter(|(name, shape)| {
                reachable.contains(name.as_str()) && kinds.contains(&shape.kind.as_str()) && !shape.exception
            })
            .map(|(name, shape)| (name.as_str(), shape))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Names. prost derives Rust names from proto names with heck's word splitting; this is the same
// splitting, so the conversions name exactly what prost generates.
// ---------------------------------------------------------------------------------------------

/// Splits `VolumeSizeInGB` into `Volume Size In GB` and `S3Uri` into `S3 Uri`, as heck does.
pub fn words(name: &str) -> Vec<String> {
    #[derive(PartialEq, Clone, Copy)]
    enum Mode {
        Boundary,
        Lower,
        Upper,
    }
    let mut out = Vec::new();
    for part in name.split(|c: char| !c.is_alphanumeric()).filter(|p| !p.is_empty()) {
        let chars: Vec<(usize, char)> = part.char_indices().collect();
        let mut start = 0;
        let mut mode = Mode::Boundary;
        for (pos, &(i, c)) in chars.iter().enumerate() {
            let Some(&(next_i, next)) = chars.get(pos + 1) else {
                out.push(part[start..].to_string());
                break;
            };
            let next_mode = if c.is_lowercase() {
                Mode::Lower
            } else if c.is_uppercase() {
                Mode::Upper
            } else {
                mode
            };
            if next_mode == Mode::Lower && next.is_uppercase() {
                out.push(part[start..next_i].to_string());
                start = next_i;
                mode = Mode::Boundary;
            } else if mode == Mode::Upper && c.is_uppercase() && next.is_lowercase() {
                out.push(part[start..i].to_string());
                start = i;
                mode = Mode::Boundary;
            } else {
                mode = next_mode;
            }
        }
    }
    out
}

pub fn snake_case(name: &str) -> String {
    words(name).iter().map(|w| w.to_lowercase()).collect::<Vec<_>>().join("_")
}

pub fn upper_camel_case(name: &str) -> String {
    words(name)
        .iter()
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
                None => String::new(),
            }
        })
        .collect()
}

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn",
    "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "static",
    "struct", "trait", "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final",
    "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// The Rust field identifier for a member, as both this generator and prost spell it.
pub fn field_ident(member: &str) -> String {
    let snake = snake_case(member);
    if RUST_KEYWORDS.contains(&snake.as_str()) { format!("r#{snake}") } else { snake }
}

fn checker_name(shape: &str) -> String {
    format!("check_{}", snake_case(shape))
}

// ---------------------------------------------------------------------------------------------
// Rust model
// ---------------------------------------------------------------------------------------------

/// The Rust type of a value of `shape` inside the model (no `Option`).
fn rust_type(model: &ServiceModel, shape: &str) -> String {
    let s = model.shape(shape);
    match s.kind.as_str() {
        "structure" => shape.to_string(),
        "string" => "String".into(),
        "integer" => "i32".into(),
        "long" => "i64".into(),
        "float" | "double" => "f64".into(),
        "boolean" => "bool".into(),
        "timestamp" => "Timestamp".into(),
        "list" => format!("Vec<{}>", rust_type(model, &member_of(s).shape)),
        "map" => format!("BTreeMap<String, {}>", rust_type(model, &value_of(s).shape)),
        other => panic!("shape {shape} has unsupported type {other}"),
    }
}

fn member_of(s: &Shape) -> &ShapeRef {
    s.member.as_ref().expect("a list shape names its member")
}

fn value_of(s: &Shape) -> &ShapeRef {
    s.value.as_ref().expect("a map shape names its value")
}

fn key_of(s: &Shape) -> &ShapeRef {
    s.key.as_ref().expect("a map shape names its key")
}

fn is_trivial_pattern(p: &str) -> bool {
    matches!(p, ".*" | ".+" | "[\\S\\s]*" | "[\\s\\S]*")
}

/// Translates the Java regular expressions of the service model into the `regex` crate's dialect.
/// Returns the pattern and whether the value must also not end with '-' (Java's `(?<!-)` at the end,
/// a look-behind the `regex` crate does not have).
fn rust_pattern(java: &str) -> (String, bool) {
    let mut p = java.replace("\\p{Alnum}", "0-9A-Za-z");
    let mut no_trailing_dash = false;
    if let Some(stripped) = p.strip_suffix("(?<!-)") {
        p = stripped.to_string();
        no_trailing_dash = true;
    }
    (format!("^(?:{p})$"), no_trailing_dash)
}

fn num_literal(kind: &str, v: f64) -> String {
    match kind {
        "float" | "double" => format!("{v:?}"),
        _ => format!("{}", v as i64),
    }
}

/// Does a value of this shape need any check at all?
fn needs_check(model: &ServiceModel, name: &str) -> bool {
    let s = model.shape(name);
    match s.kind.as_str() {
        "structure" => true,
        "list" | "map" => true,
        "string" if ENUMS_FROM_CONFIGURATION.contains(&name) => {
            s.min.is_some() || s.max.is_some() || s.pattern.as_deref().is_some_and(|p| !is_trivial_pattern(p))
        }
        "string" => {
            s.min.is_some()
                || s.max.is_some()
                || s.enum_values.is_some()
                || s.pattern.as_deref().is_some_and(|p| !is_trivial_pattern(p))
        }
        "integer" | "long" | "float" | "double" => s.min.is_some() || s.max.is_some(),
        _ => false,
    }
}

/// Writes the code that checks `value_expr` (a reference to a value of `shape`) at `path_expr`.
fn check_call(model: &ServiceModel, shape: &str, value_expr: &str, path_expr: &str) -> String {
    let s = model.shape(shape);
    match s.kind.as_str() {
        "structure" => format!("{value_expr}.validate({path_expr}, out);"),
        _ => format!("{}(out, {path_expr}, {value_expr});", checker_name(shape)),
    }
}

/// The model's Rust source: one struct per structure shape, its `Validate` impl, and one checker per
/// constrained scalar, list or map shape.
pub fn rust_model(model: &ServiceModel) -> String {
    let mut out = String::new();
    out.push_str(
        "// @generated by trainyard-codegen from SageMaker's service model (2017-07-24). Do not edit.\n\
         use std::collections::BTreeMap;\n\
         use serde::{Deserialize, Serialize};\n\
         use crate::timestamp::Timestamp;\n\
         use crate::validation::{check, Path, Validate, Violations};\n\n",
    );
    let reachable = model.reachable();
    let mut patterns: Vec<String> = Vec::new();
    let mut overridden_checkers = String::new();

    for (name, shape) in model.structures() {
        let required: BTreeSet<&str> = shape.required.iter().map(String::as_str).collect();
        writeln!(out, "#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]").ok();
        writeln!(out, "#[serde(deny_unknown_fields)]").ok();
        writeln!(out, "pub struct {name} {{").ok();
        for (member, r) in &shape.members {
            if required.contains(member.as_str()) {
                writeln!(out, "    /// Required.").ok();
            }
            writeln!(out, "    #[serde(rename = \"{member}\", default, skip_serializing_if = \"Option::is_none\")]")
                .ok();
            writeln!(out, "    pub {}: Option<{}>,", field_ident(member), rust_type(model, &r.shape)).ok();
        }
        writeln!(out, "}}\n").ok();

        writeln!(out, "impl Validate for {name} {{").ok();
        writeln!(out, "    fn validate(&self, path: &Path<'_>, out: &mut Violations) {{").ok();
        for (member, r) in &shape.members {
            let ident = field_ident(member);
            if required.contains(member.as_str()) {
                writeln!(out, "        if self.{ident}.is_none() {{ out.missing(&path.field(\"{member}\")); }}").ok();
            }
            let over = FOUNDING_PAGE_OVERRIDES.iter().find(|o| o.structure == name && o.member == member);
            let call = if let Some(over) = over {
                let fname = format!("check_{}_{}", snake_case(name), snake_case(member));
                let map = model.shape(&r.shape);
                write_map_checker(
                    model,
                    &mut overridden_checkers,
                    &fname,
                    &r.shape,
                    map,
                    Some(over.map_value_max_len),
                    &mut patterns,
                );
                format!("{fname}(out, &path.field(\"{member}\"), value);")
            } else if needs_check(model, &r.shape) {
                check_call(model, &r.shape, "value", &format!("&path.field(\"{member}\")"))
            } else {
                continue;
            };
            writeln!(out, "        if let Some(value) = &self.{ident} {{ {call} }}").ok();
        }
        writeln!(out, "    }}\n}}\n").ok();
    }

    for name in &reachable {
        let shape = model.shape(name);
        if shape.exception || !needs_check(model, name) {
            continue;
        }
        let fname = checker_name(name);
        match shape.kind.as_str() {
            "string" => {
                writeln!(out, "pub(crate) fn {fname}(out: &mut Violations, path: &Path<'_>, value: &str) {{").ok();
                if shape.min.is_some() || shape.max.is_some() {
                    writeln!(
                        out,
                        "    check::length(out, path, value, {}, {});",
                        opt_lit(shape.min.map(|v| v as u64)),
                        opt_lit(shape.max.map(|v| v as u64))
                    )
                    .ok();
                }
                if let Some(values) =
                    shape.enum_values.as_ref().filter(|_| !ENUMS_FROM_CONFIGURATION.contains(&name.as_str()))
                {
                    let list = values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ");
                    writeln!(out, "    check::one_of(out, path, value, &[{list}]);").ok();
                }
                if let Some(p) = shape.pattern.as_deref().filter(|p| !is_trivial_pattern(p)) {
                    let extended;
                    let p = match PATTERN_EXTENSIONS.iter().find(|(shape, _)| shape == name) {
                        Some((_, extra)) => {
                            extended = format!("{p}|{extra}");
                            extended.as_str()
                        }
                        None => p,
                    };
                    let (rust, no_trailing_dash) = rust_pattern(p);
                    let index = intern(&mut patterns, rust);
                    writeln!(out, "    check::pattern(out, path, value, &PATTERNS[{index}], {p:?});").ok();
                    if no_trailing_dash {
                        writeln!(out, "    check::no_trailing_dash(out, path, value);").ok();
                    }
                }
                writeln!(out, "}}\n").ok();
            }
            "integer" | "long" | "float" | "double" => {
                let (ty, check) = match shape.kind.as_str() {
                    "integer" => ("i32", "check::range_int(out, path, i64::from(*value)"),
                    "long" => ("i64", "check::range_int(out, path, *value"),
                    _ => ("f64", "check::range_float(out, path, *value"),
                };
                writeln!(out, "pub(crate) fn {fname}(out: &mut Violations, path: &Path<'_>, value: &{ty}) {{").ok();
                writeln!(
                    out,
                    "    {check}, {}, {});",
                    opt_lit_str(shape.min.map(|v| num_literal(&shape.kind, v))),
                    opt_lit_str(shape.max.map(|v| num_literal(&shape.kind, v)))
                )
                .ok();
                writeln!(out, "}}\n").ok();
            }
            "list" => {
                let item = &member_of(shape).shape;
                writeln!(
                    out,
                    "pub(crate) fn {fname}(out: &mut Violations, path: &Path<'_>, value: &[{}]) {{",
                    rust_type(model, item)
                )
                .ok();
                writeln!(
                    out,
                    "    check::count(out, path, value.len(), {}, {});",
                    opt_lit(shape.min.map(|v| v as u64)),
                    opt_lit(shape.max.map(|v| v as u64))
                )
                .ok();
                if needs_check(model, item) {
                    let call = check_call(model, item, "item", "&path.index(index)");
                    writeln!(out, "    for (index, item) in value.iter().enumerate() {{ {call} }}").ok();
                }
                writeln!(out, "}}\n").ok();
            }
            "map" => write_map_checker(model, &mut out, &fname, name, shape, None, &mut patterns),
            _ => {}
        }
    }
    out.push_str(&overridden_checkers);

    writeln!(out, "static PATTERNS: [std::sync::LazyLock<regex::Regex>; {}] = [", patterns.len()).ok();
    for p in &patterns {
        writeln!(
            out,
            "    std::sync::LazyLock::new(|| regex::Regex::new({p:?}).expect(\"service-model patterns compile (tested)\")),"
        )
        .ok();
    }
    writeln!(out, "];\n").ok();
    writeln!(out, "/// Forces every pattern to compile; called by a test.").ok();
    writeln!(out, "pub fn compile_all_patterns() -> usize {{ PATTERNS.iter().map(|p| p.as_str().len()).count() }}")
        .ok();
    out
}

fn write_map_checker(
    model: &ServiceModel,
    out: &mut String,
    fname: &str,
    name: &str,
    shape: &Shape,
    value_max_len: Option<u64>,
    patterns: &mut Vec<String>,
) {
    let key = &key_of(shape).shape;
    let value = &value_of(shape).shape;
    writeln!(
        out,
        "pub(crate) fn {fname}(out: &mut Violations, path: &Path<'_>, value: &BTreeMap<String, {}>) {{",
        rust_type(model, value)
    )
    .ok();
    writeln!(
        out,
        "    check::count(out, path, value.len(), {}, {});",
        opt_lit(shape.min.map(|v| v as u64)),
        opt_lit(shape.max.map(|v| v as u64))
    )
    .ok();
    writeln!(out, "    for (key, item) in value {{").ok();
    if needs_check(model, key) {
        writeln!(out, "        {}", check_call(model, key, "key", "&path.map_key(key)")).ok();
    }
    match value_max_len {
        Some(max) => {
            // The founding page's limit replaces the service model's maximum; the rest still holds.
            let vs = model.shape(value);
            let min = opt_lit(vs.min.map(|v| v as u64));
            writeln!(out, "        let item_path = path.map_value(key);").ok();
            writeln!(out, "        check::length(out, &item_path, item, {min}, Some({max}));").ok();
            if let Some(p) = vs.pattern.as_deref().filter(|p| !is_trivial_pattern(p)) {
                let index = intern(patterns, rust_pattern(p).0);
                writeln!(out, "        check::pattern(out, &item_path, item, &PATTERNS[{index}], {p:?});").ok();
            }
        }
        None if needs_check(model, value) => {
            writeln!(out, "        {}", check_call(model, value, "item", "&path.map_value(key)")).ok();
        }
        None => {}
    }
    writeln!(out, "    }}\n}}\n").ok();
    let _ = name;
}

fn intern(patterns: &mut Vec<String>, p: String) -> usize {
    match patterns.iter().position(|q| *q == p) {
        Some(i) => i,
        None => {
            patterns.push(p);
            patterns.len() - 1
        }
    }
}

fn opt_lit(v: Option<u64>) -> String {
    v.map_or("None".into(), |v| format!("Some({v})"))
}

fn opt_lit_str(v: Option<String>) -> String {
    v.map_or("None".into(), |v| format!("Some({v})"))
}

// ---------------------------------------------------------------------------------------------
// Protobuf
// ---------------------------------------------------------------------------------------------

fn proto_type(model: &ServiceModel, shape: &str) -> String {
    let s = model.shape(shape);
    match s.kind.as_str() {
        "structure" | "list" | "map" => shape.to_string(),
        "string" => "string".into(),
        "integer" => "int32".into(),
        "long" => "int64".into(),
        "float" | "double" => "double".into(),
        "boolean" => "bool".into(),
        "timestamp" => "google.protobuf.Timestamp".into(),
        other => panic!("shape {shape} has unsupported type {other}"),
    }
}

fn is_scalar(model: &ServiceModel, shape: &str) -> bool {
    matches!(model.shape(shape).kind.as_str(), "string" | "integer" | "long" | "float" | "double" | "boolean")
}

/// The text of `proto/trainyard/v1/sagemaker.proto`.
pub fn proto(model: &ServiceModel) -> String {
    let mut out = String::new();
    out.push_str(
        "// @generated by trainyard-codegen from SageMaker's service model (2017-07-24). Do not edit:\n\
         // run `cargo run -p trainyard-codegen` after changing the generator or the service model.\n\
         //\n\
         // Every SageMaker shape that the tuning and training operations reach, member for member.\n\
         // All members are optional (presence is kept), lists and maps are messages of their own so that\n\
         // an empty one differs from an absent one, and enums are strings checked by the validator.\n\
         syntax = \"proto3\";\n\npackage trainyard.v1;\n\nimport \"google/protobuf/timestamp.proto\";\n\n",
    );
    for (name, shape) in model.structures() {
        writeln!(out, "message {name} {{").ok();
        for (number, (member, r)) in shape.members.iter().enumerate() {
            let ty = proto_type(model, &r.shape);
            let label = if is_scalar(model, &r.shape) { "optional " } else { "" };
            writeln!(out, "  {label}{ty} {} = {};", snake_case(member), number + 1).ok();
        }
        writeln!(out, "}}\n").ok();
    }
    for (name, shape) in model.collections() {
        writeln!(out, "message {name} {{").ok();
        if shape.kind == "list" {
            writeln!(out, "  repeated {} items = 1;", proto_type(model, &member_of(shape).shape)).ok();
        } else {
            writeln!(out, "  map<string, {}> entries = 1;", proto_type(model, &value_of(shape).shape)).ok();
        }
        writeln!(out, "}}\n").ok();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    ToProto,
    FromProto,
}

/// An expression converting `expr` (an owned value of `shape`, no Option) in `dir`.
fn convert_expr(model: &ServiceModel, shape: &str, expr: &str, dir: Direction) -> String {
    let s = model.shape(shape);
    let pb_name = upper_camel_case(shape);
    match s.kind.as_str() {
        "structure" => format!("{expr}.into()"),
        "timestamp" => match dir {
            Direction::ToProto => format!("crate::timestamp_to_proto({expr})"),
            Direction::FromProto => format!("crate::timestamp_from_proto({expr})"),
        },
        "list" => {
            let item = &member_of(s).shape;
            let inner = convert_expr(model, item, "item", dir);
            let items = if inner == "item" {
                match dir {
                    Direction::ToProto => expr.to_string(),
                    Direction::FromProto => format!("{expr}.items"),
                }
            } else {
                let src = if dir == Direction::ToProto { expr.to_string() } else { format!("{expr}.items") };
                format!("{src}.into_iter().map(|item| {inner}).collect()")
            };
            match dir {
                Direction::ToProto => format!("pb::{pb_name} {{ items: {items} }}"),
                Direction::FromProto => items,
            }
        }
        "map" => {
            let value = &value_of(s).shape;
            let inner = convert_expr(model, value, "item", dir);
            let src = if dir == Direction::ToProto { expr.to_string() } else { format!("{expr}.entries") };
            let entries = if inner == "item" {
                src
            } else {
                format!("{src}.into_iter().map(|(key, item)| (key, {inner})).collect()")
            };
            match dir {
                Direction::ToProto => format!("pb::{pb_name} {{ entries: {entries} }}"),
                Direction::FromProto => entries,
            }
        }
        _ => expr.to_string(),
    }
}

/// `From` impls both ways for every structure; `pb` and `model` must be in scope as modules.
pub fn rust_conversions(model: &ServiceModel) -> String {
    let mut out = String::from(
        "// @generated by trainyard-codegen from SageMaker's service model (2017-07-24). Do not edit.\n\
         // Destructuring is exhaustive on both sides, so a member cannot be forgotten.\n\n",
    );
    for (name, shape) in model.structures() {
        let pb_name = upper_camel_case(name);
        let fields: Vec<(String, &str)> =
            shape.members.iter().map(|(m, r)| (field_ident(m), r.shape.as_str())).collect();
        let pattern = fields.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>().join(", ");
        for dir in [Direction::ToProto, Direction::FromProto] {
            let (from, to) = match dir {
                Direction::ToProto => (format!("model::{name}"), format!("pb::{pb_name}")),
                Direction::FromProto => (format!("pb::{pb_name}"), format!("model::{name}")),
            };
            writeln!(out, "impl From<{from}> for {to} {{").ok();
            writeln!(out, "    fn from(value: {from}) -> Self {{").ok();
            if fields.is_empty() {
                writeln!(out, "        let {from} {{}} = value;").ok();
            } else {
                writeln!(out, "        let {from} {{ {pattern} }} = value;").ok();
            }
            writeln!(out, "        Self {{").ok();
            for (field, member_shape) in &fields {
                let inner = convert_expr(model, member_shape, "value", dir);
                if inner == "value" {
                    writeln!(out, "            {field},").ok();
                } else {
                    writeln!(out, "            {field}: {field}.map(|value| {inner}),").ok();
                }
            }
            writeln!(out, "        }}\n    }}\n}}\n").ok();
        }
    }
    out
}

/// Every struct name the model defines, for re-export lists and tests.
pub fn structure_names(model: &ServiceModel) -> Vec<String> {
    model.structures().into_iter().map(|(n, _)| n.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_heck() {
        let cases = [
            ("VolumeSizeInGB", "volume_size_in_gb", "VolumeSizeInGb"),
            ("S3Uri", "s3_uri", "S3Uri"),
            ("AutoMLJobArn", "auto_ml_job_arn", "AutoMlJobArn"),
            ("HyperParameterTuningJobName", "hyper_parameter_tuning_job_name", "HyperParameterTuningJobName"),
            ("Type", "type", "Type"),
        ];
        for (input, snake, camel) in cases {
            assert_eq!(snake_case(input), snake, "{input}");
            assert_eq!(upper_camel_case(input), camel, "{input}");
        }
        assert_eq!(field_ident("Type"), "r#type");
    }

    #[test]
    fn the_service_model_is_closed_and_has_no_cycles_we_cannot_express() {
        let model = ServiceModel::load().expect("service model parses");
        let reachable = model.reachable();
        for name in &reachable {
            assert!(model.shapes.contains_key(name), "{name} is referenced but not defined");
        }
        // Every operation we serve is present.
        for op in [
            "CreateHyperParameterTuningJob",
            "DescribeHyperParameterTuningJob",
            "ListHyperParameterTuningJobs",
            "StopHyperParameterTuningJob",
            "ListTrainingJobsForHyperParameterTuningJob",
            "CreateTrainingJob",
            "DescribeTrainingJob",
            "ListTrainingJobs",
            "StopTrainingJob",
        ] {
            assert!(model.operations.contains_key(op), "{op}");
        }
        // Structures are not recursive (a recursive one would need boxing on both sides).
        fn reaches(model: &ServiceModel, from: &str, target: &str, seen: &mut BTreeSet<String>) -> bool {
            let s = model.shape(from);
            let next: Vec<&str> = s
                .members
                .values()
                .map(|r| r.shape.as_str())
                .chain([&s.member, &s.value].into_iter().flatten().map(|r| r.shape.as_str()))
                .collect();
            next.into_iter().any(|n| n == target || (seen.insert(n.to_string()) && reaches(model, n, target, seen)))
        }
        for (name, _) in model.structures() {
            assert!(!reaches(&model, name, name, &mut BTreeSet::new()), "{name} is recursive");
        }
    }

    #[test]
    fn founding_page_limits_override_the_service_model() {
        let model = ServiceModel::load().expect("service model parses");
        let code = rust_model(&model);
        assert!(code.contains("fn check_hyper_parameter_training_job_definition_static_hyper_parameters"));
        assert!(code.contains("Some(256)"));
    }
}
