//! Noise injection of the StyleGAN2 decoder, made deterministic.
//!
//! The reference (`GFPGANer.enhance` -> `randomize_noise=True`) draws fresh N(0, 1) maps with
//! the global torch generator on every call, so the same face restores differently each time and a
//! video flickers frame to frame. vipavatar instead takes the maps from an explicit choice:
//! * [`Noise::Seeded`] (what the engines should use): one map per style conv, drawn from a
//!   SplitMix64 stream keyed by the request seed (Box-Muller normals), shared by every frame of
//!   the request: repeatable for a seed, temporally stable, independent of any global generator
//!   (concurrent requests do not interfere).
//! * [`Noise::Stored`]: the `noises.noise{i}` buffers of the checkpoint (the reference's
//!   `randomize_noise=False`); the parity fixtures use this.
//! * [`Noise::Zero`]: no noise.

use super::config::GfpganConfig;
use tch::{Device, Kind, Tensor};

/// Where the decoder's noise maps come from (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    Seeded(u64),
    Stored,
    Zero,
}

/// SplitMix64: a tiny, well-mixed 64-bit generator (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1], 53 bits.
    fn open_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// `n` standard normal draws (Box-Muller, both outputs used).
pub(crate) fn normals(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (rng.open_unit(), rng.open_unit());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

impl Noise {
    /// One (1, 1, r, r) map per style conv on `device`; `stored` are the checkpoint's buffers.
    pub fn maps(&self, stored: &[Tensor], device: Device) -> Vec<Tensor> {
        match self {
            Noise::Stored => stored.iter().map(|t| t.to_device(device)).collect(),
            Noise::Zero => stored.iter().map(|t| Tensor::zeros(t.size(), (Kind::Float, device))).collect(),
            Noise::Seeded(seed) => {
                let mut rng = SplitMix64(*seed ^ 0x6766_7067_616E_0014); // "gfpgan" tag
                (0..stored.len() as i64)
                    .map(|layer| {
                        let r = GfpganConfig::noise_size(layer);
                        let v = normals(&mut rng, (r * r) as usize);
                        Tensor::from_slice(&v).view([1, 1, r, r]).to_device(device)
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_repeatable_and_standard_normal() {
        let stored: Vec<Tensor> = (0..7)
            .map(|i| {
                Tensor::zeros(
                    [1, 1, GfpganConfig::noise_size(i), GfpganConfig::noise_size(i)],
                    (Kind::Float, Device::Cpu),
                )
            })
            .collect();
        let a = Noise::Seeded(7).maps(&stored, Device::Cpu);
        let b = Noise::Seeded(7).maps(&stored, Device::Cpu);
        let c = Noise::Seeded(8).maps(&stored, Device::Cpu);
        assert_eq!(a.len(), 7);
        assert_eq!(a[6].size(), [1, 1, 32, 32]);
        assert!(a.iter().zip(&b).all(|(x, y)| x.equal(y)));
        assert!(!a[6].equal(&c[6]));
        let all = Tensor::cat(&a.iter().map(|t| t.flatten(0, -1)).collect::<Vec<_>>(), 0);
        let (mean, std) = (all.mean(Kind::Double).double_value(&[]), all.std(true).double_value(&[]));
        assert!(mean.abs() < 0.1 && (std - 1.0).abs() < 0.1, "mean {mean} std {std}");
        assert_eq!(Noise::Zero.maps(&stored, Device::Cpu)[3].abs().sum(Kind::Double).double_value(&[]), 0.0);
    }
}
