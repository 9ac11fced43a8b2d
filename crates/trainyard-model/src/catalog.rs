//! The instance-type catalog: which `InstanceType` values this cluster accepts and what each one
//! needs from an agent. The defaults describe the common `ml.*` types as AWS sizes them; operators
//! add or replace entries in the coordinator's configuration (`[[instance_types]]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one instance of a type needs from the host that runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub gpus: u32,
    /// The accelerator model AWS fits, for display ("NVIDIA A10G"); placement matches by count.
    #[serde(default)]
    pub gpu_model: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    types: BTreeMap<String, InstanceSpec>,
}

impl Catalog {
    /// A catalog of exactly these types (later entries replace earlier ones of the same name).
    pub fn new(types: impl IntoIterator<Item = InstanceSpec>) -> Self {
        Self { types: types.into_iter().map(|t| (t.name.clone(), t)).collect() }
    }

    /// The defaults with `extra` added (an entry with a default's name replaces it).
    pub fn with(mut self, extra: impl IntoIterator<Item = InstanceSpec>) -> Self {
        self.types.extend(extra.into_iter().map(|t| (t.name.clone(), t)));
        self
    }

    pub fn get(&self, name: &str) -> Option<&InstanceSpec> {
        self.types.get(name)
    }

    /// The fewest vCPUs and the fewest MiB of memory of any type (each on its own; (0, 0) for an
    /// empty catalog): what any instance needs at least.
    pub fn smallest(&self) -> (u32, u64) {
        let vcpus = self.types.values().map(|t| t.vcpus).min().unwrap_or(0);
        let memory_mib = self.types.values().map(|t| t.memory_mib).min().unwrap_or(0);
        (vcpus, memory_mib)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

impl Default for Catalog {
    fn default() -> Self {
        const GIB: u64 = 1024;
        let cpu = |name: &str, vcpus: u32, memory_gib: u64| InstanceSpec {
            name: name.into(),
            vcpus,
            memory_mib: memory_gib * GIB,
            gpus: 0,
            gpu_model: None,
        };
        let gpu = |name: &str, vcpus: u32, memory_gib: u64, gpus: u32, model: &str| InstanceSpec {
            name: name.into(),
            vcpus,
            memory_mib: memory_gib * GIB,
            gpus,
            gpu_model: Some(model.into()),
        };
        Catalog::new([
            cpu("ml.m4.xlarge", 4, 16),
            cpu("ml.m4.2xlarge", 8, 32),
            cpu("ml.m4.4xlarge", 16, 64),
            cpu("ml.m4.10xlarge", 40, 160),
            cpu("ml.m4.16xlarge", 64, 256),
            cpu("ml.m5.large", 2, 8),
            cpu("ml.m5.xlarge", 4, 16),
            cpu("ml.m5.2xlarge", 8, 32),
            cpu("ml.m5.4xlarge", 16, 64),
            cpu("ml.m5.12xlarge", 48, 192),
            cpu("ml.m5.24xlarge", 96, 384),
            cpu("ml.m6i.large", 2, 8),
            cpu("ml.m6i.xlarge", 4, 16),
            cpu("ml.m6i.2xlarge", 8, 32),
            cpu("ml.m6i.4xlarge", 16, 64),
            cpu("ml.c4.xlarge", 4, 7),
            cpu("ml.c4.2xlarge", 8, 15),
            cpu("ml.c4.4xlarge", 16, 30),
            cpu("ml.c5.xlarge", 4, 8),
            cpu("ml.c5.2xlarge", 8, 16),
            cpu("ml.c5.4xlarge", 16, 32),
            cpu("ml.c5.9xlarge", 36, 72),
            cpu("ml.c5.18xlarge", 72, 144),
            cpu("ml.c6i.xlarge", 4, 8),
            cpu("ml.c6i.2xlarge", 8, 16),
            cpu("ml.c6i.4xlarge", 16, 32),
            gpu("ml.p3.2xlarge", 8, 61, 1, "NVIDIA V100"),
            gpu("ml.p3.8xlarge", 32, 244, 4, "NVIDIA V100"),
            gpu("ml.p3.16xlarge", 64, 488, 8, "NVIDIA V100"),
            gpu("ml.p4d.24xlarge", 96, 1152, 8, "NVIDIA A100"),
            gpu("ml.p5.48xlarge", 192, 2048, 8, "NVIDIA H100"),
            gpu("ml.g4dn.xlarge", 4, 16, 1, "NVIDIA T4"),
            gpu("ml.g4dn.2xlarge", 8, 32, 1, "NVIDIA T4"),
            gpu("ml.g4dn.4xlarge", 16, 64, 1, "NVIDIA T4"),
            gpu("ml.g4dn.12xlarge", 48, 192, 4, "NVIDIA T4"),
            gpu("ml.g5.xlarge", 4, 16, 1, "NVIDIA A10G"),
            gpu("ml.g5.2xlarge", 8, 32, 1, "NVIDIA A10G"),
            gpu("ml.g5.4xlarge", 16, 64, 1, "NVIDIA A10G"),
            gpu("ml.g5.12xlarge", 48, 192, 4, "NVIDIA A10G"),
            gpu("ml.g5.48xlarge", 192, 768, 8, "NVIDIA A10G"),
            gpu("ml.g6.xlarge", 4, 16, 1, "NVIDIA L4"),
            gpu("ml.g6.2xlarge", 8, 32, 1, "NVIDIA L4"),
            gpu("ml.g6.12xlarge", 48, 192, 4, "NVIDIA L4"),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest of each dimension is taken on its own (no type has both here).
    #[test]
    fn smallest_is_the_minimum_of_each_dimension() {
        assert_eq!(Catalog::default().smallest(), (2, 7 * 1024));
        let two = Catalog::new([
            InstanceSpec { name: "few-cpus".into(), vcpus: 1, memory_mib: 9000, gpus: 0, gpu_model: None },
            InstanceSpec { name: "little-memory".into(), vcpus: 8, memory_mib: 512, gpus: 0, gpu_model: None },
        ]);
        assert_eq!(two.smallest(), (1, 512));
        assert_eq!(Catalog::new([]).smallest(), (0, 0));
    }
}
