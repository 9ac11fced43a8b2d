//! GPU inventory through NVML (nvml-wrapper). No library, or a library that fails, means zero GPUs
//! and a note saying why: never a crash.

use std::collections::BTreeMap;
use std::path::Path;

use nvml_wrapper::Nvml;
use trainyard_proto::pb;

pub struct GpuInventory {
    pub gpus: Vec<pb::Gpu>,
    pub driver_version: String,
    pub cuda_version: String,
    /// Each GPU's device node number (`/dev/nvidia<minor>`), by UUID: not always its index.
    pub minor_numbers: BTreeMap<String, u32>,
    /// Why there are no GPUs (empty when there are some).
    pub note: String,
}

/// Opens NVML once; keep the handle to read live utilisation for heartbeats.
pub struct Gpus {
    nvml: Option<Nvml>,
    note: String,
}

impl Gpus {
    pub fn open(library: Option<&Path>) -> Gpus {
        let mut builder = Nvml::builder();
        if let Some(path) = library {
            builder.lib_path(path.as_os_str());
        }
        match builder.init() {
            Ok(nvml) => Gpus { nvml: Some(nvml), note: String::new() },
            Err(e) => {
                let place = library.map_or("the system library".to_string(), |p| p.display().to_string());
                Gpus { nvml: None, note: format!("NVML unavailable ({place}): {e}; reporting no GPUs") }
            }
        }
    }

    pub fn note(&self) -> &str {
        &self.note
    }

    /// Every GPU NVML reports. A device that cannot be read is skipped with a note; a missing
    /// optional reading (utilisation) is reported as 0.
    pub fn inventory(&self) -> GpuInventory {
        let Some(nvml) = &self.nvml else {
            return GpuInventory {
                gpus: Vec::new(),
                driver_version: String::new(),
                cuda_version: String::new(),
                minor_numbers: BTreeMap::new(),
                note: self.note.clone(),
            };
        };
        let mut notes = Vec::new();
        let count = nvml.device_count().unwrap_or_else(|e| {
            notes.push(format!("cannot count devices: {e}"));
            0
        });
        let mut gpus = Vec::new();
        let mut minor_numbers = BTreeMap::new();
        for index in 0..count {
            let device = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    notes.push(format!("GPU {index}: {e}"));
                    continue;
                }
            };
            let (uuid, name) = match (device.uuid(), device.name()) {
                (Ok(u), Ok(n)) => (u, n),
                (Err(e), _) | (_, Err(e)) => {
                    notes.push(format!("GPU {index}: {e}"));
                    continue;
                }
            };
            // A library without the call (older drivers, the tests' fake) means the usual numbering.
            minor_numbers.insert(uuid.clone(), device.minor_number().unwrap_or(index));
            let memory = device.memory_info().ok();
            let utilization = device.utilization_rates().map(|u| u.gpu).unwrap_or(0);
            gpus.push(pb::Gpu {
                index,
                uuid,
                name,
                memory_total_mib: memory.as_ref().map_or(0, |m| m.total / (1024 * 1024)),
                memory_used_mib: memory.as_ref().map_or(0, |m| m.used / (1024 * 1024)),
                utilization_percent: utilization,
            });
        }
        let cuda_version =
            nvml.sys_cuda_driver_version().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)).unwrap_or_default();
        GpuInventory {
            gpus,
            driver_version: nvml.sys_driver_version().unwrap_or_default(),
            cuda_version,
            minor_numbers,
            note: notes.join("; "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainyard_testkit::nvml;

    // One test runs both cases: FAKE_NVML_GPUS is read by the library from this process's
    // environment, and NVML is initialised once per process.
    #[test]
    fn gpus_come_from_nvml_and_a_missing_library_means_none() {
        let missing = Gpus::open(Some(Path::new("/nonexistent/libnvidia-ml.so.1")));
        let inv = missing.inventory();
        assert!(inv.gpus.is_empty());
        assert!(inv.note.contains("NVML unavailable"), "{}", inv.note);

        let dir = tempfile::tempdir().expect("dir");
        let library = nvml::build_fake_nvml(dir.path());
        // SAFETY: set before any thread of this test reads the environment; this is the only test
        // of this binary that touches FAKE_NVML_GPUS.
        unsafe { std::env::set_var("FAKE_NVML_GPUS", nvml::gpus(2, "NVIDIA A100-SXM4-40GB", 40960)) };
        let gpus = Gpus::open(Some(&library));
        let inv = gpus.inventory();
        assert_eq!(inv.note, "", "no problems reported");
        assert_eq!(inv.gpus.len(), 2);
        assert_eq!(inv.gpus[1].uuid, nvml::uuid(1));
        // The device nodes' numbers, read through nvmlDeviceGetMinorNumber (the fake's follow the
        // indexes unless FAKE_NVML_MINOR_OFFSET says otherwise).
        assert_eq!(inv.minor_numbers.get(&nvml::uuid(1)), Some(&1));
        assert_eq!(inv.gpus[0].name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(inv.gpus[0].memory_total_mib, 40960);
        assert_eq!(inv.gpus[0].memory_used_mib, 512);
        assert_eq!(inv.gpus[1].utilization_percent, 14);
        assert_eq!(inv.driver_version, "550.54.15");
        assert_eq!(inv.cuda_version, "12.4");
    }
}
