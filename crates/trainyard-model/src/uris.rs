//! Storage URIs in one normal form, checked once at submission before anything else reads them.
//!
//! An agent maps `s3://bucket/key` onto a directory (`--bucket bucket=DIR`) or an object store,
//! and `file:///path` onto its own file system, as root. A key that is not in normal form could
//! name something else than it seems to: `s3://data//etc/` passes a role's `s3://data/` prefix
//! and, joined onto the bucket's directory, is the absolute path `/etc/`. So a URI is accepted only
//! when every segment of its key is a plain name: no empty segment (`//`), no `.` or `..`, no
//! percent-encoding (which could spell either), no backslash and no control character. A prefix may
//! end in `/` (S3 prefix semantics). What passes here can be joined onto a directory and stays
//! beneath it.

use crate::api;
use crate::validation::Violation;

/// Whether a job reads from a URI or writes to it (execution roles allow each separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A URI of a request, with the field it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriField<'a> {
    pub field: String,
    pub uri: &'a str,
    pub access: Access,
}

/// The schemes the agents serve.
const SCHEMES: &[&str] = &["s3://", "https://", "file://"];

/// Checks that `uri` is in normal form (see the module's documentation); the error says what is
/// wrong with it.
pub fn check(uri: &str) -> Result<(), String> {
    let Some(scheme) = SCHEMES.iter().find(|s| uri.starts_with(**s)) else {
        return Err(format!("'{uri}' must start with s3://, https:// or file://"));
    };
    let rest = &uri[scheme.len()..];
    // file:///a/b has an empty authority; s3://bucket/key and https://host/key name one.
    let path = if *scheme == "file://" {
        rest.strip_prefix('/').ok_or_else(|| format!("'{uri}' must be an absolute file:///path"))?
    } else {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("'{uri}' names no bucket"));
        }
        check_segment(uri, bucket)?;
        key
    };
    if path.is_empty() {
        return Ok(());
    }
    // A trailing '/' is a prefix's, not an empty segment (but `//` is: `s3://b//` is the key `/`).
    let path = path.strip_suffix('/').unwrap_or(path);
    path.split('/').try_for_each(|segment| check_segment(uri, segment))
}

fn check_segment(uri: &str, segment: &str) -> Result<(), String> {
    let problem = match segment {
        "" => Some("an empty path segment ('//')"),
        "." | ".." => Some("a '.' or '..' path segment"),
        s if s.contains('%') => Some("percent-encoding ('%')"),
        s if s.contains('\\') => Some("a backslash"),
        s if s.chars().any(char::is_control) => Some("a control character"),
        _ => None,
    };
    match problem {
        Some(problem) => Err(format!("'{uri}' must not contain {problem}: give the path in plain, normal form")),
        None => Ok(()),
    }
}

/// A violation for each URI of `fields` that is not in normal form. (A scheme we do not serve is
/// the structural validator's to report: its pattern names the schemes.)
pub fn violations(fields: &[UriField<'_>]) -> Vec<Violation> {
    fields
        .iter()
        .filter(|f| SCHEMES.iter().any(|s| f.uri.starts_with(s)))
        .filter_map(|f| check(f.uri).err().map(|description| Violation { field: f.field.clone(), description }))
        .collect()
}

/// The hyperparameter where script mode names the code to run: the SageMaker SDK uploads an
/// estimator's `source_dir` as a tar.gz and passes its URI here (JSON-encoded, as every value the
/// SDK passes).
pub const SUBMIT_DIRECTORY: &str = "sagemaker_submit_directory";

/// The storage URI `sagemaker_submit_directory` names, if it names one (not a path on the host or
/// in the image): a job reads it, so it is checked as its other inputs are.
pub fn submit_directory(hyperparameters: Option<&std::collections::BTreeMap<String, String>>) -> Option<&str> {
    let value = hyperparameters?.get(SUBMIT_DIRECTORY)?;
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    SCHEMES.iter().any(|s| value.starts_with(s)).then_some(value)
}

/// Every URI a training job reads or writes, with its field.
pub fn of_training_job(r: &api::CreateTrainingJobRequest) -> Vec<UriField<'_>> {
    let mut writes: Vec<(String, Option<&String>)> = vec![
        ("DebugHookConfig.S3OutputPath".into(), r.debug_hook_config.as_ref().and_then(|d| d.s3_output_path.as_ref())),
        (
            "TensorBoardOutputConfig.S3OutputPath".into(),
            r.tensor_board_output_config.as_ref().and_then(|t| t.s3_output_path.as_ref()),
        ),
        ("ProfilerConfig.S3OutputPath".into(), r.profiler_config.as_ref().and_then(|p| p.s3_output_path.as_ref())),
    ];
    for (i, rule) in r.debug_rule_configurations.iter().flatten().enumerate() {
        writes.push((format!("DebugRuleConfigurations[{i}].S3OutputPath"), rule.s3_output_path.as_ref()));
    }
    for (i, rule) in r.profiler_rule_configurations.iter().flatten().enumerate() {
        writes.push((format!("ProfilerRuleConfigurations[{i}].S3OutputPath"), rule.s3_output_path.as_ref()));
    }
    let mut fields = job_uris(
        "",
        r.input_data_config.as_deref(),
        r.output_data_config.as_ref(),
        r.checkpoint_config.as_ref(),
        ("HyperParameters", r.hyper_parameters.as_ref()),
    );
    fields.extend(
        writes
            .into_iter()
            .filter_map(|(field, uri)| uri.map(|uri| UriField { field, uri: uri.as_str(), access: Access::Write })),
    );
    fields
}

/// A tuning job's definition: where its fields are reported (`TrainingJobDefinition.` or
/// `TrainingJobDefinitions[i].`), its RoleArn, and the URIs its trials read or write.
pub struct DefinitionUris<'a> {
    pub field: String,
    pub role_arn: Option<&'a str>,
    pub uris: Vec<UriField<'a>>,
}

/// Every URI the trials of a tuning job read or write, by definition.
pub fn of_tuning_job(r: &api::CreateHyperParameterTuningJobRequest) -> Vec<DefinitionUris<'_>> {
    let single = r.training_job_definition.iter().map(|d| ("TrainingJobDefinition.".to_string(), d));
    let many = r
        .training_job_definitions
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, d)| (format!("TrainingJobDefinitions[{i}]."), d));
    single
        .chain(many)
        .map(|(field, d)| {
            let uris = job_uris(
                &field,
                d.input_data_config.as_deref(),
                d.output_data_config.as_ref(),
                d.checkpoint_config.as_ref(),
                ("StaticHyperParameters", d.static_hyper_parameters.as_ref()),
            );
            DefinitionUris { field, role_arn: d.role_arn.as_deref(), uris }
        })
        .collect()
}

/// The URIs training jobs and tuning definitions share: channels and script mode's code (read), the
/// output path and the checkpoint location (written, and a checkpoint read back when the job
/// restarts: writing covers both).
fn job_uris<'a>(
    field: &str,
    inputs: Option<&'a [api::Channel]>,
    output: Option<&'a api::OutputDataConfig>,
    checkpoint: Option<&'a api::CheckpointConfig>,
    (hyperparameters_field, hyperparameters): (&str, Option<&'a std::collections::BTreeMap<String, String>>),
) -> Vec<UriField<'a>> {
    let mut fields = Vec::new();
    if let Some(uri) = submit_directory(hyperparameters) {
        let field = format!("{field}{hyperparameters_field}['{SUBMIT_DIRECTORY}']");
        fields.push(UriField { field, uri, access: Access::Read });
    }
    for (i, channel) in inputs.unwrap_or_default().iter().enumerate() {
        let uri = channel.data_source.as_ref().and_then(|d| d.s3_data_source.as_ref()).and_then(|s| s.s3_uri.as_ref());
        if let Some(uri) = uri {
            let field = format!("{field}InputDataConfig[{i}].DataSource.S3DataSource.S3Uri");
            fields.push(UriField { field, uri, access: Access::Read });
        }
    }
    if let Some(uri) = output.and_then(|o| o.s3_output_path.as_ref()) {
        fields.push(UriField { field: format!("{field}OutputDataConfig.S3OutputPath"), uri, access: Access::Write });
    }
    if let Some(uri) = checkpoint.and_then(|c| c.s3_uri.as_ref()) {
        fields.push(UriField { field: format!("{field}CheckpointConfig.S3Uri"), uri, access: Access::Write });
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn script_modes_code_uri_is_one_of_the_jobs_inputs() {
        use super::{Access, of_training_job, submit_directory};
        let hps =
            |v: &str| std::collections::BTreeMap::from([("sagemaker_submit_directory".to_string(), v.to_string())]);
        // As the SDK passes it (JSON-encoded), or plain; a path is not a URI.
        assert_eq!(
            submit_directory(Some(&hps("\"s3://code/a/sourcedir.tar.gz\""))),
            Some("s3://code/a/sourcedir.tar.gz")
        );
        assert_eq!(submit_directory(Some(&hps("s3://code/b.tar.gz"))), Some("s3://code/b.tar.gz"));
        assert_eq!(submit_directory(Some(&hps("\"/opt/ml/code\""))), None);
        assert_eq!(submit_directory(None), None);
        let request = crate::api::CreateTrainingJobRequest {
            hyper_parameters: Some(hps("\"s3://code//etc/x.tar.gz\"")),
            ..Default::default()
        };
        let fields = of_training_job(&request);
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].field, "HyperParameters['sagemaker_submit_directory']");
        assert_eq!(fields[0].access, Access::Read);
        assert!(check(fields[0].uri).is_err(), "and checked in normal form like the others");
    }

    #[test]
    fn uris_in_normal_form_pass() {
        for uri in [
            "s3://data",
            "s3://data/",
            "s3://data/train/",
            "s3://data/train/part-",
            "s3://data/a b/ü.csv",
            "https://bucket/key/x",
            "file:///srv/data",
            "file:///srv/data/",
            "file:///",
        ] {
            assert_eq!(check(uri), Ok(()), "{uri}");
        }
    }

    #[test]
    fn every_way_out_of_a_bucket_is_refused_with_the_reason() {
        let cases = [
            ("s3://data//etc/", "empty path segment"),
            ("s3://data//", "empty path segment"),
            ("s3://data/a//b", "empty path segment"),
            ("s3:///etc/passwd", "names no bucket"),
            ("s3://data/../other/", "'.' or '..'"),
            ("s3://data/a/./b", "'.' or '..'"),
            ("s3://data/..", "'.' or '..'"),
            ("s3://../x", "'.' or '..'"),
            ("s3://data/%2e%2e/x", "percent-encoding"),
            ("s3://data/a%2Fb", "percent-encoding"),
            ("s3://data/a\\..\\b", "backslash"),
            ("s3://data/a\nb", "control character"),
            ("file://relative/path", "absolute file:///path"),
            ("file:////etc", "empty path segment"),
            ("file:///srv/../etc", "'.' or '..'"),
            ("ftp://data/x", "must start with"),
        ];
        for (uri, reason) in cases {
            let error = check(uri).expect_err(uri);
            assert!(error.contains(reason), "{uri}: {error}");
            assert!(error.contains(uri), "the error names the URI: {error}");
        }
    }
}
