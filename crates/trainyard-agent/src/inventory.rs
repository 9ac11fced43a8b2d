//! What this host has: CPUs, memory and disk from sysinfo, GPUs from NVML.

use std::path::Path;

use sysinfo::{Disks, System};
use trainyard_proto::pb;

use crate::gpu::Gpus;

const MIB: u64 = 1024 * 1024;

pub struct Host {
    system: System,
    pub gpus: Gpus,
    work_root: std::path::PathBuf,
    advertise_vcpus: Option<u32>,
    advertise_memory_mib: Option<u64>,
}

impl Host {
    pub fn open(
        work_root: &Path,
        nvml: Option<&Path>,
        vcpus: Option<u32>,
        memory_mib: Option<u64>,
    ) -> anyhow::Result<Host> {
        let mut system = System::new()?;
        system.refresh_memory();
        system.refresh_cpu_all();
        Ok(Host {
            system,
            gpus: Gpus::open(nvml),
            work_root: work_root.to_path_buf(),
            advertise_vcpus: vcpus,
            advertise_memory_mib: memory_mib,
        })
    }

    /// Free space on the file system that holds the work root (the longest matching mount point).
    pub fn disk_free_mib(&self) -> u64 {
        let root = std::fs::canonicalize(&self.work_root).unwrap_or_else(|_| self.work_root.clone());
        let Ok(disks) = Disks::new_with_refreshed_list() else { return 0 };
        disks
            .iter()
            .filter(|d| root.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map_or(0, |d| d.available_space() / MIB)
    }

    pub fn inventory(&mut self) -> pb::Inventory {
        self.system.refresh_memory();
        let gpus = self.gpus.inventory();
        let cpus = self.system.cpus();
        pb::Inventory {
            hostname: System::host_name().unwrap_or_default(),
            os: System::long_os_version().unwrap_or_default(),
            cpu_count: self.advertise_vcpus.unwrap_or(cpus.len() as u32),
            cpu_model: cpus.first().map(|c| c.brand().trim().to_string()).unwrap_or_default(),
            memory_total_mib: self.advertise_memory_mib.unwrap_or(self.system.total_memory() / MIB),
            memory_available_mib: self.system.available_memory() / MIB,
            disk_free_mib: self.disk_free_mib(),
            gpus: gpus.gpus,
            gpu_driver_version: gpus.driver_version,
            cuda_version: gpus.cuda_version,
            gpu_note: gpus.note,
        }
    }

    pub fn heartbeat(&mut self) -> pb::Heartbeat {
        self.system.refresh_memory();
        self.system.refresh_cpu_all();
        pb::Heartbeat {
            cpu_percent: self.system.global_cpu_usage(),
            memory_available_mib: self.system.available_memory() / MIB,
            disk_free_mib: self.disk_free_mib(),
            gpus: self.gpus.inventory().gpus,
        }
    }
}
