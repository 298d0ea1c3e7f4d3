//! Small signal-processing kernels for the lip-sync analysis: spectra and autocorrelation through
//! `rustfft`, LPC (Levinson-Durbin) and formant picking on the LPC envelope.

use rustfft::num_complex::Complex;
use rustfft::FftPlanner;
use std::cell::RefCell;
use std::f32::consts::PI;

thread_local! {
    /// Plans are cached per thread: the analysis asks for the same two sizes for every frame.
    static PLANNER: RefCell<FftPlanner<f32>> = RefCell::new(FftPlanner::new());
}

/// In-place forward complex FFT (unnormalised) of any length.
fn fft(buf: &mut [Complex<f32>]) {
    let plan = PLANNER.with(|p| p.borrow_mut().plan_fft_forward(buf.len()));
    plan.process(buf);
}

/// `frame` zero-padded to `n` complex samples.
fn padded(frame: &[f32], n: usize) -> Vec<Complex<f32>> {
    let mut buf = vec![Complex::new(0.0f32, 0.0); n];
    for (d, s) in buf.iter_mut().zip(frame) {
        d.re = *s;
    }
    buf
}

/// Power spectrum (`n/2 + 1` bins) of `frame` zero-padded to `n`.
pub fn power_spectrum(frame: &[f32], n: usize) -> Vec<f32> {
    let mut buf = padded(frame, n);
    fft(&mut buf);
    buf[..=n / 2].iter().map(|c| c.norm_sqr()).collect()
}

/// Normalised autocorrelation peak in the pitch-lag range: ~1 for voiced speech, ~0 for noise.
pub fn voicing(frame: &[f32], min_lag: usize, max_lag: usize) -> f32 {
    let n = (2 * frame.len()).next_power_of_two();
    let mut buf = padded(frame, n);
    fft(&mut buf);
    for c in buf.iter_mut() {
        *c = Complex::new(c.norm_sqr(), 0.0);
    }
    fft(&mut buf); // real & even input: forward FFT equals n * inverse FFT
    let re: Vec<f32> = buf.iter().map(|c| c.re).collect();
    let r0 = re[0];
    if r0 <= 1e-12 {
        return 0.0;
    }
    let hi = max_lag.min(frame.len() - 1);
    let mut best = 0.0f32;
    for (lag, r) in re.iter().enumerate().take(hi + 1).skip(min_lag) {
        // Unbiased: compensate for the shrinking overlap.
        let v = r / r0 * frame.len() as f32 / (frame.len() - lag) as f32;
        best = best.max(v);
    }
    best.clamp(0.0, 1.0)
}

/// LPC coefficients `a[0..=order]` (a[0] = 1) by autocorrelation + Levinson-Durbin.
pub fn lpc(frame: &[f32], order: usize) -> Option<Vec<f32>> {
    let mut r = vec![0.0f64; order + 1];
    for (lag, rv) in r.iter_mut().enumerate() {
        *rv = frame.iter().zip(&frame[lag..]).map(|(a, b)| *a as f64 * *b as f64).sum();
    }
    if r[0] <= 1e-10 {
        return None;
    }
    r[0] *= 1.0 + 1e-6; // white-noise correction for numerical stability
    let mut a = vec![0.0f64; order + 1];
    a[0] = 1.0;
    let mut err = r[0];
    for i in 1..=order {
        let mut acc = r[i];
        for j in 1..i {
            acc += a[j] * r[i - j];
        }
        let k = -acc / err;
        let prev = a.clone();
        for j in 1..i {
            a[j] = prev[j] + k * prev[i - j];
        }
        a[i] = k;
        err *= 1.0 - k * k;
        if err <= 0.0 {
            return None;
        }
    }
    Some(a.into_iter().map(|v| v as f32).collect())
}

/// First two formants (Hz) as peaks of the LPC envelope `1/|A(e^jw)|` below 3.5 kHz.
pub fn formants(a: &[f32], sample_rate: f32) -> Option<(f32, f32)> {
    const BINS: usize = 224;
    const TOP_HZ: f32 = 3500.0;
    let env: Vec<f32> = (0..BINS)
        .map(|b| {
            // A(e^-jw) = sum a_k e^-jwk by Horner's rule: one sine and cosine per bin instead
            // of one per coefficient (this loop dominated the lip-sync analysis).
            let w = 2.0 * PI * (b as f32 * TOP_HZ / BINS as f32) / sample_rate;
            let (zr, zi) = (w.cos(), -w.sin());
            let (mut re, mut im) = (0.0f32, 0.0f32);
            for c in a.iter().rev() {
                (re, im) = (re * zr - im * zi + c, re * zi + im * zr);
            }
            1.0 / (re * re + im * im).max(1e-12)
        })
        .collect();
    let hz = |b: usize| b as f32 * TOP_HZ / BINS as f32;
    let peaks: Vec<f32> =
        (1..BINS - 1).filter(|&b| env[b] > env[b - 1] && env[b] >= env[b + 1]).map(hz).filter(|&f| f > 180.0).collect();
    let f1 = *peaks.iter().find(|&&f| f < 1100.0)?;
    let f2 = *peaks.iter().find(|&&f| f > f1 + 180.0 && f < 3200.0)?;
    Some((f1, f2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fft_finds_a_tone() {
        let n = 512;
        let sr = 16000.0;
        let f = 1000.0;
        let x: Vec<f32> = (0..n).map(|i| (2.0 * PI * f * i as f32 / sr).sin()).collect();
        let p = power_spectrum(&x, n);
        let peak = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
        assert_eq!(peak, (f / sr * n as f32).round() as usize);
    }

    #[test]
    fn voicing_separates_periodic_from_noise() {
        let sr = 16000.0;
        let pulse: Vec<f32> = (0..400).map(|i| (2.0 * PI * 150.0 * i as f32 / sr).sin().powi(3)).collect();
        let mut rng = super::super::shape::SplitMix::new(3);
        let noise: Vec<f32> = (0..400).map(|_| rng.range(-1.0, 1.0)).collect();
        assert!(voicing(&pulse, 40, 228) > 0.8);
        assert!(voicing(&noise, 40, 228) < 0.4);
    }

    #[test]
    fn lpc_formants_of_a_synthetic_vowel() {
        // Two resonators at 700 and 1200 Hz excited by a 120 Hz pulse train ("a"-like).
        let sr = 16000.0f32;
        let mut x = vec![0.0f32; 800];
        for i in (0..800).step_by(133) {
            x[i] = 1.0;
        }
        for (fc, bw) in [(700.0f32, 80.0f32), (1200.0, 90.0)] {
            let rr = (-PI * bw / sr).exp();
            let c1 = 2.0 * rr * (2.0 * PI * fc / sr).cos();
            let c2 = -rr * rr;
            let mut y = vec![0.0f32; x.len()];
            for i in 0..x.len() {
                y[i] = x[i] + c1 * if i > 0 { y[i - 1] } else { 0.0 } + c2 * if i > 1 { y[i - 2] } else { 0.0 };
            }
            x = y;
        }
        let frame: Vec<f32> = x[200..600]
            .iter()
            .enumerate()
            .map(|(i, v)| v * (0.5 - 0.5 * (2.0 * PI * i as f32 / 399.0).cos()))
            .collect();
        let a = lpc(&frame, 12).expect("lpc");
        let (f1, f2) = formants(&a, sr).expect("formants");
        assert!((f1 - 700.0).abs() < 120.0, "f1 {f1}");
        assert!((f2 - 1200.0).abs() < 150.0, "f2 {f2}");
    }
}
