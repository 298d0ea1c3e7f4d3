//! The synthesized mouth interior: a per-avatar palette (dark cavity, tongue, teeth) measured from
//! the photo once, and the per-pixel shading of the opening between the inner lips.

use super::mesh::point_in_polygon;
use super::shape;
use crate::face::Point;
use serde::{Deserialize, Serialize};

/// Upper/lower inner-lip landmark pairs, left to right.
pub(super) const LIP_PAIRS: [(usize, usize); 3] = [(61, 67), (62, 66), (63, 65)];

/// Rec. 601 luma of an RGB colour.
#[inline]
fn luma(c: &[f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// Colours of the mouth interior (linear 0..255 RGB).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MouthPalette {
    pub cavity: [f32; 3],
    pub tongue: [f32; 3],
    pub teeth: [f32; 3],
}

impl MouthPalette {
    /// Measure lip and skin colour of the face in an RGB buffer (`w x h`, landmarks in its pixels).
    pub fn measure(rgb: &[u8], w: usize, h: usize, lm: &[Point], face_width: f32) -> Self {
        let outer: Vec<Point> = lm[48..60].to_vec();
        let inner: Vec<Point> = lm[60..68].to_vec();
        let (x0, y0, x1, y1) = bbox(&outer, w, h);
        let mut lip = Mean::default();
        for y in y0..y1 {
            for x in x0..x1 {
                let p = [x as f32, y as f32];
                if point_in_polygon(p, &outer) && !point_in_polygon(p, &inner) {
                    lip.add(px(rgb, w, x, y));
                }
            }
        }
        let mut skin = Mean::default();
        let r = (0.03 * face_width).max(2.0);
        let c = lm[29];
        let (sx0, sy0, sx1, sy1) = bbox(&[[c[0] - r, c[1] - r], [c[0] + r, c[1] + r]], w, h);
        for y in sy0..sy1 {
            for x in sx0..sx1 {
                skin.add(px(rgb, w, x, y));
            }
        }
        let lip = lip.get().unwrap_or([170.0, 95.0, 90.0]);
        let skin = skin.get().unwrap_or([200.0, 160.0, 140.0]);
        let bright = (luma(&skin) / 165.0).clamp(0.55, 1.05);
        let mut palette = Self {
            cavity: [lip[0] * 0.22 + 8.0, lip[1] * 0.14 + 3.0, lip[2] * 0.14 + 3.0],
            tongue: [lip[0] * 0.55, lip[1] * 0.3, lip[2] * 0.3],
            teeth: [222.0 * bright, 212.0 * bright, 196.0 * bright],
        };
        // Where the photo shows the mouth open (inner lips apart by 6% of the mouth's width), its
        // own teeth and cavity colours replace the synthesized ones: the brightest quarter of the
        // opening if it is pale and lighter than the lips, the darkest quarter if it is much
        // darker than them (a closed mouth's lip line is only a little darker).
        let mouth_width = shape::dist(lm[48], lm[54]);
        let gap = LIP_PAIRS.iter().map(|&(u, l)| shape::dist(lm[u], lm[l])).sum::<f32>() / 3.0;
        if gap < 0.06 * mouth_width {
            return palette;
        }
        let (ix0, iy0, ix1, iy1) = bbox(&inner, w, h);
        let mut opening: Vec<[f32; 3]> = Vec::new();
        for y in iy0..iy1 {
            for x in ix0..ix1 {
                if point_in_polygon([x as f32, y as f32], &inner) {
                    opening.push(px(rgb, w, x, y));
                }
            }
        }
        let min_pixels = ((0.02 * face_width) * (0.02 * face_width)).max(6.0) as usize;
        if opening.len() >= min_pixels {
            opening.sort_by(|a, b| luma(a).total_cmp(&luma(b)));
            let q = opening.len() / 4;
            let mean = |s: &[[f32; 3]]| {
                let mut m = Mean::default();
                s.iter().for_each(|c| m.add(*c));
                m.get()
            };
            let lip_l = luma(&lip);
            if let Some(t) = mean(&opening[opening.len() - q.max(1)..]) {
                let pale = t.iter().fold(0.0f32, |a, v| a.max(*v)) - t.iter().fold(255.0f32, |a, v| a.min(*v));
                if luma(&t) > 1.15 * lip_l && pale < 0.35 * luma(&t) {
                    palette.teeth = t;
                }
            }
            if let Some(c) = mean(&opening[..q.max(1)]) {
                if luma(&c) < 0.4 * lip_l {
                    palette.cavity = c;
                }
            }
        }
        palette
    }

    /// Colour of one opening pixel. `d`: distance below the upper inner lip, `e`: above the lower
    /// inner lip, `u`: 0 at the corners .. 1 in the middle, `mw`: mouth width (all pixels).
    /// Returns the colour and its opacity over the warped face pixel (soft at the lip edges).
    #[inline]
    pub fn shade(&self, d: f32, e: f32, u: f32, mw: f32) -> ([f32; 3], f32) {
        let (d, e, u) = (d.max(0.0), e.max(0.0), u.clamp(0.0, 1.0));
        let h = d + e;
        // Cavity: darkest in the middle of a wide opening, a little lighter towards the lips.
        let near_lip = 1.0 - smoothstep(0.0, 0.12 * mw, d.min(e));
        let deep = (1.0 - 0.3 * u) * (1.0 + 0.6 * near_lip);
        let mut c = [self.cavity[0] * deep, self.cavity[1] * deep, self.cavity[2] * deep];
        // Tongue: lower part of a wide opening.
        let tongue = smoothstep(0.08 * mw, 0.25 * mw, h) * (1.0 - (e / (0.35 * h).max(1e-3)).min(1.0)) * 0.7;
        mix(&mut c, &self.tongue, tongue);
        // Upper teeth: a band under the upper lip once the mouth is open enough, fading towards
        // the corners, in the lip's shadow right under the lip, with a soft biting edge.
        let show = smoothstep(0.05 * mw, 0.14 * mw, h) * smoothstep(0.05, 0.45, u) * 0.9;
        let band = (0.11 * mw).min(0.4 * h);
        let upper = show * (1.0 - smoothstep(band - 1.5, band + 0.5, d));
        let teeth_shade = (0.62 + 0.3 * u) * (0.7 + 0.3 * smoothstep(0.0, 2.0, d));
        let teeth = [self.teeth[0] * teeth_shade, self.teeth[1] * teeth_shade, self.teeth[2] * teeth_shade];
        mix(&mut c, &teeth, upper);
        // Lower teeth hint on a wide opening.
        let lband = (0.05 * mw).min(0.2 * h);
        let lower = show * 0.6 * smoothstep(0.15 * mw, 0.28 * mw, h) * (1.0 - smoothstep(lband - 1.0, lband + 0.5, e));
        mix(&mut c, &[teeth[0] * 0.8, teeth[1] * 0.8, teeth[2] * 0.8], lower);
        let alpha = (d.min(e) + 0.35).clamp(0.0, 1.0);
        (c, alpha)
    }
}

#[inline]
fn smoothstep(a: f32, b: f32, x: f32) -> f32 {
    let t = ((x - a) / (b - a).max(1e-6)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

#[inline]
fn mix(c: &mut [f32; 3], to: &[f32; 3], t: f32) {
    for k in 0..3 {
        c[k] += (to[k] - c[k]) * t;
    }
}

fn bbox(pts: &[Point], w: usize, h: usize) -> (usize, usize, usize, usize) {
    let x0 = pts.iter().map(|p| p[0]).fold(f32::MAX, f32::min).floor().max(0.0) as usize;
    let y0 = pts.iter().map(|p| p[1]).fold(f32::MAX, f32::min).floor().max(0.0) as usize;
    let x1 = (pts.iter().map(|p| p[0]).fold(f32::MIN, f32::max).ceil().max(0.0) as usize + 1).min(w);
    let y1 = (pts.iter().map(|p| p[1]).fold(f32::MIN, f32::max).ceil().max(0.0) as usize + 1).min(h);
    (x0.min(x1), y0.min(y1), x1, y1)
}

fn px(rgb: &[u8], w: usize, x: usize, y: usize) -> [f32; 3] {
    let i = (y * w + x) * 3;
    match rgb.get(i..i + 3) {
        Some(p) => [p[0] as f32, p[1] as f32, p[2] as f32],
        None => [0.0; 3],
    }
}

#[derive(Default)]
struct Mean {
    sum: [f64; 3],
    n: usize,
}

impl Mean {
    fn add(&mut self, p: [f32; 3]) {
        for (s, v) in self.sum.iter_mut().zip(p) {
            *s += v as f64;
        }
        self.n += 1;
    }
    fn get(&self) -> Option<[f32; 3]> {
        (self.n > 0).then(|| {
            let n = self.n as f64;
            [(self.sum[0] / n) as f32, (self.sum[1] / n) as f32, (self.sum[2] / n) as f32]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_is_dark_with_teeth_under_the_upper_lip() {
        let pal =
            MouthPalette { cavity: [40.0, 15.0, 15.0], tongue: [140.0, 60.0, 60.0], teeth: [230.0, 220.0, 205.0] };
        let mw = 60.0;
        // A narrow slit is dark.
        let (slit, _) = pal.shade(1.0, 1.0, 1.0, mw);
        assert!(luma(&slit) < 60.0, "slit {slit:?}");
        // Wide open: teeth right below the upper lip, dark in the middle.
        let (teeth, a) = pal.shade(2.0, 16.0, 1.0, mw);
        assert!(luma(&teeth) > 150.0 && a == 1.0, "teeth {teeth:?}");
        let (middle, _) = pal.shade(9.0, 9.0, 1.0, mw);
        assert!(luma(&middle) < 80.0, "middle {middle:?}");
        // Edges blend into the lip.
        let (_, edge) = pal.shade(0.0, 10.0, 1.0, mw);
        assert!(edge < 0.5);
    }

    #[test]
    fn an_open_mouth_in_the_photo_gives_its_own_teeth_colour() {
        let mut lm = crate::classic::shape::mean_shape_in_box([40.0, 30.0, 176.0, 176.0]);
        // Open the photo's mouth: inner lips 61-63 up, 65-67 down by a few pixels.
        lm[61..=63].iter_mut().for_each(|p| p[1] -= 4.0);
        lm[65..=67].iter_mut().for_each(|p| p[1] += 4.0);
        let (w, h) = (256usize, 256usize);
        let paint = |teeth: [u8; 3]| {
            let mut rgb = vec![0u8; w * h * 3];
            for y in 0..h {
                for x in 0..w {
                    let p = [x as f32, y as f32];
                    let c = if point_in_polygon(p, &lm[60..68]) {
                        teeth
                    } else if point_in_polygon(p, &lm[48..60]) {
                        [170, 80, 80]
                    } else {
                        [205, 165, 140]
                    };
                    rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
                }
            }
            rgb
        };
        let own = MouthPalette::measure(&paint([236, 232, 226]), w, h, &lm, 140.0);
        assert!((own.teeth[0] - 236.0).abs() < 1.0 && (own.teeth[2] - 226.0).abs() < 1.0, "{own:?}");
        // A red opening (lips pressed together at the rest shape) shows no teeth to take.
        let red = MouthPalette::measure(&paint([170, 80, 80]), w, h, &lm, 140.0);
        let synth = 222.0 * luma(&[205.0, 165.0, 140.0]) / 165.0;
        assert!((red.teeth[0] - synth.min(222.0 * 1.05)).abs() < 1.0, "{red:?}");
    }
}
