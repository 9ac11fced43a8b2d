//! GPUs for containers through the Container Device Interface: the specs a vendor's tool writes
//! (`nvidia-ctk cdi generate`, YAML or JSON, into `/etc/cdi` or `/var/run/cdi`) name each device and
//! what a container needs to use it (device nodes, mounts, environment, hooks). The agent gives a
//! container the devices of the GPUs assigned to its instance and nothing else: their nodes are
//! the only devices its cgroup allows besides the defaults.
//!
//! Parsing and applying are pure (the OCI spec as data); only `load` reads files, and `stat`s the
//! device nodes whose numbers a spec leaves out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

/// Where CDI specs live, lowest priority first (a later dir's device of the same name wins).
pub const DEFAULT_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];
/// The kind NVIDIA's tools give GPUs.
pub const GPU_KIND: &str = "nvidia.com/gpu";

#[derive(Debug, Clone, Deserialize)]
pub struct Spec {
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(rename = "containerEdits", default)]
    pub container_edits: Edits,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Device {
    pub name: String,
    #[serde(rename = "containerEdits", default)]
    pub container_edits: Edits,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Edits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(rename = "deviceNodes", default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceNode {
    /// Where the container sees it.
    pub path: String,
    /// Where it is on the host (default: `path`).
    #[serde(rename = "hostPath", default)]
    pub host_path: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    #[serde(rename = "fileMode", default)]
    pub file_mode: Option<u32>,
    #[serde(default)]
    pub permissions: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Mount {
    #[serde(rename = "hostPath")]
    pub host_path: String,
    #[serde(rename = "containerPath")]
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Hook {
    #[serde(rename = "hookName")]
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// The CDI specs an agent found.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    specs: Vec<Spec>,
    dirs: Vec<PathBuf>,
}

impl Registry {
    /// Reads every spec in `dirs`, `*.json`, `*.yaml` and `*.yml` (missing dirs are fine). Returns
    /// the registry and what was skipped, one line each (a spec that does not parse).
    pub fn load(dirs: &[PathBuf]) -> (Registry, Vec<String>) {
        let (mut specs, mut skipped) = (Vec::new(), Vec::new());
        for dir in dirs {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
            files.sort();
            for file in files {
                let parse: fn(&str) -> Result<Spec, String> = match file.extension().and_then(|e| e.to_str()) {
                    Some("json") => |text| serde_json::from_str(text).map_err(|e| e.to_string()),
                    Some("yaml" | "yml") => |text| serde_saphyr::from_str(text).map_err(|e| e.to_string()),
                    _ => continue,
                };
                match std::fs::read_to_string(&file).map_err(|e| e.to_string()).and_then(|text| parse(&text)) {
                    Ok(spec) => specs.push(spec),
                    Err(e) => skipped.push(format!("{}: {e}", file.display())),
                }
            }
        }
        (Registry { specs, dirs: dirs.to_vec() }, skipped)
    }

    pub fn has_any(&self, kind: &str) -> bool {
        self.specs.iter().any(|s| s.kind == kind && !s.devices.is_empty())
    }

    pub fn has(&self, kind: &str, name: &str) -> bool {
        self.specs.iter().any(|s| s.kind == kind && s.devices.iter().any(|d| d.name == name))
    }

    #[cfg(test)]
    pub fn from_specs(specs: Vec<Spec>) -> Registry {
        Registry { specs, dirs: Vec::new() }
    }

    /// The edits that give a container the devices `names` of `kind`: each spec's own edits once
    /// (when one of its devices is used), then each device's. `Err` names the device not found.
    pub fn edits_for(&self, kind: &str, names: &[String]) -> Result<Vec<Edits>, String> {
        let mut used: BTreeMap<usize, Vec<Edits>> = BTreeMap::new();
        for name in names {
            // The last spec that has it wins, as the CDI spec says of later directories.
            let found = self.specs.iter().enumerate().rev().find_map(|(i, spec)| {
                (spec.kind == kind).then(|| spec.devices.iter().find(|d| &d.name == name).map(|d| (i, d)))?
            });
            let Some((i, device)) = found else {
                let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
                return Err(format!(
                    "no CDI device {kind}={name} in {} (nvidia-ctk cdi generate writes them)",
                    if dirs.is_empty() { "the agent's CDI specs".to_string() } else { dirs.join(", ") }
                ));
            };
            used.entry(i).or_default().push(device.container_edits.clone());
        }
        let mut edits = Vec::new();
        for (i, devices) in used {
            edits.push(self.specs[i].container_edits.clone());
            edits.extend(devices);
        }
        Ok(edits)
    }
}

/// What `registry` calls each of `gpus` (UUIDs): the UUID where a spec names it so, else its NVML
/// index, as `nvidia-ctk`'s default names them.
pub fn gpu_names(registry: &Registry, gpus: &[String], indexes: &BTreeMap<String, u32>) -> Vec<String> {
    gpus.iter()
        .map(|uuid| match indexes.get(uuid) {
            Some(index) if !registry.has(GPU_KIND, uuid) => index.to_string(),
            _ => uuid.clone(),
        })
        .collect()
}

/// The numbers of a device node (from the spec, else from the host's node).
fn numbers(node: &DeviceNode) -> Result<(String, i64, i64), String> {
    let host = node.host_path.clone().unwrap_or_else(|| node.path.clone());
    if let (Some(major), Some(minor)) = (node.major, node.minor) {
        return Ok((node.kind.clone().unwrap_or_else(|| "c".into()), major, minor));
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(&host).map_err(|e| format!("CDI device node {host}: {e}"))?;
    let kind = if meta.file_type().is_block_device() {
        "b"
    } else if meta.file_type().is_char_device() {
        "c"
    } else {
        return Err(format!("CDI device node {host} is not a device"));
    };
    let rdev = meta.rdev();
    Ok((node.kind.clone().unwrap_or_else(|| kind.into()), libc::major(rdev) as i64, libc::minor(rdev) as i64))
}

/// Applies `edits` to an OCI runtime spec: environment, device nodes (created in the container and
/// allowed in its device cgroup), bind mounts, hooks.
pub fn apply(spec: &mut Value, edits: &[Edits]) -> Result<(), String> {
    for edit in edits {
        for kv in &edit.env {
            let key = kv.split('=').next().unwrap_or_default();
            let env = spec["process"]["env"].as_array_mut().ok_or("the spec has no process.env")?;
            env.retain(|e| e.as_str().and_then(|e| e.split('=').next()) != Some(key));
            env.push(json!(kv));
        }
        for node in &edit.device_nodes {
            let (kind, major, minor) = numbers(node)?;
            let mut device = json!({"path": node.path, "type": kind, "major": major, "minor": minor});
            device["fileMode"] = json!(node.file_mode.unwrap_or(0o666));
            push(spec, &["linux", "devices"], device);
            let access = node.permissions.clone().unwrap_or_else(|| "rwm".into());
            let rule = json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": access});
            push(spec, &["linux", "resources", "devices"], rule);
        }
        for mount in &edit.mounts {
            let options = if mount.options.is_empty() {
                vec!["rbind".to_string(), "ro".to_string()]
            } else {
                mount.options.clone()
            };
            let mount = json!({
                "destination": mount.container_path, "source": mount.host_path,
                "type": mount.kind.clone().unwrap_or_else(|| "bind".into()), "options": options,
            });
            push(spec, &["mounts"], mount);
        }
        for hook in &edit.hooks {
            let known = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];
            if !known.contains(&hook.hook_name.as_str()) {
                return Err(format!("CDI hook {} has an unknown hookName {}", hook.path, hook.hook_name));
            }
            let mut entry = json!({"path": hook.path, "args": hook.args});
            if !hook.env.is_empty() {
                entry["env"] = json!(hook.env);
            }
            if let Some(timeout) = hook.timeout {
                entry["timeout"] = json!(timeout);
            }
            push(spec, &["hooks", hook.hook_name.as_str()], entry);
        }
    }
    Ok(())
}

/// Appends to the array at `path`, creating what is missing.
fn push(spec: &mut Value, path: &[&str], item: Value) {
    let mut at = spec;
    for key in path {
        if at.get(*key).is_none() {
            at[*key] = Value::Null;
        }
        at = &mut at[*key];
    }
    if !at.is_array() {
        *at = json!([]);
    }
    if let Some(items) = at.as_array_mut() {
        items.push(item);
    }
}

/// The dirs an agent reads (configured, or the defaults).
pub fn dirs(configured: &[PathBuf]) -> Vec<PathBuf> {
    if configured.is_empty() { DEFAULT_DIRS.iter().map(PathBuf::from).collect() } else { configured.to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nvidia_spec() -> Spec {
        serde_json::from_value(json!({
            "cdiVersion": "0.5.0",
            "kind": "nvidia.com/gpu",
            "devices": [
                {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0", "major": 195, "minor": 0}]}},
                {"name": "GPU-aaaa", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0", "major": 195, "minor": 0}]}},
                {"name": "GPU-bbbb", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia1", "major": 195, "minor": 1}]}}
            ],
            "containerEdits": {
                "env": ["NVIDIA_VISIBLE_DEVICES=void"],
                "deviceNodes": [{"path": "/dev/nvidiactl", "major": 195, "minor": 255, "permissions": "rw"}],
                "mounts": [{"hostPath": "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "containerPath": "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "options": ["ro", "nosuid", "nodev", "bind"]}],
                "hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk", "args": ["nvidia-ctk", "hook", "update-ldcache"]}]
            }
        }))
        .expect("spec")
    }

    fn base() -> Value {
        json!({"process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"]}, "mounts": [], "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}})
    }

    #[test]
    fn only_the_assigned_gpus_and_their_specs_common_edits_are_given() {
        let registry = Registry::from_specs(vec![nvidia_spec()]);
        let edits = registry.edits_for(GPU_KIND, &["GPU-bbbb".to_string()]).expect("found");
        let mut spec = base();
        apply(&mut spec, &edits).expect("applied");
        let devices: Vec<&str> =
            spec["linux"]["devices"].as_array().expect("devices").iter().filter_map(|d| d["path"].as_str()).collect();
        assert_eq!(devices, ["/dev/nvidiactl", "/dev/nvidia1"]);
        let rules = spec["linux"]["resources"]["devices"].as_array().expect("rules");
        assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}), "deny all stays first");
        assert_eq!(rules[1], json!({"allow": true, "type": "c", "major": 195, "minor": 255, "access": "rw"}));
        assert_eq!(rules[2], json!({"allow": true, "type": "c", "major": 195, "minor": 1, "access": "rwm"}));
        assert_eq!(rules.len(), 3, "nvidia0 is not allowed");
        assert_eq!(
            spec["process"]["env"],
            json!(["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void"]),
            "the spec's value replaces the image's"
        );
        assert_eq!(spec["mounts"][0]["destination"], "/usr/lib/x86_64-linux-gnu/libcuda.so.1");
        assert_eq!(spec["hooks"]["createContainer"][0]["args"][2], "update-ldcache");
    }

    /// As `nvidia-ctk cdi generate` writes it by default (YAML).
    const NVIDIA_YAML: &str = r#"---
cdiVersion: 0.5.0
containerEdits:
  deviceNodes:
  - path: /dev/nvidiactl
    major: 195
    minor: 255
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  hooks:
  - args:
    - nvidia-ctk
    - hook
    - update-ldcache
    hookName: createContainer
    path: /usr/bin/nvidia-ctk
devices:
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      major: 195
      minor: 0
  name: "0"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
      major: 195
      minor: 1
  name: GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c
kind: nvidia.com/gpu
"#;

    #[test]
    fn specs_are_read_as_yaml_or_json_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("nvidia.yaml"), NVIDIA_YAML).expect("write");
        let other = json!({"cdiVersion": "0.5.0", "kind": "example.com/fpga", "devices": [{"name": "f0", "containerEdits": {}}]});
        std::fs::write(dir.path().join("fpga.json"), other.to_string()).expect("write");
        std::fs::write(dir.path().join("broken.yml"), "kind: [unclosed\n").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "not a spec").expect("write");
        let (registry, skipped) = Registry::load(&[dir.path().to_path_buf()]);
        assert!(registry.has(GPU_KIND, "GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c") && registry.has(GPU_KIND, "0"));
        assert!(registry.has("example.com/fpga", "f0"));
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].contains("broken.yml"), "{skipped:?}");
        let edits =
            registry.edits_for(GPU_KIND, &["GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c".to_string()]).expect("edits");
        let mut spec = base();
        apply(&mut spec, &edits).expect("applied");
        let devices: Vec<&str> =
            spec["linux"]["devices"].as_array().expect("devices").iter().filter_map(|d| d["path"].as_str()).collect();
        assert_eq!(devices, ["/dev/nvidiactl", "/dev/nvidia1"]);
        assert_eq!(spec["hooks"]["createContainer"][0]["args"][2], "update-ldcache");
    }

    #[test]
    fn a_gpu_without_a_device_is_an_error_naming_it() {
        let registry = Registry::from_specs(vec![nvidia_spec()]);
        let error = registry.edits_for(GPU_KIND, &["GPU-cccc".to_string()]).unwrap_err();
        assert!(error.contains("nvidia.com/gpu=GPU-cccc"), "{error}");
        assert!(Registry::default().edits_for(GPU_KIND, &["0".to_string()]).is_err());
        assert_eq!(Registry::default().edits_for(GPU_KIND, &[]).expect("no devices, no edits").len(), 0);
    }

    #[test]
    fn device_numbers_come_from_the_host_node_when_the_spec_leaves_them_out() {
        let node = DeviceNode {
            path: "/dev/fake".into(),
            host_path: Some("/dev/null".into()),
            kind: None,
            major: None,
            minor: None,
            file_mode: None,
            permissions: None,
        };
        assert_eq!(numbers(&node).expect("stat"), ("c".to_string(), 1, 3));
        let file = DeviceNode { host_path: Some("/etc/hostname".into()), ..node };
        assert!(numbers(&file).unwrap_err().contains("not a device"));
    }

    #[test]
    fn unknown_hooks_are_refused() {
        let mut spec = base();
        let edits = Edits {
            hooks: vec![Hook {
                hook_name: "whenever".into(),
                path: "/x".into(),
                args: vec![],
                env: vec![],
                timeout: None,
            }],
            ..Default::default()
        };
        assert!(apply(&mut spec, &edits_vec(edits)).unwrap_err().contains("whenever"));
    }

    fn edits_vec(e: Edits) -> Vec<Edits> {
        vec![e]
    }
}
