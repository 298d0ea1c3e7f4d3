//! The shape of a GFPGANv1Clean network: the official v1.4 values and the reduced widths the
//! parity fixtures use, with the channel table the reference derives from them.

use crate::{PipelineError, Result};

/// Architecture parameters of `GFPGANv1Clean` (names as in the reference constructor).
#[derive(Debug, Clone, PartialEq)]
pub struct GfpganConfig {
    /// Side of the square input and output face (512 for v1.4).
    pub out_size: i64,
    /// Width of a style vector (512).
    pub num_style_feat: i64,
    /// StyleGAN2 channel multiplier (2).
    pub channel_multiplier: i64,
    /// Layers of the decoder's style MLP (8; stored in the file, unused when `input_is_latent`).
    pub num_mlp: i64,
    /// Channel width ratio (1 for the official weights; fixtures use 1/16).
    pub narrow: f64,
    /// SFT modulates only the second half of the decoder channels.
    pub sft_half: bool,
    /// One style vector per decoder layer (the encoder's linear head emits `num_latent` codes).
    pub different_w: bool,
    /// The encoder's codes are used as W latents directly (no style MLP).
    pub input_is_latent: bool,
}

impl GfpganConfig {
    /// GFPGAN v1.4 as `GFPGANer(arch='clean', channel_multiplier=2)` builds it.
    pub fn v1_4() -> Self {
        Self {
            out_size: 512,
            num_style_feat: 512,
            channel_multiplier: 2,
            num_mlp: 8,
            narrow: 1.0,
            sft_half: true,
            different_w: true,
            input_is_latent: true,
        }
    }

    /// Check the values the network code relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(PipelineError::InvalidOption { field: "gfpgan config", reason });
        if self.out_size < 8 || self.out_size > 1024 || self.out_size & (self.out_size - 1) != 0 {
            return bad(format!("out_size {} must be a power of two in 8..=1024", self.out_size));
        }
        if !(self.narrow > 0.0 && self.narrow <= 1.0) || self.num_style_feat < 1 || self.channel_multiplier < 1 {
            return bad(format!(
                "narrow {} / num_style_feat {} / channel_multiplier {}",
                self.narrow, self.num_style_feat, self.channel_multiplier
            ));
        }
        for level in 2..=self.log_size() {
            if self.unet_channels(1 << level) < 1 || self.decoder_channels(1 << level) < 2 {
                return bad(format!("narrow {} leaves no channels at resolution {}", self.narrow, 1 << level));
            }
        }
        Ok(())
    }

    /// log2(out_size).
    pub fn log_size(&self) -> i64 {
        (self.out_size as f64).log2().round() as i64
    }

    /// Number of style-conv layers of the decoder (and of its noise maps).
    pub fn num_layers(&self) -> i64 {
        (self.log_size() - 2) * 2 + 1
    }

    /// Number of W latents the decoder consumes.
    pub fn num_latent(&self) -> i64 {
        self.log_size() * 2 - 2
    }

    /// Decoder (StyleGAN2) channels at `resolution`, truncated like Python's `int()`.
    pub fn decoder_channels(&self, resolution: i64) -> i64 {
        base_channels(resolution, self.channel_multiplier, self.narrow)
    }

    /// Encoder (U-Net) channels at `resolution`: half the decoder's narrow.
    pub fn unet_channels(&self, resolution: i64) -> i64 {
        base_channels(resolution, self.channel_multiplier, self.narrow * 0.5)
    }

    /// Side of the noise map of decoder layer `layer` (`2^((layer + 5) / 2)`).
    pub fn noise_size(layer: i64) -> i64 {
        1 << ((layer + 5) / 2)
    }
}

fn base_channels(resolution: i64, multiplier: i64, narrow: f64) -> i64 {
    let base = match resolution {
        4 | 8 | 16 | 32 => 512.0,
        64 => 256.0 * multiplier as f64,
        128 => 128.0 * multiplier as f64,
        256 => 64.0 * multiplier as f64,
        512 => 32.0 * multiplier as f64,
        _ => 16.0 * multiplier as f64,
    };
    (base * narrow) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_channel_table() {
        let c = GfpganConfig::v1_4();
        c.validate().unwrap();
        assert_eq!([4, 64, 128, 256, 512].map(|r| c.decoder_channels(r)), [512, 512, 256, 128, 64]);
        assert_eq!([4, 64, 512].map(|r| c.unet_channels(r)), [256, 256, 32]);
        assert_eq!((c.num_layers(), c.num_latent()), (15, 16));
        assert_eq!(GfpganConfig::noise_size(0), 4);
        assert_eq!(GfpganConfig::noise_size(14), 512);
        assert!(GfpganConfig { out_size: 500, ..c }.validate().is_err());
    }
}
