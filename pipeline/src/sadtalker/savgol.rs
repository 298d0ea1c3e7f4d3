//! Savitzky-Golay smoothing of the head pose as scipy's `savgol_filter(x, w, 2, axis=1)` with the
//! default `mode='interp'`: interior samples use the convolution kernel (`savgol_coeffs`), the
//! `w // 2` samples at each end take the values of a least-squares polynomial fitted to the first /
//! last `w` samples. Float32 data, float64 arithmetic, as scipy does for float32 input.

use crate::error::ResultExt;
use crate::Result;
use tch::{Kind, Tensor};

/// Window SadTalker uses for sequences of at least 13 frames.
pub const POSE_WINDOW: usize = 13;
/// Polynomial order of the pose smoothing.
pub const POSE_ORDER: usize = 2;

/// SadTalker's window rule: 13, or the largest odd number not above `len` for shorter sequences.
pub fn pose_window(len: usize) -> usize {
    if len < POSE_WINDOW {
        (len.saturating_sub(1) / 2) * 2 + 1
    } else {
        POSE_WINDOW
    }
}

/// Least-squares polynomial fit hat matrix: `hat[i][j]` = weight of sample `j` in the fitted value
/// at position `i` (both in 0..window), for polynomials of degree `order` in `t - centre`.
fn fit_matrix(window: usize, order: usize) -> Vec<Vec<f64>> {
    let centre = (window as f64 - 1.0) / 2.0;
    let m = order + 1;
    let basis = |t: usize| -> Vec<f64> { (0..m).map(|p| (t as f64 - centre).powi(p as i32)).collect() };
    // Normal equations G = V^T V, solve G^-1 by Gauss-Jordan (m <= 3, well conditioned once centred).
    let mut g = vec![vec![0.0f64; 2 * m]; m];
    for t in 0..window {
        let b = basis(t);
        for r in 0..m {
            for c in 0..m {
                g[r][c] += b[r] * b[c];
            }
        }
    }
    for (r, row) in g.iter_mut().enumerate() {
        row[m + r] = 1.0;
    }
    for col in 0..m {
        let pivot = (col..m).max_by(|&a, &b| g[a][col].abs().total_cmp(&g[b][col].abs())).unwrap_or(col);
        g.swap(col, pivot);
        let d = g[col][col];
        for v in g[col].iter_mut() {
            *v /= d;
        }
        for r in 0..m {
            if r != col {
                let f = g[r][col];
                let pivot_row = g[col].clone();
                for (v, p) in g[r].iter_mut().zip(pivot_row) {
                    *v -= f * p;
                }
            }
        }
    }
    let inv: Vec<Vec<f64>> = g.iter().map(|row| row[m..].to_vec()).collect();
    (0..window)
        .map(|i| {
            let bi = basis(i);
            let ci: Vec<f64> = (0..m).map(|c| (0..m).map(|r| bi[r] * inv[r][c]).sum()).collect();
            (0..window).map(|j| basis(j).iter().zip(&ci).map(|(bj, c)| bj * c).sum()).collect()
        })
        .collect()
}

/// `scipy.signal.savgol_coeffs(window, order)` (smoothing, deriv 0): the fitted value at the
/// window centre as weights of the samples. Symmetric, so convolution order does not matter.
pub fn savgol_coeffs(window: usize, order: usize) -> Vec<f64> {
    fit_matrix(window, order).swap_remove(window / 2)
}

/// Smooth one sequence. Sequences too short for the window (or windows not above the order)
/// are returned unchanged (the reference raises there).
pub fn savgol_filter(x: &[f32], window: usize, order: usize) -> Vec<f32> {
    let n = x.len();
    if window % 2 != 1 || window <= order || window > n {
        return x.to_vec();
    }
    let half = window / 2;
    let hat = fit_matrix(window, order);
    let kernel = &hat[half];
    let mut y = vec![0.0f32; n];
    for i in half..n - half {
        let s: f64 = kernel.iter().zip(&x[i - half..=i + half]).map(|(k, &v)| k * f64::from(v)).sum();
        y[i] = s as f32;
    }
    let fit = |row: &[f64], samples: &[f32]| -> f32 {
        row.iter().zip(samples).map(|(h, &v)| h * f64::from(v)).sum::<f64>() as f32
    };
    let head = &x[..window];
    let tail = &x[n - window..];
    for i in 0..half {
        y[i] = fit(&hat[i], head);
        y[n - half + i] = fit(&hat[window - half + i], tail);
    }
    y
}

/// SadTalker's pose smoothing of a (1, T, 6) tensor along the frames with [`pose_window`].
pub fn smooth_pose(pose: &Tensor) -> Result<Tensor> {
    let size = pose.size();
    let (t, c) = match size.as_slice() {
        [1, t, c] => (*t as usize, *c as usize),
        other => return Err(crate::PipelineError::Internal(format!("pose must be (1, T, C), got {other:?}"))),
    };
    let device = pose.device();
    let values: Vec<f32> =
        Vec::<f32>::try_from(pose.to_kind(Kind::Float).to_device(tch::Device::Cpu).reshape([-1])).ctx("pose values")?;
    let window = pose_window(t);
    let mut out = vec![0.0f32; t * c];
    for ch in 0..c {
        let column: Vec<f32> = (0..t).map(|i| values[i * c + ch]).collect();
        for (i, v) in savgol_filter(&column, window, POSE_ORDER).into_iter().enumerate() {
            out[i * c + ch] = v;
        }
    }
    Ok(Tensor::from_slice(&out).reshape([1, t as i64, c as i64]).to_device(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sadtalker_savgol_preserves_quadratics_and_window_rule() {
        let x: Vec<f32> = (0..20).map(|i| 0.5 + 0.1 * i as f32 - 0.01 * (i * i) as f32).collect();
        let y = savgol_filter(&x, 13, 2);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(pose_window(55), 13);
        assert_eq!(pose_window(13), 13);
        assert_eq!(pose_window(12), 11);
        assert_eq!(pose_window(10), 9);
        assert_eq!(pose_window(3), 3);
        // Too short: unchanged.
        assert_eq!(savgol_filter(&[1.0, 2.0], pose_window(2), 2), vec![1.0, 2.0]);
        let c = savgol_coeffs(5, 2);
        let expect = [-3.0 / 35.0, 12.0 / 35.0, 17.0 / 35.0, 12.0 / 35.0, -3.0 / 35.0];
        for (a, b) in c.iter().zip(expect) {
            assert!((a - b).abs() < 1e-14);
        }
    }
}
