//! Reading SadTalker weights from `.safetensors` files into tch `VarStore`s: header parsing (the
//! `safetensors` crate's header types), prefix selection (`audio2exp.`, `audio2pose.`,
//! `face_3drecon.` ...), fp16/bf16 -> fp32 upcast and strict name + shape validation with one
//! [`PipelineError::Checkpoint`] per file.
//!
//! Only the byte ranges of the selected prefix are read, so loading one network from the
//! 700 MB official checkpoint does not pull the renderer's weights into memory.

use crate::{PipelineError, Result};
use safetensors::tensor::Metadata;
use safetensors::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// Largest header we accept (the official checkpoint's header is ~150 kB).
const MAX_HEADER_BYTES: u64 = 64 * 1024 * 1024;

/// Expected name and shape of a stored tensor that inference does not use but the file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub name: String,
    pub shape: Vec<i64>,
}

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub dtype: Dtype,
    pub shape: Vec<i64>,
    pub start: u64,
    pub end: u64,
}

/// The parsed header of a safetensors file (no tensor data is read).
#[derive(Debug, Clone)]
pub struct SafetensorsIndex {
    path: PathBuf,
    data_start: u64,
    entries: BTreeMap<String, TensorEntry>,
}

fn checkpoint_err(path: &Path, reason: impl Into<String>) -> PipelineError {
    PipelineError::Checkpoint { file: path.display().to_string(), reason: reason.into() }
}

fn dtype_kind(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn is_float_dtype(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

impl SafetensorsIndex {
    /// Parse the header (into the `safetensors` crate's header type) and check that every
    /// tensor's byte range is consistent and inside the file (a truncated download fails here).
    /// Only the header is read: the crate's own `read_metadata` wants the whole file in memory.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| checkpoint_err(path, format!("cannot open: {e}")))?;
        let file_len = file.metadata().map_err(|e| checkpoint_err(path, format!("cannot stat: {e}")))?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|_| checkpoint_err(path, "file is too short to be a safetensors file"))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || header_len + 8 > file_len {
            return Err(checkpoint_err(path, format!("invalid safetensors header length {header_len}")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(|e| checkpoint_err(path, format!("cannot read header: {e}")))?;
        let metadata: Metadata = serde_json::from_slice(&header)
            .map_err(|e| checkpoint_err(path, format!("header is not a valid safetensors header: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut entries = BTreeMap::new();
        for (name, info) in metadata.tensors() {
            let shape = info.shape.iter().map(|&d| i64::try_from(d).ok()).collect::<Option<Vec<i64>>>();
            let shape =
                shape.ok_or_else(|| checkpoint_err(path, format!("malformed header entry for key `{name}`")))?;
            let (start, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            let numel = info.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            let bytes = numel.and_then(|n| n.checked_mul(info.dtype.size() as u64));
            if end < start || Some(end - start) != bytes || end > data_len {
                return Err(checkpoint_err(
                    path,
                    format!("key `{name}`: byte range {start}..{end} does not fit its shape or the file (truncated?)"),
                ));
            }
            entries.insert(name, TensorEntry { dtype: info.dtype, shape, start, end });
        }
        Ok(Self { path: path.to_path_buf(), data_start, entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &BTreeMap<String, TensorEntry> {
        &self.entries
    }

    /// Number of stored tensors whose key starts with `prefix.`.
    pub fn count_with_prefix(&self, prefix: &str) -> usize {
        let dotted = format!("{prefix}.");
        self.entries.keys().filter(|k| k.starts_with(&dotted)).count()
    }

    /// Read one tensor as stored (dtype of the file), on the CPU.
    pub fn read(&self, file: &mut File, name: &str) -> Result<Tensor> {
        let entry =
            self.entries.get(name).ok_or_else(|| checkpoint_err(&self.path, format!("missing key `{name}`")))?;
        let kind = dtype_kind(entry.dtype)
            .ok_or_else(|| checkpoint_err(&self.path, format!("key `{name}`: unsupported dtype {:?}", entry.dtype)))?;
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        file.seek(SeekFrom::Start(self.data_start + entry.start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| checkpoint_err(&self.path, format!("key `{name}`: cannot read data: {e}")))?;
        Tensor::f_from_data_size(&bytes, &entry.shape, kind)
            .map_err(|e| checkpoint_err(&self.path, format!("key `{name}`: {e}")))
    }
}

/// Names and shapes of every variable of a `VarStore`, sorted by name.
pub fn var_store_layout(vs: &VarStore) -> Vec<KeySpec> {
    let mut specs: Vec<KeySpec> =
        vs.variables().into_iter().map(|(name, t)| KeySpec { name, shape: t.size() }).collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    specs
}

/// Copy the tensors stored under `prefix.` into the variables of `vs` (whose names mirror the
/// reference `state_dict()` keys without the prefix). Every variable must be present with the same
/// shape; stored keys not in `vs` are only accepted when listed in `unused` (with the same shape;
/// they may also be absent, inference never reads them).
/// Floating tensors of any precision are converted to the variable's kind (fp16 -> fp32 keeps
/// subnormals); integer variables (`num_batches_tracked`) take any integer dtype.
pub fn load_prefix(vs: &VarStore, path: &Path, prefix: &str, unused: &[KeySpec]) -> Result<()> {
    let index = SafetensorsIndex::open(path)?;
    let dotted = format!("{prefix}.");
    let stored: BTreeMap<&str, &TensorEntry> =
        index.entries.iter().filter_map(|(k, e)| k.strip_prefix(dotted.as_str()).map(|short| (short, e))).collect();
    if stored.is_empty() {
        return Err(checkpoint_err(
            path,
            format!("no tensor with the prefix `{dotted}` (is this a SadTalker checkpoint?)"),
        ));
    }
    let variables = vs.variables();
    let unused: BTreeMap<&str, &KeySpec> = unused.iter().map(|s| (s.name.as_str(), s)).collect();

    let mut problems = Vec::new();
    for (name, var) in variables.iter().collect::<BTreeMap<_, _>>() {
        match stored.get(name.as_str()) {
            None => problems.push(format!("missing key `{dotted}{name}` (expected shape {:?})", var.size())),
            Some(entry) => {
                if entry.shape != var.size() {
                    problems.push(format!(
                        "key `{dotted}{name}` has shape {:?}, expected {:?}",
                        entry.shape,
                        var.size()
                    ));
                } else if is_float_dtype(entry.dtype) != var.is_floating_point() {
                    problems.push(format!(
                        "key `{dotted}{name}` has dtype {:?}, expected {:?}",
                        entry.dtype,
                        var.kind()
                    ));
                }
            }
        }
    }
    let known: BTreeSet<&str> = variables.keys().map(String::as_str).collect();
    for (name, entry) in &stored {
        if known.contains(name) {
            continue;
        }
        match unused.get(name) {
            Some(spec) if spec.shape == entry.shape => {}
            Some(spec) => {
                problems.push(format!("key `{dotted}{name}` has shape {:?}, expected {:?}", entry.shape, spec.shape))
            }
            None => problems.push(format!("unexpected key `{dotted}{name}`")),
        }
    }
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(6).map(String::as_str).collect();
        let more = problems.len().saturating_sub(shown.len());
        let tail = if more > 0 { format!(" (and {more} more problems)") } else { String::new() };
        return Err(checkpoint_err(path, format!("{}{tail}", shown.join("; "))));
    }

    let mut file = File::open(path).map_err(|e| checkpoint_err(path, format!("cannot open: {e}")))?;
    tch::no_grad(|| -> Result<()> {
        for (name, var) in variables.iter().collect::<BTreeMap<_, _>>() {
            let full = format!("{dotted}{name}");
            let stored = index.read(&mut file, &full)?;
            let converted =
                stored.f_to_kind(var.kind()).map_err(|e| checkpoint_err(path, format!("key `{full}`: {e}")))?;
            let mut target = var.shallow_clone();
            target.f_copy_(&converted).map_err(|e| checkpoint_err(path, format!("key `{full}`: {e}")))?;
        }
        Ok(())
    })?;
    tracing::debug!(file = %path.display(), prefix, tensors = variables.len(), "loaded weights");
    Ok(())
}
