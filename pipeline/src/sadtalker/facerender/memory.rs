//! Choosing how many frames go through the generator per forward pass: a per-frame activation
//! estimate derived from the config, the free memory of the device (CUDA: `nvidia-smi`; CPU:
//! `MemAvailable`), and a cap.

use super::config::FaceRenderConfig;
use tch::Device;

/// Fraction of the free memory a batch may use.
const USABLE_FRACTION: f64 = 0.5;
/// Safety factor for allocator fragmentation and temporaries the estimate does not list.
const SLACK: f64 = 2.0;

/// Rough peak activation bytes of one frame in the generator at output size `image_size`
/// (elements of the largest live tensors of the SPADE decoder's last block plus the dense-motion
/// network, times `elem_bytes`).
pub fn frame_bytes(config: &FaceRenderConfig, image_size: i64, elem_bytes: usize) -> u64 {
    let d = &config.generator.dense_motion;
    let dec = &config.decoder;
    let k1 = config.common.num_kp + 1;
    let feat = image_size / (1 << config.generator.num_down_blocks);
    let voxels = config.generator.reshape_depth * feat * feat;
    let full = image_size * image_size;
    // Last SPADE block: segmap, hidden activation, gamma, beta, normalised x, x, outputs.
    let decoder = full * (dec.label_nc + dec.nhidden + 4 * dec.ic + 2 * dec.oc);
    let out_filters = d.block_expansion + k1 * (d.compress + 1);
    // Dense motion: sparse grids, deformed features, hourglass input / output, mask.
    let motion = voxels * (2 * k1 * 3 + 2 * k1 * (d.compress + 1) + 3 * out_filters + 3 * k1);
    let elems = (decoder.max(motion) + voxels * config.generator.reshape_channel * 2) as f64;
    (elems * SLACK * elem_bytes as f64) as u64
}

/// Free memory of `device` in bytes, when it can be measured.
pub fn free_bytes(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(index) => cuda_free_bytes(index),
        _ => cpu_available_bytes(),
    }
}

fn cpu_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn cuda_free_bytes(index: usize) -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.free", "--format=csv,noheader,nounits", &format!("--id={index}")])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().lines().next()?.trim().parse().ok()?;
    Some(mib * 1024 * 1024)
}

/// Frames per pass: as many as fit in half the free memory, at least 1, at most `max`.
pub fn batch_size_for(free: Option<u64>, per_frame: u64, max: usize) -> usize {
    let max = max.max(1);
    match free {
        Some(free) if per_frame > 0 => (((free as f64 * USABLE_FRACTION) / per_frame as f64) as usize).clamp(1, max),
        _ => max.min(4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_respects_memory_and_bounds() {
        let cfg = FaceRenderConfig::official(70);
        let per = frame_bytes(&cfg, 256, 4);
        assert!(per > 100 << 20 && per < 8 << 30, "full-size frame estimate {per} is implausible");
        assert!(frame_bytes(&cfg, 256, 2) < per);
        assert_eq!(batch_size_for(Some(per), per, 64), 1);
        assert_eq!(batch_size_for(Some(10 * per), per, 64), 5);
        assert_eq!(batch_size_for(Some(1000 * per), per, 16), 16);
        assert_eq!(batch_size_for(Some(0), per, 16), 1);
        assert_eq!(batch_size_for(None, per, 16), 4);
    }
}
