//! A configuration reference kept true: the example file of a daemon must name every key its
//! configuration file may hold. The keys come from serde itself: a struct that denies unknown keys
//! lists the ones it knows in its error for one it does not.

use serde::de::DeserializeOwned;

/// The keys of `T`'s file at `table` (a header such as `[arn]` or `[[roles]]`; "" for the top
/// level) that `example` names neither set nor commented out: empty when the reference is complete.
pub fn keys_not_named<T: DeserializeOwned>(example: &str, tables: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    for table in tables {
        let keys = keys_at::<T>(table);
        assert!(!keys.is_empty(), "no keys found at '{table}'");
        missing.extend(keys.into_iter().filter(|key| !names(example, table, key)).map(|key| format!("{table} {key}")));
    }
    missing
}

fn keys_at<T: DeserializeOwned>(table: &str) -> Vec<String> {
    let text = format!("{table}\nnot_a_trainyard_key = 1\n");
    let error = toml::from_str::<T>(&text).map(|_| ()).err().map(|e| e.to_string()).unwrap_or_default();
    let listed = error.split("expected").nth(1).unwrap_or_default();
    listed.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// Whether `example` names `key` (`key = ...`, or `# key = ...`) in `table`; a table of the top
/// level may be named by its header.
fn names(example: &str, table: &str, key: &str) -> bool {
    let section = match table {
        "" => example.split("\n[").next().unwrap_or_default(),
        // The table's header at the start of a line, set or commented out.
        header => [format!("\n{header}\n"), format!("\n# {header}\n")]
            .iter()
            .find_map(|at_line_start| example.split(at_line_start.as_str()).nth(1))
            .map_or("", |rest| rest.split("\n[").next().unwrap_or(rest)),
    };
    let uncommented = |line: &str| line.trim_start_matches('#').trim_start().to_string();
    let set = |line: &str| {
        let line = uncommented(line);
        line.starts_with(&format!("{key} =")) || line.starts_with(&format!("{key}="))
    };
    let header = |line: &str| {
        let line = uncommented(line);
        line == format!("[{key}]") || line == format!("[[{key}]]")
    };
    section.lines().any(set) || (table.is_empty() && example.lines().any(header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read by serde only
    struct File {
        name: Option<String>,
        size: Option<u32>,
        limits: Option<Limits>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limits {
        most: Option<u32>,
    }

    #[test]
    fn keys_set_or_commented_out_count_and_missing_ones_are_named() {
        let complete = "name = \"x\"\n# size = 3\n\n# [limits]\n# most = 1\n";
        assert!(keys_not_named::<File>(complete, &["", "[limits]"]).is_empty());
        let partial = "name = \"x\"\n[limits]\nleast = 1\n";
        assert_eq!(keys_not_named::<File>(partial, &["", "[limits]"]), [" size", "[limits] most"]);
    }
}
