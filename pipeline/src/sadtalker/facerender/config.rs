//! The renderer's architecture hyper-parameters, read from SadTalker's own YAML configs
//! (`model_params` of `facerender.yaml` / `facerender_still.yaml`, or the fixtures' reduced
//! `facerender_small.yaml`, with `serde_yaml`) or built in ([`FaceRenderConfig::official`]).
//! Every layer width of the ported modules is derived from these values; nothing else is
//! hard-coded.

use crate::{PipelineError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `model_params.common_params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommonConfig {
    pub num_kp: i64,
    pub image_channel: i64,
    pub feature_channel: i64,
    pub estimate_jacobian: bool,
}

/// `model_params.kp_detector_params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KpDetectorConfig {
    pub temperature: f64,
    pub block_expansion: i64,
    pub max_features: i64,
    pub scale_factor: f64,
    pub num_blocks: i64,
    pub reshape_channel: i64,
    pub reshape_depth: i64,
}

/// `model_params.generator_params.dense_motion_params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseMotionConfig {
    pub block_expansion: i64,
    pub max_features: i64,
    pub num_blocks: i64,
    pub reshape_depth: i64,
    pub compress: i64,
}

/// `model_params.generator_params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    pub block_expansion: i64,
    pub max_features: i64,
    pub num_down_blocks: i64,
    pub reshape_channel: i64,
    pub reshape_depth: i64,
    pub num_resblocks: i64,
    pub estimate_occlusion_map: bool,
    #[serde(alias = "dense_motion_params")]
    pub dense_motion: DenseMotionConfig,
}

/// Widths of the SPADE decoder. The reference class hard-codes ic 256, oc 64, label_nc 256;
/// the fixture config overrides them (`fixture_spade_decoder`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpadeDecoderConfig {
    pub ic: i64,
    pub oc: i64,
    pub label_nc: i64,
    /// Hidden width of every SPADE `mlp_shared` (128 in the reference).
    pub nhidden: i64,
}

impl Default for SpadeDecoderConfig {
    fn default() -> Self {
        Self { ic: 256, oc: 64, label_nc: 256, nhidden: 128 }
    }
}

/// `model_params.mapping_params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingConfig {
    pub coeff_nc: i64,
    pub descriptor_nc: i64,
    pub layer: i64,
    pub num_kp: i64,
    pub num_bins: i64,
}

/// Everything needed to build the keypoint detector, mapping net and generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceRenderConfig {
    pub common: CommonConfig,
    pub kp_detector: KpDetectorConfig,
    pub generator: GeneratorConfig,
    pub decoder: SpadeDecoderConfig,
    pub mapping: MappingConfig,
}

fn bad(reason: impl Into<String>) -> PipelineError {
    PipelineError::Config { what: "facerender_config", reason: reason.into() }
}

/// The parts of a SadTalker renderer YAML file the port reads (other sections are ignored).
#[derive(Deserialize)]
struct YamlFile {
    model_params: ModelParams,
    #[serde(default)]
    fixture_spade_decoder: FixtureDecoder,
}

#[derive(Deserialize)]
struct ModelParams {
    common_params: CommonConfig,
    kp_detector_params: KpDetectorConfig,
    generator_params: GeneratorConfig,
    mapping_params: MappingConfig,
}

/// `fixture_spade_decoder`: the reduced fixture's SPADE decoder widths (absent: the reference's).
#[derive(Default, Deserialize)]
struct FixtureDecoder {
    ic: Option<i64>,
    oc: Option<i64>,
    label_nc: Option<i64>,
    #[serde(rename = "norm_G")]
    norm_g: Option<String>,
}

impl FaceRenderConfig {
    /// The official full-size renderer: `facerender.yaml` (`coeff_nc` 70, crop / resize) or
    /// `facerender_still.yaml` (`coeff_nc` 73, full); the two differ only in the mapping input.
    pub fn official(coeff_nc: i64) -> Self {
        Self {
            common: CommonConfig { num_kp: 15, image_channel: 3, feature_channel: 32, estimate_jacobian: false },
            kp_detector: KpDetectorConfig {
                temperature: 0.1,
                block_expansion: 32,
                max_features: 1024,
                scale_factor: 0.25,
                num_blocks: 5,
                reshape_channel: 16384,
                reshape_depth: 16,
            },
            generator: GeneratorConfig {
                block_expansion: 64,
                max_features: 512,
                num_down_blocks: 2,
                reshape_channel: 32,
                reshape_depth: 16,
                num_resblocks: 6,
                estimate_occlusion_map: true,
                dense_motion: DenseMotionConfig {
                    block_expansion: 32,
                    max_features: 1024,
                    num_blocks: 5,
                    reshape_depth: 16,
                    compress: 4,
                },
            },
            decoder: SpadeDecoderConfig::default(),
            mapping: MappingConfig { coeff_nc, descriptor_nc: 1024, layer: 3, num_kp: 15, num_bins: 66 },
        }
    }

    /// Read a SadTalker renderer YAML config file.
    pub fn from_yaml_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| PipelineError::io(format!("reading {}", path.display()), e))?;
        Self::from_yaml_str(&text)
    }

    /// Parse the `model_params` section (and the optional `fixture_spade_decoder` widths).
    pub fn from_yaml_str(text: &str) -> Result<Self> {
        let file: YamlFile = serde_yaml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let (m, d) = (file.model_params, file.fixture_spade_decoder);
        if let Some(norm) = d.norm_g.as_deref() {
            if norm != "spadespectralinstance" {
                return Err(bad(format!("norm_G `{norm}` is not supported (only spadespectralinstance)")));
            }
        }
        let decoder_default = SpadeDecoderConfig::default();
        let config = Self {
            common: m.common_params,
            kp_detector: m.kp_detector_params,
            generator: m.generator_params,
            decoder: SpadeDecoderConfig {
                ic: d.ic.unwrap_or(decoder_default.ic),
                oc: d.oc.unwrap_or(decoder_default.oc),
                label_nc: d.label_nc.unwrap_or(decoder_default.label_nc),
                nhidden: decoder_default.nhidden,
            },
            mapping: m.mapping_params,
        };
        config.validate()?;
        Ok(config)
    }

    /// The same config with another mapping input width (70: crop / resize, 73: full).
    pub fn with_coeff_nc(mut self, coeff_nc: i64) -> Self {
        self.mapping.coeff_nc = coeff_nc;
        self
    }

    /// Reject combinations the port (or the reference) cannot build.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("num_kp", self.common.num_kp),
            ("image_channel", self.common.image_channel),
            ("feature_channel", self.common.feature_channel),
            ("kp_detector.block_expansion", self.kp_detector.block_expansion),
            ("kp_detector.max_features", self.kp_detector.max_features),
            ("kp_detector.num_blocks", self.kp_detector.num_blocks),
            ("kp_detector.reshape_channel", self.kp_detector.reshape_channel),
            ("kp_detector.reshape_depth", self.kp_detector.reshape_depth),
            ("generator.block_expansion", self.generator.block_expansion),
            ("generator.max_features", self.generator.max_features),
            ("generator.num_down_blocks", self.generator.num_down_blocks),
            ("generator.reshape_channel", self.generator.reshape_channel),
            ("generator.reshape_depth", self.generator.reshape_depth),
            ("dense_motion.block_expansion", self.generator.dense_motion.block_expansion),
            ("dense_motion.max_features", self.generator.dense_motion.max_features),
            ("dense_motion.num_blocks", self.generator.dense_motion.num_blocks),
            ("dense_motion.reshape_depth", self.generator.dense_motion.reshape_depth),
            ("dense_motion.compress", self.generator.dense_motion.compress),
            ("decoder.ic", self.decoder.ic),
            ("decoder.oc", self.decoder.oc),
            ("decoder.label_nc", self.decoder.label_nc),
            ("mapping.coeff_nc", self.mapping.coeff_nc),
            ("mapping.descriptor_nc", self.mapping.descriptor_nc),
            ("mapping.num_bins", self.mapping.num_bins),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(bad(format!("`{name}` must be positive, got {v}")));
            }
        }
        for (name, v) in [
            ("kp_detector.num_blocks", self.kp_detector.num_blocks),
            ("generator.num_down_blocks", self.generator.num_down_blocks),
            ("dense_motion.num_blocks", self.generator.dense_motion.num_blocks),
            ("generator.num_resblocks", self.generator.num_resblocks),
            ("mapping.layer", self.mapping.layer),
        ] {
            if !(0..=12).contains(&v) {
                return Err(bad(format!("`{name}` = {v} is outside 0..=12")));
            }
        }
        if self.common.estimate_jacobian {
            return Err(bad("estimate_jacobian = true is not supported (SadTalker's renderer does not use jacobians)"));
        }
        if self.mapping.num_kp != self.common.num_kp {
            return Err(bad("mapping num_kp differs from common num_kp"));
        }
        let kp = &self.kp_detector;
        if kp.reshape_channel % kp.reshape_depth != 0 {
            return Err(bad("kp_detector reshape_channel is not a multiple of reshape_depth"));
        }
        let scale_ok = kp.scale_factor > 0.0 && kp.scale_factor <= 1.0;
        if !scale_ok || kp.temperature.is_nan() || kp.temperature <= 0.0 {
            return Err(bad("kp_detector scale_factor must be in (0, 1] and temperature positive"));
        }
        let g = &self.generator;
        if g.reshape_channel * g.reshape_depth != g.max_features {
            return Err(bad("generator reshape_channel * reshape_depth must equal max_features"));
        }
        if g.reshape_channel != self.common.feature_channel {
            return Err(bad("generator reshape_channel must equal common feature_channel"));
        }
        if g.dense_motion.reshape_depth != g.reshape_depth {
            return Err(bad("dense motion reshape_depth must equal generator reshape_depth"));
        }
        if self.decoder.ic != self.third_out_features() {
            return Err(bad(format!(
                "SPADE decoder ic {} differs from the generator's decoder input width {}",
                self.decoder.ic,
                self.third_out_features()
            )));
        }
        if self.decoder.label_nc != self.decoder.ic {
            return Err(bad("SPADE decoder label_nc must equal its input width (the segmap is the decoder input)"));
        }
        Ok(())
    }

    /// Width of the generator's `third` / `fourth` blocks (the decoder input).
    pub fn third_out_features(&self) -> i64 {
        self.generator.block_expansion * (1 << self.generator.num_down_blocks)
    }
}
