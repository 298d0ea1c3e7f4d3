//! Loading a GFPGAN checkpoint: a `torch.save` pickle (the official `GFPGANv1.4.pth`) whose
//! state dict sits under `params_ema` (or `params`). Every key and shape of the architecture is
//! checked both ways (like the reference's `load_state_dict(strict=True)`); the first problems
//! are reported in one [`PipelineError::Checkpoint`] naming the file and the keys.

use super::config::GfpganConfig;
use super::network::GfpganNet;
use crate::{PipelineError, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// File name of the official weights inside the checkpoints directory.
pub const GFPGAN_V1_4_FILE: &str = "GFPGANv1.4.pth";

/// Dict keys that may hold the state dict, in the order the reference tries them.
const STATE_KEYS: [&str; 2] = ["params_ema", "params"];

/// A [`PipelineError::Checkpoint`] naming `path`.
pub(super) fn err(path: &Path, reason: impl Into<String>) -> PipelineError {
    PipelineError::Checkpoint { file: path.display().to_string(), reason: reason.into() }
}

/// `(name, shape)` of every tensor the architecture `cfg` needs, sorted by name (the official
/// layout when `cfg` is [`GfpganConfig::v1_4`]).
pub fn expected_layout(cfg: &GfpganConfig) -> Result<Vec<(String, Vec<i64>)>> {
    Ok(layout_of(GfpganNet::build(cfg, Device::Cpu)?.var_store()))
}

/// `(name, shape)` of every variable of `vs`, sorted by name.
pub(super) fn layout_of(vs: &VarStore) -> Vec<(String, Vec<i64>)> {
    let mut keys: Vec<(String, Vec<i64>)> = vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect();
    keys.sort();
    keys
}

/// Select the state dict of a loaded pickle: tensors named `params_ema.<key>` (else `params.`).
fn select_state(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<BTreeMap<String, Tensor>> {
    for prefix in STATE_KEYS {
        let dotted = format!("{prefix}.");
        if tensors.iter().any(|(k, _)| k.starts_with(&dotted)) {
            return Ok(tensors
                .into_iter()
                .filter_map(|(k, t)| k.strip_prefix(&dotted).map(|s| (s.to_string(), t)))
                .collect());
        }
    }
    Err(err(path, "no `params_ema` (or `params`) state dict in the file (is this a GFPGAN checkpoint?)"))
}

/// Load the network `cfg` from `path` onto `device`.
pub fn load_network(path: &Path, cfg: &GfpganConfig, device: Device) -> Result<GfpganNet> {
    if !path.is_file() {
        return Err(err(path, "file not found (place the GFPGAN weights in the checkpoints directory)"));
    }
    let state = select_state(path, crate::torch_pickle::load(path)?)?;
    let net = GfpganNet::build(cfg, device)?;
    let tensors = fill_var_store(path, net.var_store(), &state, "params_ema.")?;
    tracing::debug!(file = %path.display(), tensors, "loaded gfpgan weights");
    Ok(net)
}

/// Check `state` against every variable of `vs` both ways (like `load_state_dict(strict=True)`):
/// a missing or unexpected key, another shape, or an integer where a float belongs (and the
/// reverse) is reported, the first six problems in one [`PipelineError::Checkpoint`] naming
/// `path` and the keys as the file spells them (`prefix` + name). Then copy each tensor in,
/// converted to its variable's kind and device. Returns the number of tensors.
pub(crate) fn fill_var_store(
    path: &Path,
    vs: &VarStore,
    state: &BTreeMap<String, Tensor>,
    prefix: &str,
) -> Result<usize> {
    let variables = vs.variables();
    let mut problems = Vec::new();
    for (name, var) in variables.iter().collect::<BTreeMap<_, _>>() {
        match state.get(name) {
            None => problems.push(format!("missing key `{prefix}{name}` (expected shape {:?})", var.size())),
            Some(t) if t.size() != var.size() => {
                problems.push(format!("key `{prefix}{name}` has shape {:?}, expected {:?}", t.size(), var.size()))
            }
            Some(t) if t.is_floating_point() != var.is_floating_point() => {
                problems.push(format!("key `{prefix}{name}` has dtype {:?}, expected {:?}", t.kind(), var.kind()))
            }
            Some(_) => {}
        }
    }
    for name in state.keys().filter(|k| !variables.contains_key(*k)) {
        problems.push(format!("unexpected key `{prefix}{name}`"));
    }
    if !problems.is_empty() {
        let more = problems.len().saturating_sub(6);
        let tail = if more > 0 { format!(" (and {more} more problems)") } else { String::new() };
        return Err(err(path, format!("{}{tail}", problems[..problems.len().min(6)].join("; "))));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &variables {
            let converted = state[name]
                .f_to_kind(var.kind())
                .and_then(|t| t.f_to_device(vs.device()))
                .map_err(|e| err(path, format!("key `{name}`: {e}")))?;
            var.shallow_clone().f_copy_(&converted).map_err(|e| err(path, format!("key `{name}`: {e}")))?;
        }
        Ok(())
    })?;
    Ok(variables.len())
}
