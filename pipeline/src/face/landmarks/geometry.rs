//! Small 2-D fits used by the shape predictor: the least-squares similarity between two shapes
//! (dlib's `find_similarity_transform`, linear part only) and a scale+translation fit.

/// The 2x2 linear part `[[a, -b], [b, a]]` of the least-squares similarity transform (rotation +
/// uniform scale + translation, no reflection) mapping `from` onto `to`; both are flat
/// `x0, y0, x1, y1, ...` shapes of equal length.
///
/// dlib computes this with Umeyama's SVD method in double precision and casts the matrix to float;
/// in 2-D the optimum has the closed form used here (identical up to rounding). A degenerate `from`
/// (all points equal) gives the identity, as dlib's scale falls back to 1 there.
pub fn similarity_2x2(from: &[f32], to: &[f32]) -> [[f32; 2]; 2] {
    let n = (from.len().min(to.len()) / 2) as f64;
    if n < 2.0 {
        return [[1.0, 0.0], [0.0, 1.0]];
    }
    let (mut fx, mut fy, mut tx, mut ty) = (0f64, 0f64, 0f64, 0f64);
    for (f, t) in from.chunks_exact(2).zip(to.chunks_exact(2)) {
        fx += f64::from(f[0]);
        fy += f64::from(f[1]);
        tx += f64::from(t[0]);
        ty += f64::from(t[1]);
    }
    let (fx, fy, tx, ty) = (fx / n, fy / n, tx / n, ty / n);
    let (mut dot, mut cross, mut norm) = (0f64, 0f64, 0f64);
    for (f, t) in from.chunks_exact(2).zip(to.chunks_exact(2)) {
        let (ax, ay) = (f64::from(f[0]) - fx, f64::from(f[1]) - fy);
        let (bx, by) = (f64::from(t[0]) - tx, f64::from(t[1]) - ty);
        dot += ax * bx + ay * by;
        cross += ax * by - ay * bx;
        norm += ax * ax + ay * ay;
    }
    if norm <= 0.0 {
        return [[1.0, 0.0], [0.0, 1.0]];
    }
    let (a, b) = ((dot / norm) as f32, (cross / norm) as f32);
    [[a, -b], [b, a]]
}

/// Least-squares `to ≈ s * from + t` (uniform scale, no rotation). `None` when `from` is degenerate
/// or the result is not finite.
pub fn fit_scale_translation(from: &[[f64; 2]], to: &[[f64; 2]]) -> Option<(f64, [f64; 2])> {
    let n = from.len().min(to.len());
    if n < 2 {
        return None;
    }
    let mean = |pts: &[[f64; 2]]| {
        let s = pts[..n].iter().fold([0.0, 0.0], |acc, p| [acc[0] + p[0], acc[1] + p[1]]);
        [s[0] / n as f64, s[1] / n as f64]
    };
    let (mf, mt) = (mean(from), mean(to));
    let (mut num, mut den) = (0.0, 0.0);
    for (f, t) in from.iter().zip(to) {
        let (ax, ay) = (f[0] - mf[0], f[1] - mf[1]);
        num += ax * (t[0] - mt[0]) + ay * (t[1] - mt[1]);
        den += ax * ax + ay * ay;
    }
    let s = num / den;
    let t = [mt[0] - s * mf[0], mt[1] - s * mf[1]];
    (den > 0.0 && s.is_finite() && t[0].is_finite() && t[1].is_finite()).then_some((s, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_rotation_and_scale() {
        let from = [0.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 0.3, 0.7];
        let (s, th) = (1.7f32, 0.4f32);
        let (c, d) = (s * th.cos(), s * th.sin());
        let to: Vec<f32> =
            from.chunks(2).flat_map(|p| [c * p[0] - d * p[1] + 5.0, d * p[0] + c * p[1] - 2.0]).collect();
        let m = similarity_2x2(&from, &to);
        assert!((m[0][0] - c).abs() < 1e-5 && (m[1][0] - d).abs() < 1e-5, "{m:?}");
        assert!((m[0][1] + d).abs() < 1e-5 && (m[1][1] - c).abs() < 1e-5, "{m:?}");
        assert_eq!(similarity_2x2(&[1.0, 1.0, 1.0, 1.0], &to[..4]), [[1.0, 0.0], [0.0, 1.0]]);
    }

    #[test]
    fn scale_translation_fit() {
        let from = [[0.0, 0.0], [1.0, 0.0], [0.5, 2.0]];
        let to: Vec<[f64; 2]> = from.iter().map(|p| [3.0 * p[0] + 10.0, 3.0 * p[1] - 4.0]).collect();
        let (s, t) = fit_scale_translation(&from, &to).unwrap();
        assert!((s - 3.0).abs() < 1e-12 && (t[0] - 10.0).abs() < 1e-12 && (t[1] + 4.0).abs() < 1e-12);
        assert!(fit_scale_translation(&[[1.0, 1.0]; 3], &to).is_none());
    }
}
