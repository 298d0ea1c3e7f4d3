//! The ported networks request exactly the official checkpoint layout (official_layout.json:
//! every key and shape of SadTalker_V0.0.2_256.safetensors under `audio2exp.`, `audio2pose.`,
//! `face_3drecon.`), the loader upcasts fp16 bit-exactly and rejects missing / mismatched /
//! unexpected keys with one error naming the file and the key, and the checkpoint-directory
//! status check used by `engine=auto`.

use crate::sadtalker_common::{fixture_dir, official_layout};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use vipavatar_pipeline::sadtalker::audio2exp::Audio2Exp;
use vipavatar_pipeline::sadtalker::audio2pose::{training_only_layout, Audio2Pose};
use vipavatar_pipeline::sadtalker::paths::{sadtalker_checkpoints_status, CHECKPOINT_256, PREFIX_TENSORS};
use vipavatar_pipeline::sadtalker::recon::FaceRecon;
use vipavatar_pipeline::sadtalker::weights::load_prefix;

/// (key, shape, dtype) requested by a module, and (key, shape) of accepted training-only keys.
type Requested = (Vec<(String, Vec<i64>, String)>, Vec<(String, Vec<i64>)>);

/// What the module of `prefix` requests, plus the accepted training-only keys.
fn requested(prefix: &str) -> Requested {
    let vs = match prefix {
        "audio2exp" => Audio2Exp::new(Device::Cpu).var_store().variables(),
        "audio2pose" => Audio2Pose::new(Device::Cpu).var_store().variables(),
        _ => FaceRecon::new(Device::Cpu).var_store().variables(),
    };
    let used = vs
        .into_iter()
        .map(|(k, t)| {
            let dtype = if t.kind() == Kind::Int64 { "I64" } else { "F32" };
            (format!("{prefix}.{k}"), t.size(), dtype.to_string())
        })
        .collect();
    let unused = if prefix == "audio2pose" {
        training_only_layout().into_iter().map(|s| (format!("{prefix}.{}", s.name), s.shape)).collect()
    } else {
        Vec::new()
    };
    (used, unused)
}

#[test]
fn sadtalker_layout_modules_request_exactly_the_official_keys() {
    let Some(dir) = fixture_dir() else { return };
    let layout = official_layout(&dir, CHECKPOINT_256);
    for (prefix, count) in PREFIX_TENSORS {
        let official: BTreeMap<&String, &(Vec<i64>, String)> =
            layout.iter().filter(|(k, _)| k.starts_with(&format!("{prefix}."))).collect();
        assert_eq!(official.len(), count, "{prefix}: official tensor count");
        if prefix == "kp_extractor" || prefix == "generator" {
            continue; // the renderer is ported elsewhere
        }
        let (used, unused) = requested(prefix);
        let mut seen = BTreeMap::new();
        for (key, shape, dtype) in &used {
            let official_entry =
                official.get(key).unwrap_or_else(|| panic!("{key} is requested but not in the official layout"));
            assert_eq!(&official_entry.0, shape, "{key}: shape");
            assert_eq!(&official_entry.1, dtype, "{key}: dtype");
            assert!(seen.insert(key.clone(), "used").is_none());
        }
        for (key, shape) in &unused {
            let official_entry =
                official.get(key).unwrap_or_else(|| panic!("{key} is accepted but not in the official layout"));
            assert_eq!(&official_entry.0, shape, "{key}: shape");
            assert!(seen.insert(key.clone(), "unused").is_none(), "{key} both used and unused");
        }
        let missing: Vec<&&String> = official.keys().filter(|k| !seen.contains_key(**k)).collect();
        assert!(missing.is_empty(), "{prefix}: official keys the port neither loads nor accepts: {missing:?}");
        if !unused.is_empty() {
            assert!(unused
                .iter()
                .all(|(k, _)| k.starts_with("audio2pose.netG.encoder.") || k.starts_with("audio2pose.netD_motion.")));
        }
        eprintln!(
            "sadtalker layout {prefix}: {count} official keys = {} loaded + {} training-only (validated, not kept)",
            used.len(),
            unused.len()
        );
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);
impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vipavatar-sadtalker-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_all(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).expect("read safetensors")
}

fn write(path: &Path, tensors: &[(String, Tensor)]) {
    Tensor::write_safetensors(tensors, path).expect("write safetensors");
}

#[test]
fn sadtalker_loader_upcasts_fp16_exactly_and_ignores_other_prefixes() {
    let Some(dir) = fixture_dir() else { return };
    let scratch = Scratch::new("combined");
    // An "official-like" file: two networks plus a renderer key the loader must ignore.
    let mut tensors = read_all(&dir.join("audio2exp.weights.safetensors"));
    tensors.extend(read_all(&dir.join("face3d_recon.weights.safetensors")));
    tensors.push(("generator.first.conv.weight".into(), Tensor::ones([2, 2], (Kind::Half, Device::Cpu))));
    let combined = scratch.0.join("combined.safetensors");
    write(&combined, &tensors);
    let model = Audio2Exp::from_checkpoint(&combined, Device::Cpu).expect("load from a multi-prefix file");
    let stored: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let mut subnormals = 0i64;
    for (name, var) in model.var_store().variables() {
        let raw = &stored[&format!("audio2exp.{name}")];
        if raw.kind() == Kind::Half {
            let up = raw.to_kind(Kind::Float);
            let tiny = up.abs().lt(6.103_515_6e-5).logical_and(&up.ne(0.0));
            subnormals += i64::try_from(tiny.sum(Kind::Int64)).unwrap();
            assert!(var.equal(&up), "{name}: loaded values differ from the fp16 upcast");
        } else {
            assert!(var.to_kind(raw.kind()).equal(raw), "{name}");
        }
        assert_eq!(var.kind(), if name.ends_with("num_batches_tracked") { Kind::Int64 } else { Kind::Float });
    }
    eprintln!("sadtalker loader: audio2exp loaded bit-exactly, {subnormals} fp16 subnormals kept");
    assert!(subnormals > 0, "the fixture is documented to contain fp16 subnormals");
}

fn expect_checkpoint_error(result: vipavatar_pipeline::Result<()>, file: &Path, needle: &str) {
    let err = result.expect_err("loading must fail");
    let msg = err.to_string();
    assert_eq!(err.code(), "checkpoint_error", "{msg}");
    assert!(msg.contains(&file.display().to_string()), "error must name the file: {msg}");
    assert!(msg.contains(needle), "error must mention `{needle}`: {msg}");
}

#[test]
fn sadtalker_loader_rejects_broken_checkpoints_with_one_clear_error() {
    let Some(dir) = fixture_dir() else { return };
    let scratch = Scratch::new("broken");
    let original = read_all(&dir.join("audio2exp.weights.safetensors"));
    let exp = Audio2Exp::new(Device::Cpu);
    let load_exp = |p: &Path| load_prefix(exp.var_store(), p, "audio2exp", &[]);

    let missing = scratch.0.join("missing_key.safetensors");
    write(
        &missing,
        &original
            .iter()
            .filter(|(k, _)| k != "audio2exp.mapping1.bias")
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect::<Vec<_>>(),
    );
    expect_checkpoint_error(load_exp(&missing), &missing, "missing key `audio2exp.mapping1.bias`");

    let reshaped = scratch.0.join("wrong_shape.safetensors");
    let mut bad: Vec<(String, Tensor)> = original.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    for (k, t) in bad.iter_mut() {
        if k == "audio2exp.mapping1.weight" {
            *t = t.narrow(1, 0, 576).contiguous();
        }
    }
    write(&reshaped, &bad);
    expect_checkpoint_error(
        load_exp(&reshaped),
        &reshaped,
        "`audio2exp.mapping1.weight` has shape [64, 576], expected [64, 577]",
    );

    let extra = scratch.0.join("extra_key.safetensors");
    let mut more: Vec<(String, Tensor)> = original.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    more.push(("audio2exp.mapping2.weight".into(), Tensor::zeros([3], (Kind::Half, Device::Cpu))));
    write(&extra, &more);
    expect_checkpoint_error(load_exp(&extra), &extra, "unexpected key `audio2exp.mapping2.weight`");

    let other = dir.join("face3d_recon.weights.safetensors");
    expect_checkpoint_error(load_exp(&other), &other, "no tensor with the prefix `audio2exp.`");

    let absent = scratch.0.join("absent.safetensors");
    expect_checkpoint_error(load_exp(&absent), &absent, "cannot open");

    let truncated = scratch.0.join("truncated.safetensors");
    let bytes = std::fs::read(dir.join("audio2exp.weights.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    expect_checkpoint_error(load_exp(&truncated), &truncated, "truncated");

    // audio2pose: the training-only keys are validated too.
    let pose_file = scratch.0.join("pose_bad_disc.safetensors");
    let pose: Vec<(String, Tensor)> = read_all(&dir.join("audio2pose.weights.safetensors"))
        .into_iter()
        .map(|(k, t)| {
            if k == "audio2pose.netD_motion.seq.3.weight" {
                (k, Tensor::zeros([1, 1024, 2], (Kind::Half, Device::Cpu)))
            } else {
                (k, t)
            }
        })
        .collect();
    write(&pose_file, &pose);
    let err = Audio2Pose::from_checkpoint(&pose_file, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("audio2pose.netD_motion.seq.3.weight") && err.contains("[1, 1024, 3]"), "{err}");
}

#[test]
fn sadtalker_checkpoints_status_reports_what_is_missing() {
    let scratch = Scratch::new("status");
    let err = sadtalker_checkpoints_status(&scratch.0.join("nope")).unwrap_err();
    assert_eq!(err.code(), "checkpoint_error");
    let err = sadtalker_checkpoints_status(&scratch.0).unwrap_err().to_string();
    assert!(err.contains(CHECKPOINT_256), "{err}");

    // A file with every official prefix at its tensor count (tiny tensors) passes the header check.
    let file = scratch.0.join(CHECKPOINT_256);
    let mut tensors = Vec::new();
    for (prefix, count) in PREFIX_TENSORS {
        for i in 0..count {
            tensors.push((format!("{prefix}.t{i}"), Tensor::zeros([1], (Kind::Half, Device::Cpu))));
        }
    }
    write(&file, &tensors);
    let paths = sadtalker_checkpoints_status(&scratch.0).expect("status ok");
    assert_eq!(paths.checkpoint_256.as_deref(), Some(file.as_path()));
    assert!(paths.checkpoint_512.is_none() && paths.mapping_crop.is_none());
    assert_eq!(paths.checkpoint_for_size(512).unwrap_err().code(), "unsupported_option");

    // One tensor short under `audio2pose.`: named in the error.
    tensors.retain(|(k, _)| k != "audio2pose.t0");
    write(&file, &tensors);
    let err = sadtalker_checkpoints_status(&scratch.0).unwrap_err().to_string();
    assert!(err.contains("audio2pose") && err.contains("418") && err.contains(CHECKPOINT_256), "{err}");
}
