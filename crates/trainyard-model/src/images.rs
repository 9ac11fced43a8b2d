//! What a `TrainingImage` names: a container image (`<registry>/<repository>:<tag>`, `...@sha256:`)
//! that agents with a container runtime run as SageMaker runs it, or a program on the agent's host
//! (a path, or a command line). SageMaker's images always carry a registry host or a tag (ECR:
//! `<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>`), which is what tells them apart here:
//! `deploy/examples/trainer/train.py` and `python3 train.py` are programs, `busybox:1.36` and
//! `localhost:5000/trainer` are images.

/// The two kinds of `TrainingImage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainingImage {
    /// A container image, by its fully qualified reference (`docker.io/library/busybox:latest`).
    Container(String),
    /// A program on the agent's host (a path or a command line).
    HostProgram,
}

impl TrainingImage {
    pub fn of(image: &str) -> TrainingImage {
        let image = image.trim();
        if image.is_empty() || image.contains(char::is_whitespace) || image.starts_with(['/', '.']) {
            return TrainingImage::HostProgram;
        }
        let (name, digest) = match image.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (image, None),
        };
        let first = name.split('/').next().unwrap_or_default();
        let has_registry = name.contains('/') && (first.contains(['.', ':']) || first == "localhost");
        let last = name.rsplit('/').next().unwrap_or_default();
        let tag = last.split_once(':').map(|(_, tag)| tag);
        if !(has_registry || tag.is_some() || digest.is_some()) || !valid_name(name, has_registry) {
            return TrainingImage::HostProgram;
        }
        if tag.is_some_and(|t| !valid_tag(t)) || digest.is_some_and(|d| !valid_digest(d)) {
            return TrainingImage::HostProgram;
        }
        // Docker's defaults: a name without a registry is on Docker Hub, a single component is an
        // official image, and no tag is `latest`.
        let mut full = if has_registry {
            name.to_string()
        } else if name.contains('/') {
            format!("docker.io/{name}")
        } else {
            format!("docker.io/library/{name}")
        };
        if tag.is_none() && digest.is_none() {
            full.push_str(":latest");
        }
        if let Some(digest) = digest {
            full.push('@');
            full.push_str(digest);
        }
        TrainingImage::Container(full)
    }
}

/// Repository components: lower-case letters, digits and separators (`.`, `_`, `-`), not at the
/// ends; the registry host may also have upper case and a port.
fn valid_name(name: &str, has_registry: bool) -> bool {
    let without_tag = match name.rsplit_once('/') {
        Some((head, last)) => format!("{head}/{}", last.split(':').next().unwrap_or_default()),
        None => name.split(':').next().unwrap_or_default().to_string(),
    };
    let mut components = without_tag.split('/');
    if has_registry {
        let host = components.next().unwrap_or_default();
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')) {
            return false;
        }
    }
    components.all(|c| {
        !c.is_empty()
            && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    })
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !tag.starts_with(['.', '-'])
}

fn valid_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_programs_are_told_apart_and_images_fully_qualified() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let cases: Vec<(String, Option<String>)> = vec![
            ("deploy/examples/trainer/train.py".into(), None),
            ("/opt/trainers/train.py".into(), None),
            ("./train.sh".into(), None),
            ("python3 train.py".into(), None),
            ("train".into(), None),
            ("busybox:1.36".into(), Some("docker.io/library/busybox:1.36".into())),
            ("pytorch/pytorch:2.3.0-cuda12.1".into(), Some("docker.io/pytorch/pytorch:2.3.0-cuda12.1".into())),
            ("localhost/trainyard/busybox:1".into(), Some("localhost/trainyard/busybox:1".into())),
            ("localhost:5000/trainer".into(), Some("localhost:5000/trainer:latest".into())),
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com/xgb:1".into(),
                Some("123456789012.dkr.ecr.us-east-1.amazonaws.com/xgb:1".into()),
            ),
            (format!("registry.internal/ml/trainer@{digest}"), Some(format!("registry.internal/ml/trainer@{digest}"))),
            ("Upper/Case:1".into(), None),
            ("busybox:".into(), None),
            ("registry.internal/ml/trainer@sha256:short".into(), None),
        ];
        for (image, expected) in cases {
            let got = TrainingImage::of(&image);
            match expected {
                Some(reference) => assert_eq!(got, TrainingImage::Container(reference), "{image}"),
                None => assert_eq!(got, TrainingImage::HostProgram, "{image}"),
            }
        }
    }
}
