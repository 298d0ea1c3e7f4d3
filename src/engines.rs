//! One set of loaded models for one compute device: the precompute models and the talking-head
//! engines. Each device owner (`crate::devices`) loads its own set on its own thread; an
//! API-only node loads one set for option checks.

use crate::config::{Config, EngineChoice};
use crate::errors::{ApiError, Code};
use std::sync::Arc;
use tokio::sync::watch;
use vipavatar_pipeline::engine::{Engine, EngineKind};
use vipavatar_pipeline::precompute::{ImageLimits, Precomputer};
use vipavatar_pipeline::PipelineError;

pub struct Engines {
    precomputer: Arc<Precomputer>,
    loaded: Vec<Arc<dyn Engine>>,
    default: EngineKind,
    /// Engines that could not be loaded, with the reason (reported by `/readyz` and 422s).
    unavailable: Vec<(EngineKind, String)>,
}

impl Engines {
    /// Load the precompute models and every engine that can be loaded. Fails when the precompute
    /// models or the configured default engine cannot be loaded.
    pub fn load(config: &Config, device: tch::Device) -> Result<Self, PipelineError> {
        tracing::info!(?device, "compute device");
        let limits = ImageLimits { max_pixels: config.limits.max_image_pixels, ..ImageLimits::default() };
        let precomputer = Arc::new(Precomputer::load(&config.checkpoints, limits)?);
        let mut loaded: Vec<Arc<dyn Engine>> = Vec::new();
        let mut unavailable = Vec::new();
        for kind in [EngineKind::Classic, EngineKind::Sadtalker] {
            match load_engine(kind, config, device) {
                Ok(e) => loaded.push(e),
                Err(e) => {
                    tracing::info!(engine = kind.as_str(), reason = %e, "engine not available");
                    unavailable.push((kind, e.to_string()));
                }
            }
        }
        let has = |k: EngineKind| loaded.iter().any(|e| e.kind() == k);
        let default = match config.engine {
            EngineChoice::Auto if has(EngineKind::Sadtalker) => EngineKind::Sadtalker,
            EngineChoice::Auto => EngineKind::Classic,
            fixed => fixed.fixed().unwrap_or(EngineKind::Classic),
        };
        if !has(default) {
            let reason = unavailable.iter().find(|(k, _)| *k == default).map(|(_, r)| r.clone()).unwrap_or_default();
            return Err(PipelineError::Checkpoint {
                file: config.checkpoints.display().to_string(),
                reason: format!("the default engine `{}` could not be loaded: {reason}", default.as_str()),
            });
        }
        tracing::info!(default = default.as_str(), loaded = ?loaded.iter().map(|e| e.kind().as_str()).collect::<Vec<_>>(), "models loaded");
        Ok(Self { precomputer, loaded, default, unavailable })
    }

    pub fn precomputer(&self) -> &Arc<Precomputer> {
        &self.precomputer
    }

    pub fn default_kind(&self) -> EngineKind {
        self.default
    }

    pub fn kinds(&self) -> Vec<EngineKind> {
        self.loaded.iter().map(|e| e.kind()).collect()
    }

    /// The engine for `kind` (`None` = the default), or a 422 naming why it is unavailable.
    pub fn get(&self, kind: Option<EngineKind>) -> Result<Arc<dyn Engine>, ApiError> {
        let kind = kind.unwrap_or(self.default);
        if let Some(e) = self.loaded.iter().find(|e| e.kind() == kind) {
            return Ok(e.clone());
        }
        let reason = self.unavailable.iter().find(|(k, _)| *k == kind).map(|(_, r)| r.as_str()).unwrap_or("not loaded");
        Err(ApiError::new(
            Code::EngineUnavailable,
            format!("engine `{}` is not available on this server: {reason}", kind.as_str()),
        ))
    }
}

/// Construct one engine.
pub fn load_engine(kind: EngineKind, config: &Config, device: tch::Device) -> Result<Arc<dyn Engine>, PipelineError> {
    match kind {
        EngineKind::Classic => {
            Ok(Arc::new(vipavatar_pipeline::classic::ClassicEngine::with_checkpoints(&config.checkpoints, device)?))
        }
        EngineKind::Sadtalker => {
            Ok(Arc::new(vipavatar_pipeline::sadtalker::engine::SadTalkerEngine::load(&config.checkpoints, device)?))
        }
    }
}

/// The engine a one-shot command uses: the fixed choice, or for `auto` sadtalker when it loads,
/// else classic.
pub fn engine_for(choice: EngineChoice, config: &Config) -> Result<Arc<dyn Engine>, PipelineError> {
    let device = first_device(config)?;
    match choice.fixed() {
        Some(kind) => load_engine(kind, config, device),
        None => load_engine(EngineKind::Sadtalker, config, device)
            .or_else(|_| load_engine(EngineKind::Classic, config, device)),
    }
}

/// The first configured device (one-shot commands and API-only option checks use one set).
pub fn first_device(config: &Config) -> Result<tch::Device, PipelineError> {
    let devices = vipavatar_pipeline::device::select_devices(&config.device)?;
    Ok(devices.first().copied().unwrap_or(tch::Device::Cpu))
}

/// Loading state shared by the API and the workers: `None` while loading.
pub type EngineState = Option<Result<Arc<Engines>, String>>;

/// Start loading on a blocking thread; the receiver sees the result when it is ready.
pub fn load_in_background(config: Config) -> watch::Receiver<EngineState> {
    let (tx, rx) = watch::channel(None);
    std::thread::Builder::new()
        .name("load-models".into())
        .spawn(move || {
            let result = first_device(&config).and_then(|d| Engines::load(&config, d)).map(Arc::new).map_err(|e| {
                tracing::error!(error = %e, "loading the models failed");
                e.to_string()
            });
            let _ = tx.send(Some(result));
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::error!(error = %e, "could not start the model loading thread"));
    rx
}

/// The engines if loaded, else a 503 saying why.
pub fn loaded(rx: &watch::Receiver<EngineState>) -> Result<Arc<Engines>, ApiError> {
    match &*rx.borrow() {
        Some(Ok(e)) => Ok(e.clone()),
        Some(Err(why)) => Err(ApiError::new(Code::NotReady, format!("models failed to load: {why}")).retry_after(60)),
        None => Err(ApiError::new(Code::NotReady, "models are still loading").retry_after(5)),
    }
}
