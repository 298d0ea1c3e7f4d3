//! Model owners, one per compute device: each owner is one OS thread ([`ModelThread`]) that
//! loads that device's engines itself and runs every call on them; the workers assigned to the
//! device send it work over its bounded channel. No two devices share an engine instance. After
//! a model call panics, the owner rebuilds its engines on its thread before the next call; when
//! that fails the device is marked unhealthy and `/readyz` reports the process not ready.

use crate::config::Config;
use crate::engines::Engines;
use crate::errors::{ApiError, Code};
use crate::jobs::model::{ModelThread, ThreadOptions};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use tch::Device;
use vipavatar_pipeline::engine::{Engine, EngineKind};
use vipavatar_pipeline::precompute::Precomputer;

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// The engines one device owner holds (swapped for a fresh set after a panic).
pub struct DeviceModels {
    /// Position in the process's device list.
    pub index: usize,
    pub device: Device,
    current: RwLock<Arc<Engines>>,
    /// Process-unique id of the current engine set (a rebuild gives a new one).
    instance: AtomicU64,
    healthy: AtomicBool,
    rebuilds: AtomicU64,
    last_error: RwLock<Option<String>>,
}

impl DeviceModels {
    pub fn new(index: usize, device: Device, engines: Arc<Engines>) -> Self {
        Self {
            index,
            device,
            current: RwLock::new(engines),
            instance: AtomicU64::new(NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)),
            healthy: AtomicBool::new(true),
            rebuilds: AtomicU64::new(0),
            last_error: RwLock::new(None),
        }
    }

    /// `cpu#0`, `cuda:1#1`: the device and its place in the list.
    pub fn label(&self) -> String {
        let d = match self.device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".to_string(),
        };
        format!("{d}#{}", self.index)
    }

    pub fn engines(&self) -> Arc<Engines> {
        self.current.read().map(|g| g.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn instance(&self) -> u64 {
        self.instance.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Why the last rebuild failed (when unhealthy).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().ok().and_then(|g| g.clone())
    }

    /// The engine for `kind` on this device (see [`Engines::get`]); 503 while unhealthy.
    pub fn get(&self, kind: Option<EngineKind>) -> Result<Arc<dyn Engine>, ApiError> {
        if !self.is_healthy() {
            return Err(ApiError::new(
                Code::NotReady,
                format!("the engines on {} could not be rebuilt after a panic", self.label()),
            )
            .retry_after(60));
        }
        self.engines().get(kind)
    }

    pub fn precomputer(&self) -> Arc<Precomputer> {
        self.engines().precomputer().clone()
    }

    pub fn default_kind(&self) -> EngineKind {
        self.engines().default_kind()
    }

    pub fn kinds(&self) -> Vec<EngineKind> {
        self.engines().kinds()
    }

    /// Load a fresh engine set for this device (runs on the owner's thread after a panic).
    fn rebuild(&self, config: &Config) {
        tracing::warn!(device = %self.label(), "rebuilding the engines after a panic");
        match Engines::load(config, self.device) {
            Ok(e) => {
                if let Ok(mut g) = self.current.write() {
                    *g = Arc::new(e);
                }
                self.instance.store(NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                self.rebuilds.fetch_add(1, Ordering::Relaxed);
                self.healthy.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(device = %self.label(), error = %e, "the engines could not be rebuilt; not ready");
                if let Ok(mut g) = self.last_error.write() {
                    *g = Some(e.to_string());
                }
                self.healthy.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// One device's owner: its engines and the thread that runs every call on them.
#[derive(Clone)]
pub struct DeviceOwner {
    pub models: Arc<DeviceModels>,
    pub thread: ModelThread,
}

impl DeviceOwner {
    /// Start the owner thread of `device` and load its engines there.
    pub async fn start(index: usize, device: Device, config: &Config) -> Result<Self, String> {
        let slot: Arc<OnceLock<Arc<DeviceModels>>> = Arc::new(OnceLock::new());
        let (hook_slot, hook_config) = (slot.clone(), config.clone());
        let options = ThreadOptions {
            after_panic: Some(Box::new(move || {
                if let Some(m) = hook_slot.get() {
                    m.rebuild(&hook_config);
                }
            })),
            // Call 1 is the load below; the test switch counts the calls after it.
            panic_at_call: config.jobs.test_panic_model_call.map(|n| n + 1),
        };
        let thread = ModelThread::spawn_with(&format!("model-{index}"), options).map_err(|e| e.to_string())?;
        let cfg = config.clone();
        let engines = thread.run(move || Engines::load(&cfg, device)).await.map_err(|e| e.to_string())?;
        let models = Arc::new(DeviceModels::new(index, device, Arc::new(engines)));
        let _ = slot.set(models.clone());
        tracing::info!(device = %models.label(), instance = models.instance(), "device owner ready");
        Ok(Self { models, thread })
    }
}

/// Which device owner each of `workers` workers uses: round-robin over `devices` owners.
pub fn assign(workers: usize, devices: usize) -> Vec<usize> {
    (0..workers).map(|i| i % devices.max(1)).collect()
}

/// The devices this process's workers use: the configured list, no more owners than workers.
pub fn plan(config: &Config, workers: usize) -> Result<Vec<Device>, String> {
    let mut devices = vipavatar_pipeline::device::select_devices(&config.device).map_err(|e| e.to_string())?;
    devices.truncate(workers.max(1));
    Ok(devices)
}

/// A loaded device owner of this process and the consumer names of the workers using it.
#[derive(Clone)]
pub struct LocalDevice {
    pub models: Arc<DeviceModels>,
    pub workers: Vec<String>,
}

/// The local device owners, shared with the API (`/`, `/readyz`); filled once they loaded.
pub type LocalDevices = Arc<RwLock<Vec<LocalDevice>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_spread_round_robin() {
        assert_eq!(assign(4, 2), vec![0, 1, 0, 1]);
        assert_eq!(assign(3, 1), vec![0, 0, 0]);
        assert_eq!(assign(2, 4), vec![0, 1]);
        assert!(assign(0, 2).is_empty());
    }

    #[test]
    fn the_plan_follows_the_device_setting() {
        let mut c = Config::from_env().unwrap();
        c.device = "cpu,cpu".into();
        assert_eq!(plan(&c, 2).unwrap(), vec![Device::Cpu, Device::Cpu]);
        assert_eq!(plan(&c, 1).unwrap(), vec![Device::Cpu], "no owner without a worker");
        c.device = "cpu".into();
        assert_eq!(plan(&c, 3).unwrap(), vec![Device::Cpu]);
        c.device = "tpu".into();
        assert!(plan(&c, 1).is_err());
    }
}
