//! Compute-device selection for the tch networks (`VIPAVATAR_DEVICE` = auto | cpu | cuda |
//! cuda:N | cuda:all, or a comma list of those: one model owner per listed device).

use crate::{PipelineError, Result};
use std::sync::OnceLock;
use tch::Device;

/// Environment variable naming the preferred device.
pub const DEVICE_ENV: &str = "VIPAVATAR_DEVICE";

/// libtorch's CUDA half, loaded once. tch links `libtorch_cuda.so`, but no symbol of it is
/// referenced, so linkers that drop unneeded libraries (`--as-needed`, Debian's default) leave it
/// out of the executable and libtorch then sees no GPU. Loading it by name (the executables
/// carry libtorch's folder as their rpath; `LD_LIBRARY_PATH` on a host with another torch)
/// registers its CUDA backend. Without it (a CPU-only libtorch) this is a no-op.
pub fn load_cuda_backend() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        // SAFETY: dlopen with a constant, NUL-terminated name; the handle is kept for the
        // process's lifetime (never dlclosed).
        let handle = unsafe { libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            tracing::debug!("libtorch_cuda.so is not loadable: CPU only");
        }
        !handle.is_null()
    })
}

/// Whether libtorch sees a GPU (after [`load_cuda_backend`]).
pub fn cuda_available() -> bool {
    load_cuda_backend();
    tch::Cuda::is_available()
}

/// Resolve a device preference: `auto` (or empty) picks CUDA device 0 when libtorch sees a GPU,
/// else the CPU; `cpu` forces the CPU; `cuda` / `cuda:N` require that GPU and fail otherwise.
pub fn select_device(pref: &str) -> Result<Device> {
    let pref = pref.trim().to_ascii_lowercase();
    let bad = |reason: String| PipelineError::Config { what: "device", reason };
    match pref.as_str() {
        "" | "auto" => Ok(if cuda_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda_device(0).map_err(bad),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => cuda_device(index).map_err(bad),
            _ => Err(bad(format!("`{other}` is not one of auto, cpu, cuda, cuda:N"))),
        },
    }
}

/// The devices a worker process spreads its workers over, one model owner each: `auto` (or
/// empty) = every CUDA device, else the CPU; `cuda:all` = every CUDA device (an error without
/// one); otherwise a comma list of [`select_device`] entries (`cuda:0,cuda:2`; `cpu,cpu` gives
/// two independent CPU owners).
pub fn select_devices(pref: &str) -> Result<Vec<Device>> {
    let pref = pref.trim().to_ascii_lowercase();
    let count = if cuda_available() { tch::Cuda::device_count() as usize } else { 0 };
    match pref.as_str() {
        "" | "auto" if count > 0 => Ok((0..count).map(Device::Cuda).collect()),
        "" | "auto" => Ok(vec![Device::Cpu]),
        "cuda:all" | "gpu:all" if count > 0 => Ok((0..count).map(Device::Cuda).collect()),
        "cuda:all" | "gpu:all" => Err(PipelineError::Config {
            what: "device",
            reason: "cuda:all was requested but libtorch sees no CUDA device".into(),
        }),
        list => list.split(',').map(select_device).collect(),
    }
}

/// [`select_device`] applied to `$VIPAVATAR_DEVICE` (unset means `auto`).
pub fn device_from_env() -> Result<Device> {
    select_device(&std::env::var(DEVICE_ENV).unwrap_or_default())
}

fn cuda_device(index: usize) -> std::result::Result<Device, String> {
    let count = if cuda_available() { tch::Cuda::device_count() } else { 0 };
    if (index as i64) < count {
        Ok(Device::Cuda(index))
    } else if count == 0 {
        Err("CUDA was requested but libtorch sees no CUDA device".to_string())
    } else {
        Err(format!("CUDA device {index} was requested but only {count} exist"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_resolve() {
        assert_eq!(select_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(select_device(" CPU ").unwrap(), Device::Cpu);
        let auto = select_device("auto").unwrap();
        assert_eq!(auto == Device::Cpu, !cuda_available());
    }

    #[test]
    fn device_lists() {
        assert_eq!(select_devices("cpu").unwrap(), vec![Device::Cpu]);
        assert_eq!(select_devices("cpu, cpu").unwrap(), vec![Device::Cpu, Device::Cpu]);
        let auto = select_devices("auto").unwrap();
        assert!(!auto.is_empty());
        if !cuda_available() {
            assert_eq!(auto, vec![Device::Cpu]);
            assert!(select_devices("cuda:all").is_err());
        }
        assert!(select_devices("cpu,tpu").is_err());
    }

    /// Paths of the shared libraries this process has mapped.
    fn mapped(name: &str) -> Option<std::path::PathBuf> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with(name)).map(Into::into)
    }

    #[test]
    fn the_cuda_half_of_a_cuda_libtorch_is_loaded() {
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, Device::Cpu));
        let cpu = mapped("/libtorch_cpu.so").expect("libtorch_cpu.so is mapped");
        if !cpu.with_file_name("libtorch_cuda.so").exists() {
            eprintln!("a CPU-only libtorch: nothing to load");
            return;
        }
        assert!(load_cuda_backend(), "libtorch_cuda.so beside {} did not load", cpu.display());
        assert!(mapped("/libtorch_cuda.so").is_some(), "libtorch_cuda.so is not mapped after loading it");
    }

    #[test]
    fn unknown_and_unavailable_devices_are_errors() {
        let err = select_device("tpu").unwrap_err();
        assert_eq!(err.code(), "config_error");
        assert!(err.to_string().contains("tpu"));
        assert!(select_device("cuda:x").is_err());
        if !cuda_available() {
            assert!(select_device("cuda").is_err());
        }
        assert!(select_device("cuda:99").is_err());
    }
}
