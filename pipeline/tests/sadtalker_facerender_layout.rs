//! The renderer modules built at full size from SadTalker's `facerender.yaml` /
//! `facerender_still.yaml` values request exactly the official checkpoint layout
//! (official_layout.json: every `kp_extractor.` / `generator.` key of
//! SadTalker_V0.0.2_256.safetensors and every key of both mapping pickles, names and shapes, both
//! ways); the YAML reader yields those configs; loading mismatched weights is a typed error; the
//! mapping net loads from `torch.save` pickles.

use crate::common;

use tch::nn::VarStore;
use tch::{Device, Kind};
use vipavatar_pipeline::sadtalker::facerender::mapping::{load_mapping_pickle, MappingNet};
use vipavatar_pipeline::sadtalker::facerender::{
    FaceRenderConfig, FaceRenderer, MappingWeights, RenderSettings, RendererWeights,
};
use vipavatar_pipeline::PipelineError;

/// SadTalker's `src/config/facerender.yaml` model parameters (the values the port is built from).
const FACERENDER_YAML: &str = "
model_params:
  common_params:
    num_kp: 15
    image_channel: 3
    feature_channel: 32
    estimate_jacobian: False   # True
  kp_detector_params:
     temperature: 0.1
     block_expansion: 32
     max_features: 1024
     scale_factor: 0.25         # 0.25
     num_blocks: 5
     reshape_channel: 16384  # 16384 = 1024 * 16
     reshape_depth: 16
  he_estimator_params:
     block_expansion: 64
     max_features: 2048
     num_bins: 66
  generator_params:
    block_expansion: 64
    max_features: 512
    num_down_blocks: 2
    reshape_channel: 32
    reshape_depth: 16         # 512 = 32 * 16
    num_resblocks: 6
    estimate_occlusion_map: True
    dense_motion_params:
      block_expansion: 32
      max_features: 1024
      num_blocks: 5
      reshape_depth: 16
      compress: 4
  discriminator_params:
    scales: [1]
    block_expansion: 32
    max_features: 512
    num_blocks: 4
    sn: True
  mapping_params:
      coeff_nc: 70
      descriptor_nc: 1024
      layer: 3
      num_kp: 15
      num_bins: 66
";

use crate::sadtalker_common::{self, official_layout as official, Layout};

fn requested(vs: &VarStore, prefix: &str) -> Layout {
    vs.variables()
        .into_iter()
        .map(|(k, t)| {
            let dtype = if t.kind() == Kind::Int64 { "I64" } else { "F32" };
            (format!("{prefix}{k}"), (t.size(), dtype.to_string()))
        })
        .collect()
}

/// Both directions: every requested key is official with the same shape/dtype and vice versa.
fn assert_same(what: &str, ours: &Layout, official: &Layout) {
    for (k, v) in ours {
        assert_eq!(official.get(k), Some(v), "{what}: requested `{k}` {v:?} is not in the official layout as such");
    }
    for (k, v) in official {
        assert_eq!(ours.get(k), Some(v), "{what}: official `{k}` {v:?} is not requested");
    }
    eprintln!("sadtalker facerender layout {what}: {} keys match", ours.len());
}

#[test]
fn sadtalker_facerender_yaml_values_give_the_official_config() {
    let parsed = FaceRenderConfig::from_yaml_str(FACERENDER_YAML).expect("facerender.yaml");
    assert_eq!(parsed, FaceRenderConfig::official(70));
    let still = FACERENDER_YAML.replace("coeff_nc: 70", "coeff_nc: 73");
    assert_eq!(FaceRenderConfig::from_yaml_str(&still).unwrap(), FaceRenderConfig::official(73));
    // A flow map is read as YAML (serde_yaml), not misread; text that is not YAML is a typed error.
    let flow = FACERENDER_YAML.replace("scales: [1]", "scales: {a: 1}");
    assert_eq!(FaceRenderConfig::from_yaml_str(&flow).unwrap(), FaceRenderConfig::official(70));
    let broken = FACERENDER_YAML.replace("scales: [1]", "scales: {a: 1");
    // An unreadable renderer YAML is a server configuration mistake, not a request error.
    assert!(matches!(FaceRenderConfig::from_yaml_str(&broken), Err(PipelineError::Config { .. })));
    // Inconsistent widths and unsupported options are typed errors.
    let bad = FACERENDER_YAML.replace("reshape_channel: 32", "reshape_channel: 31");
    assert!(FaceRenderConfig::from_yaml_str(&bad).is_err());
    let jac = FACERENDER_YAML.replace("estimate_jacobian: False", "estimate_jacobian: True");
    let err = FaceRenderConfig::from_yaml_str(&jac).unwrap_err();
    assert!(err.to_string().contains("estimate_jacobian"), "{err}");
    assert!(FaceRenderConfig::from_yaml_str(&FACERENDER_YAML.replace("num_kp: 15\n    image", "num_kp: x\n    image"))
        .is_err());

    let Some(dir) = sadtalker_common::fixture_dir() else { return };
    let small = FaceRenderConfig::from_yaml_file(&dir.join("facerender_small.yaml")).expect("small yaml");
    assert_eq!((small.decoder.ic, small.decoder.oc, small.decoder.label_nc), (8, 4, 8));
    assert_eq!(small.generator.dense_motion.compress, 2);
    assert_eq!(small.mapping.descriptor_nc, 64);
}

#[test]
fn sadtalker_facerender_full_size_modules_request_the_official_keys() {
    let Some(dir) = sadtalker_common::fixture_dir() else { return };
    let config = FaceRenderConfig::from_yaml_str(FACERENDER_YAML).unwrap();
    let renderer = FaceRenderer::new(&config, &RenderSettings::default()).expect("full-size renderer");
    let [kp_vs, gen_vs, _] = renderer.var_stores();
    let layout = official(&dir, "SadTalker_V0.0.2_256.safetensors");
    for (prefix, vs) in [("kp_extractor.", kp_vs), ("generator.", gen_vs)] {
        let official: Layout =
            layout.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert!(!official.is_empty());
        assert_same(prefix, &requested(vs, prefix), &official);
    }
    drop(renderer);
    for (file, coeff_nc) in [("mapping_00229-model.pth.tar", 70), ("mapping_00109-model.pth.tar", 73)] {
        let vs = VarStore::new(Device::Cpu);
        let _net = MappingNet::new(&vs.root(), &config.clone().with_coeff_nc(coeff_nc).mapping);
        assert_same(file, &requested(&vs, ""), &official(&dir, file));
    }
}

#[test]
fn sadtalker_facerender_mismatched_weights_are_checkpoint_errors() {
    let Some(dir) = sadtalker_common::fixture_dir() else { return };
    let weights = dir.join("facerender.weights.safetensors");
    // Full-size modules against the reduced fixture weights: shape mismatch, named.
    let files = RendererWeights {
        checkpoint: &weights,
        mapping: MappingWeights::Safetensors { path: &weights, prefix: "mapping" },
    };
    let err = FaceRenderer::load(&FaceRenderConfig::official(70), &files, &RenderSettings::default()).unwrap_err();
    assert!(matches!(err, PipelineError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("kp_extractor."), "{err}");
    // A safetensors file without the mapping prefix.
    let small = FaceRenderConfig::from_yaml_file(&dir.join("facerender_small.yaml")).unwrap();
    let no_mapping = RendererWeights {
        checkpoint: &weights,
        mapping: MappingWeights::Safetensors { path: &weights, prefix: "mappingx" },
    };
    assert!(matches!(
        FaceRenderer::load(&small, &no_mapping, &RenderSettings::default()),
        Err(PipelineError::Checkpoint { .. })
    ));
    // A file that is not a torch pickle.
    let vs = VarStore::new(Device::Cpu);
    let _net = MappingNet::new(&vs.root(), &small.mapping);
    assert!(matches!(
        load_mapping_pickle(&vs, &dir.join("facerender_small.yaml")),
        Err(PipelineError::Checkpoint { .. })
    ));
}

/// Loads the official mapping pickles when they are in checkpoints/ (and a pickle named by
/// `VIPAVATAR_MAPPING_PICKLE`, coeff_nc from `VIPAVATAR_MAPPING_COEFF_NC`, descriptor width from
/// `VIPAVATAR_MAPPING_DESCRIPTOR_NC`), checking the mapping net's outputs are finite.
#[test]
fn sadtalker_facerender_mapping_pickles_load() {
    let mut files: Vec<(std::path::PathBuf, i64, i64)> = Vec::new();
    let ck = common::workspace().join("checkpoints");
    for (name, nc) in [("mapping_00229-model.pth.tar", 70), ("mapping_00109-model.pth.tar", 73)] {
        if ck.join(name).is_file() {
            files.push((ck.join(name), nc, 1024));
        }
    }
    if let Ok(path) = std::env::var("VIPAVATAR_MAPPING_PICKLE") {
        let env_i64 = |k: &str, d: i64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        files.push((
            path.into(),
            env_i64("VIPAVATAR_MAPPING_COEFF_NC", 70),
            env_i64("VIPAVATAR_MAPPING_DESCRIPTOR_NC", 1024),
        ));
    }
    if files.is_empty() {
        eprintln!("skipped: no mapping pickle in {} (and VIPAVATAR_MAPPING_PICKLE unset)", ck.display());
        return;
    }
    for (path, coeff_nc, descriptor_nc) in files {
        let mut config = FaceRenderConfig::official(coeff_nc).mapping;
        config.descriptor_nc = descriptor_nc;
        let vs = VarStore::new(Device::Cpu);
        let net = MappingNet::new(&vs.root(), &config);
        load_mapping_pickle(&vs, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let windows = tch::Tensor::ones([2, coeff_nc, 27], (Kind::Float, Device::Cpu)) * 0.1;
        let out = tch::no_grad(|| net.forward(&windows));
        assert_eq!(out.yaw.size(), [2, 66]);
        assert!(out.exp.isfinite().all().int64_value(&[]) == 1);
        let sum: f64 = vs.variables().values().map(|t| t.abs().sum(Kind::Double).double_value(&[])).sum();
        assert!(sum > 0.0, "{}: weights still zero after loading", path.display());
        eprintln!("sadtalker facerender: loaded {} (yaw[0,0] = {:.5})", path.display(), out.yaw.double_value(&[0, 0]));
    }
}
