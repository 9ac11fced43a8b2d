//! Execution roles: what a job's `RoleArn` means on our hosts. Each role configured on the
//! coordinator names the URI prefixes its jobs may read data from and write outputs to, who may pass
//! it, and optionally a local group its processes get (to read group-readable data on the hosts). A
//! role never decides a uid: every instance runs as a uid of its own on its agent, so two jobs of one
//! role share nothing. A job that names an unknown role, or reaches outside its role, is rejected at
//! submission with the field named.
//!
//! With no role configured the coordinator does not enforce roles (`RoleArn` is checked for its
//! form only): a single-user or development set-up.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::access::{Caller, Scope};
use crate::api;
use crate::error::DomainError;
use crate::uris::{self, Access, UriField};
use crate::validation::Violation;

/// One role, as configured (`[[roles]]` in the coordinator's TOML).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRole {
    /// The RoleArn jobs name, e.g. `arn:aws:iam::000000000000:role/vision-team`.
    pub arn: String,
    /// No longer used (instances run as uids of their own); accepted so that older configurations
    /// still load, and warned about at start.
    pub user: Option<String>,
    /// A local group (resolved on each agent; never root's) added to its instances' own groups.
    pub group: Option<String>,
    /// URI prefixes input channels may read (`s3://bucket/prefix/`, `file:///srv/data/`).
    #[serde(default)]
    pub read: Vec<String>,
    /// URI prefixes outputs, checkpoints and debugger/profiler/TensorBoard data may be written to.
    #[serde(default)]
    pub write: Vec<String>,
    /// The users (of API tokens and access keys) who may submit jobs with this role: AWS's
    /// iam:PassRole. Admins may pass every role; with no users listed, only admins may.
    #[serde(default)]
    pub users: Vec<String>,
}

/// What a role adds to the identity of its instances' processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub group: Option<String>,
}

/// Every configured role, by ARN.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionRoles {
    roles: BTreeMap<String, ExecutionRole>,
}

impl ExecutionRoles {
    /// Checks the configuration: unique ARNs, no root group, prefixes with a scheme and no `..`.
    pub fn new(roles: Vec<ExecutionRole>) -> Result<Self, String> {
        let mut by_arn = BTreeMap::new();
        for role in roles {
            if role.group.as_deref().is_some_and(|g| g == "root" || g == "0") {
                return Err(format!("role {}: group 'root' is not allowed", role.arn));
            }
            for prefix in role.read.iter().chain(&role.write) {
                if !prefix.contains("://") || has_parent_segment(prefix) {
                    return Err(format!("role {}: '{prefix}' is not a URI prefix like s3://bucket/path/", role.arn));
                }
            }
            let arn = role.arn.clone();
            if by_arn.insert(arn.clone(), role).is_some() {
                return Err(format!("role {arn} is configured twice"));
            }
        }
        Ok(Self { roles: by_arn })
    }

    /// The roles whose configuration still names a `user`, which nothing uses any more.
    pub fn with_ignored_user(&self) -> Vec<&str> {
        self.roles.values().filter(|r| r.user.is_some()).map(|r| r.arn.as_str()).collect()
    }

    /// Whether roles are enforced (at least one is configured).
    pub fn enforced(&self) -> bool {
        !self.roles.is_empty()
    }

    /// Whether `caller` may submit a job that names `role_arn` (iam:PassRole): admins may pass every
    /// role, others the roles that list them. A role that is not configured passes here: the
    /// request's validation says so, with the field named.
    pub fn may_pass(&self, role_arn: Option<&str>, caller: &Caller) -> Result<(), DomainError> {
        let Some(role) = role_arn.and_then(|arn| self.roles.get(arn)) else { return Ok(()) };
        if caller.scope == Scope::Admin || role.users.contains(&caller.user) {
            return Ok(());
        }
        Err(DomainError::PermissionDenied(format!(
            "user '{}' may not pass role '{}' (iam:PassRole): it may be used by {}",
            caller.user,
            role.arn,
            if role.users.is_empty() {
                "admins only".to_string()
            } else {
                format!("admins and {}", role.users.join(", "))
            }
        )))
    }

    /// What a job with this RoleArn adds to its processes' identity: None when roles are not
    /// enforced; an error when the role is not (or no longer) configured.
    pub fn run_as(&self, role_arn: Option<&str>) -> Result<Option<RunAs>, String> {
        if !self.enforced() {
            return Ok(None);
        }
        let arn = role_arn.unwrap_or_default();
        let role = self.roles.get(arn).ok_or_else(|| format!("role '{arn}' is not configured on this coordinator"))?;
        Ok(Some(RunAs { group: role.group.clone() }))
    }

    pub fn check_training_job(&self, r: &api::CreateTrainingJobRequest) -> Vec<Violation> {
        self.check("", r.role_arn.as_deref(), &uris::of_training_job(r))
    }

    pub fn check_tuning_job(&self, r: &api::CreateHyperParameterTuningJobRequest) -> Vec<Violation> {
        let mut v = Vec::new();
        for definition in uris::of_tuning_job(r) {
            v.extend(self.check(&definition.field, definition.role_arn, &definition.uris));
        }
        v
    }

    /// `field`: where the RoleArn is reported (`""` or a definition's `TrainingJobDefinition.`).
    fn check(&self, field: &str, role_arn: Option<&str>, uris: &[UriField<'_>]) -> Vec<Violation> {
        if !self.enforced() {
            return Vec::new();
        }
        let Some(arn) = role_arn else {
            return Vec::new(); // "is required" is the structural validator's to say
        };
        let Some(role) = self.roles.get(arn) else {
            let known: Vec<&str> = self.roles.keys().map(String::as_str).collect();
            return vec![Violation {
                field: format!("{field}RoleArn"),
                description: format!(
                    "role '{arn}' is not configured on this coordinator (configured: {})",
                    known.join(", ")
                ),
            }];
        };
        uris.iter()
            .filter_map(|f| match f.access {
                Access::Read => outside(&f.field, f.uri, &role.read, "read", arn),
                Access::Write => outside(&f.field, f.uri, &role.write, "write", arn),
            })
            .collect()
    }
}

/// A violation when `uri` is not under one of `prefixes`.
fn outside(field: &str, uri: &str, prefixes: &[String], access: &str, arn: &str) -> Option<Violation> {
    if has_parent_segment(uri) {
        return Some(Violation { field: field.into(), description: format!("'{uri}' must not contain '..'") });
    }
    if prefixes.iter().any(|p| under(uri, p)) {
        return None;
    }
    let allowed = if prefixes.is_empty() { "nothing".to_string() } else { prefixes.join(", ") };
    Some(Violation {
        field: field.into(),
        description: format!("'{uri}' is outside what role '{arn}' may {access} ({allowed})"),
    })
}

/// Whole path segments: `s3://b/data` and `s3://b/data/` both cover `s3://b/data`, `s3://b/data/`
/// and `s3://b/data/x`, never `s3://b/database`.
fn under(uri: &str, prefix: &str) -> bool {
    let directory = |s: &str| if s.ends_with('/') { s.to_string() } else { format!("{s}/") };
    directory(uri).starts_with(&directory(prefix))
}

fn has_parent_segment(uri: &str) -> bool {
    uri.split('/').any(|segment| segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> ExecutionRoles {
        ExecutionRoles::new(vec![ExecutionRole {
            arn: "arn:aws:iam::000000000000:role/vision".into(),
            user: None,
            group: Some("ml".into()),
            read: vec!["s3://datasets/vision/".into(), "file:///srv/shared".into()],
            write: vec!["s3://models/vision/".into()],
            users: vec!["ana".into()],
        }])
        .expect("valid")
    }

    fn training(role: &str, input: &str, output: &str) -> api::CreateTrainingJobRequest {
        api::CreateTrainingJobRequest {
            role_arn: Some(role.into()),
            input_data_config: Some(vec![api::Channel {
                data_source: Some(api::DataSource {
                    s3_data_source: Some(api::S3DataSource { s3_uri: Some(input.into()), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            output_data_config: Some(api::OutputDataConfig {
                s3_output_path: Some(output.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const VISION: &str = "arn:aws:iam::000000000000:role/vision";

    #[test]
    fn only_the_roles_users_and_admins_may_pass_it() {
        let r = roles();
        let caller = |user: &str, scope| Caller { user: user.into(), scope };
        assert!(r.may_pass(Some(VISION), &caller("ana", Scope::Submit)).is_ok());
        assert!(r.may_pass(Some(VISION), &caller("root-of-all", Scope::Admin)).is_ok());
        let refused = r.may_pass(Some(VISION), &caller("eve", Scope::Submit)).expect_err("eve is not listed");
        assert!(
            matches!(&refused, DomainError::PermissionDenied(m) if m.contains("user 'eve' may not pass role") && m.contains("admins and ana")),
            "{refused:?}"
        );
        // Unknown roles are the validator's to report; without roles nothing is enforced.
        assert!(r.may_pass(Some("arn:aws:iam::1:role/Unknown"), &caller("eve", Scope::Submit)).is_ok());
        assert!(ExecutionRoles::default().may_pass(Some(VISION), &caller("eve", Scope::Read)).is_ok());
    }

    #[test]
    fn a_job_inside_its_role_passes_and_gets_its_group() {
        let r = roles();
        assert_eq!(
            r.check_training_job(&training(VISION, "s3://datasets/vision/train/", "s3://models/vision")),
            vec![]
        );
        assert_eq!(r.check_training_job(&training(VISION, "file:///srv/shared/x", "s3://models/vision/a")), vec![]);
        assert_eq!(r.run_as(Some(VISION)), Ok(Some(RunAs { group: Some("ml".into()) })));
    }

    #[test]
    fn reaching_outside_the_role_names_the_field_and_the_allowed_prefixes() {
        let v = roles().check_training_job(&training(VISION, "s3://datasets/audio/", "s3://models/visionary/"));
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].field, "InputDataConfig[0].DataSource.S3DataSource.S3Uri");
        assert_eq!(
            v[0].description,
            "'s3://datasets/audio/' is outside what role 'arn:aws:iam::000000000000:role/vision' may read \
             (s3://datasets/vision/, file:///srv/shared)"
        );
        assert_eq!(v[1].field, "OutputDataConfig.S3OutputPath");
        let sneaky =
            roles().check_training_job(&training(VISION, "s3://datasets/vision/../audio/", "s3://models/vision/"));
        assert_eq!(sneaky[0].description, "'s3://datasets/vision/../audio/' must not contain '..'");
        assert!(!under("file:///srv/sharedsecrets", "file:///srv/shared"));
    }

    #[test]
    fn an_unknown_role_is_refused_and_unenforced_roles_allow_anything() {
        let v = roles().check_training_job(&training("arn:aws:iam::000000000000:role/other", "s3://x/", "s3://y/"));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "RoleArn");
        assert!(
            v[0].description
                .contains("is not configured on this coordinator (configured: arn:aws:iam::000000000000:role/vision)")
        );
        assert!(roles().run_as(Some("arn:other")).is_err());
        let open = ExecutionRoles::default();
        assert!(open.check_training_job(&training("arn:any", "s3://x/", "s3://y/")).is_empty());
        assert_eq!(open.run_as(Some("arn:any")), Ok(None));
    }

    #[test]
    fn tuning_definitions_are_checked_each_with_its_path() {
        let definition = |role: &str, output: &str| api::HyperParameterTrainingJobDefinition {
            role_arn: Some(role.into()),
            output_data_config: Some(api::OutputDataConfig {
                s3_output_path: Some(output.into()),
                ..Default::default()
            }),
            checkpoint_config: Some(api::CheckpointConfig {
                s3_uri: Some("s3://scratch/".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = api::CreateHyperParameterTuningJobRequest {
            training_job_definitions: Some(vec![
                definition(VISION, "s3://models/vision/"),
                definition("arn:nope", "s3://m/"),
            ]),
            ..Default::default()
        };
        let fields: Vec<String> = roles().check_tuning_job(&request).into_iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            vec!["TrainingJobDefinitions[0].CheckpointConfig.S3Uri", "TrainingJobDefinitions[1].RoleArn"]
        );
    }

    #[test]
    fn configurations_that_would_run_as_root_or_escape_are_refused() {
        let role = |group: &str, read: &str| ExecutionRole {
            arn: "arn:r".into(),
            user: None,
            group: Some(group.into()),
            read: vec![read.into()],
            write: vec![],
            users: vec![],
        };
        assert!(
            ExecutionRoles::new(vec![role("root", "s3://a/")]).unwrap_err().contains("group 'root' is not allowed")
        );
        assert!(ExecutionRoles::new(vec![role("ml", "bucket/path")]).unwrap_err().contains("not a URI prefix"));
        assert!(ExecutionRoles::new(vec![role("ml", "s3://a/../b")]).is_err());
        assert!(
            ExecutionRoles::new(vec![role("ml", "s3://a/"), role("ml2", "s3://b/")]).unwrap_err().contains("twice")
        );
    }
}
