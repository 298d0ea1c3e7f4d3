//! The 14 mouth shapes (visemes) plus blink / brow / rest shapes, as 68-landmark displacements
//! scaled to one face.
//!
//! Set: the 15 Oculus/Meta visemes without `sil` (silence is the closed rest mouth):
//! `PP` (p b m), `FF` (f v), `TH` (th), `DD` (t d), `kk` (k g), `CH` (ch j sh), `SS` (s z),
//! `nn` (n l), `RR` (r), `aa` (a), `E` (e), `ih` (i), `oh` (o), `ou` (u).
//! Each shape is a small articulation recipe (jaw drop, lip aperture, width, upper-lip raise,
//! lower-lip tuck, rounding) in units of the mouth width, turned into pixel displacements along
//! the face's own axes, so a tilted or small face gets a matching mouth.

use super::shape::{self, FaceFrame};
use crate::error::{PipelineError, Result};
use crate::face::Point;
use serde::{Deserialize, Serialize};

/// Number of visemes in the set.
pub const NUM_VISEMES: usize = 14;

/// Names in set order (Oculus spelling).
pub const VISEME_NAMES: [&str; NUM_VISEMES] =
    ["PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou"];

/// One articulation recipe, in mouth widths.
#[derive(Debug, Clone, Copy)]
struct Recipe {
    /// Chin/lower-jaw drop.
    jaw: f32,
    /// Lip aperture on top of the jaw (negative presses the lips together).
    open: f32,
    /// Corner spread per side (negative: narrower).
    width: f32,
    /// Upper-lip raise.
    upper: f32,
    /// Extra lower-lip motion (negative: tucked up under the upper teeth, as in "f").
    lower: f32,
    /// Rounding/protrusion 0..1 (narrows the corners, rounds the opening, fuller lips).
    round: f32,
}

const fn r(jaw: f32, open: f32, width: f32, upper: f32, lower: f32, round: f32) -> Recipe {
    Recipe { jaw, open, width, upper, lower, round }
}

/// Recipes in [`VISEME_NAMES`] order.
const RECIPES: [Recipe; NUM_VISEMES] = [
    r(0.00, -0.03, 0.00, 0.00, 0.00, 0.00), // PP: lips pressed
    r(0.05, 0.02, 0.01, 0.04, -0.06, 0.00), // FF: lower lip under the upper teeth
    r(0.09, 0.04, 0.02, 0.02, 0.00, 0.00),  // TH: tongue tip between the teeth
    r(0.10, 0.04, 0.03, 0.01, 0.00, 0.00),  // DD
    r(0.12, 0.05, 0.02, 0.01, 0.00, 0.00),  // kk
    r(0.08, 0.05, -0.05, 0.04, 0.00, 0.35), // CH: protruded, teeth close
    r(0.04, 0.04, 0.05, 0.02, 0.00, 0.00),  // SS: teeth together, lips spread
    r(0.10, 0.04, 0.02, 0.01, 0.00, 0.00),  // nn
    r(0.08, 0.04, -0.05, 0.01, 0.00, 0.30), // RR
    r(0.34, 0.10, 0.00, 0.02, 0.00, 0.00),  // aa: wide open
    r(0.21, 0.07, 0.06, 0.02, 0.00, 0.00),  // E
    r(0.14, 0.06, 0.09, 0.02, 0.00, 0.00),  // ih: spread
    r(0.25, 0.08, -0.08, 0.01, 0.00, 0.45), // oh: round
    r(0.15, 0.05, -0.12, 0.00, 0.00, 0.6),  // ou: small and round
];

/// How far each jaw landmark follows the chin (0..16).
const JAW_FOLLOW: [f32; 17] = [0.0, 0.0, 0.0, 0.05, 0.2, 0.45, 0.7, 0.9, 1.0, 0.9, 0.7, 0.45, 0.2, 0.05, 0.0, 0.0, 0.0];

/// Per-avatar mouth/eye shapes: displacements of the 68 landmarks in original-image pixels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisemeSet {
    pub names: Vec<String>,
    /// `shapes[v][i]`: displacement of landmark `i` at full strength of viseme `v`.
    pub shapes: Vec<Vec<Point>>,
    /// Both eyes fully closed.
    pub blink: Vec<Point>,
    /// Brows raised (emphasis).
    pub brow: Vec<Point>,
    /// Always applied: closes a mouth that is open in the photo, so silence shows closed lips.
    pub rest: Vec<Point>,
    /// Mouth width in original pixels (the unit of the recipes).
    pub mouth_width: f32,
    pub face_height: f32,
}

impl VisemeSet {
    /// Build every shape for a face with these 68 landmarks (original-image pixels).
    pub fn build(landmarks: &[Point]) -> Result<Self> {
        let f = FaceFrame::measure(landmarks)
            .ok_or_else(|| PipelineError::Internal("landmarks are degenerate; cannot build visemes".into()))?;
        let shapes = RECIPES.iter().map(|rc| recipe_shape(landmarks, &f, rc)).collect();
        Ok(Self {
            names: VISEME_NAMES.iter().map(|s| s.to_string()).collect(),
            shapes,
            blink: blink_shape(landmarks),
            brow: brow_shape(&f),
            rest: rest_shape(landmarks, &f),
            mouth_width: f.mouth_width,
            face_height: f.face_height,
        })
    }
}

/// Displacements for one recipe.
fn recipe_shape(lm: &[Point], f: &FaceFrame, rc: &Recipe) -> Vec<Point> {
    let mw = f.mouth_width;
    let centre = shape::mean(&[lm[48], lm[54]]);
    let mut d = vec![[0.0f32, 0.0f32]; 68];
    // (dx, dy) in face axes: x along the eye line, y towards the chin.
    let mut put = |i: usize, dx: f32, dy: f32| {
        let v = f.to_image([dx, dy]);
        d[i] = shape::add(d[i], v);
    };
    let jaw = rc.jaw * mw;
    for (i, w) in JAW_FOLLOW.iter().enumerate() {
        if *w > 0.0 {
            put(i, 0.0, jaw * w);
        }
    }
    let lower_drop = 0.95 * jaw + (0.7 * rc.open + rc.lower) * mw;
    let upper_rise = (rc.upper + 0.3 * rc.open) * mw;
    let pout = rc.round * 0.04 * mw;
    for (i, w) in [(55, 0.7), (56, 0.9), (57, 1.0), (58, 0.9), (59, 0.7), (65, 0.9), (66, 1.0), (67, 0.9)] {
        let extra = if i < 60 { pout } else { 0.0 };
        put(i, 0.0, lower_drop * w + extra);
    }
    for (i, w) in [(49, 0.7), (50, 0.9), (51, 1.0), (52, 0.9), (53, 0.7), (61, 0.9), (62, 1.0), (63, 0.9)] {
        let extra = if i < 60 { pout } else { 0.0 };
        put(i, 0.0, -(upper_rise * w + extra));
    }
    for i in [48, 54, 60, 64] {
        put(i, 0.0, 0.45 * jaw);
    }
    // Width and rounding act along the mouth axis, proportional to the offset from the centre.
    for (i, p) in lm.iter().enumerate().take(68).skip(48) {
        let rel = shape::sub(*p, centre);
        let x_rel = (rel[0] * f.right[0] + rel[1] * f.right[1]) / mw; // about -0.5..0.5
        let mut dx = 2.0 * x_rel * (rc.width - 0.25 * rc.round) * mw;
        if i == 60 || i == 64 {
            dx -= 2.0 * x_rel * 0.08 * rc.round * mw; // inner corners round the opening
        }
        put(i, dx, 0.0);
    }
    d
}

/// Upper lids down onto the lower lids (closing at 90% of the way), lower lids up by the rest.
fn blink_shape(lm: &[Point]) -> Vec<Point> {
    let mut d = vec![[0.0f32, 0.0f32]; 68];
    for (up, low) in [(37, 41), (38, 40), (43, 47), (44, 46)] {
        let gap = shape::sub(lm[low], lm[up]);
        d[up] = shape::scale(gap, 0.9);
        d[low] = shape::scale(gap, -0.1);
    }
    d
}

/// Brows up by 3.5% of the face height (inner/middle more than the tails), upper lids a little.
fn brow_shape(f: &FaceFrame) -> Vec<Point> {
    let lift = 0.035 * f.face_height;
    let mut d = vec![[0.0f32, 0.0f32]; 68];
    for (i, w) in
        [(17, 0.5), (18, 0.8), (19, 1.0), (20, 1.0), (21, 0.8), (22, 0.8), (23, 1.0), (24, 1.0), (25, 0.8), (26, 0.5)]
    {
        d[i] = shape::scale(f.up, lift * w);
    }
    for i in [37, 38, 43, 44] {
        d[i] = shape::scale(f.up, lift * 0.25);
    }
    d
}

/// If the photo shows an open mouth, move the inner lips (and a little jaw) to close it.
fn rest_shape(lm: &[Point], f: &FaceFrame) -> Vec<Point> {
    let mut d = vec![[0.0f32, 0.0f32]; 68];
    let down = [-f.up[0], -f.up[1]];
    let along = |v: Point| v[0] * down[0] + v[1] * down[1];
    let gap = along(shape::sub(lm[66], lm[62]));
    if gap <= 0.08 * f.mouth_width {
        return d;
    }
    for (u, l) in [(61, 67), (62, 66), (63, 65)] {
        let g = along(shape::sub(lm[l], lm[u])).max(0.0);
        d[u] = shape::scale(down, 0.4 * g);
        d[l] = shape::scale(down, -0.6 * g);
    }
    for (i, w) in [(55, 0.4), (56, 0.5), (57, 0.6), (58, 0.5), (59, 0.4)] {
        d[i] = shape::scale(down, -w * gap);
    }
    for (i, w) in JAW_FOLLOW.iter().enumerate() {
        if *w > 0.0 {
            d[i] = shape::scale(down, -0.4 * gap * w);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_vowels_open_and_round_ones_narrow() {
        let lm = shape::mean_shape_in_box([0.0, 0.0, 200.0, 200.0]);
        let set = VisemeSet::build(&lm).expect("visemes");
        assert_eq!(set.shapes.len(), NUM_VISEMES);
        let opening = |v: usize| set.shapes[v][66][1] - set.shapes[v][62][1];
        let width = |v: usize| set.shapes[v][54][0] - set.shapes[v][48][0];
        let aa = 9;
        let ou = 13;
        let pp = 0;
        assert!(opening(aa) > 0.2 * set.mouth_width, "aa opens: {}", opening(aa));
        assert!(opening(pp) <= 0.0, "PP keeps the lips together: {}", opening(pp));
        assert!(width(ou) < -0.1 * set.mouth_width, "ou narrows: {}", width(ou));
        assert!(width(11) > 0.1 * set.mouth_width, "ih spreads: {}", width(11));
        assert!(set.rest.iter().all(|d| d[0] == 0.0 && d[1] == 0.0), "mean face has a closed mouth");
        // Blink moves upper lids down to (nearly) the lower lids.
        assert!(set.blink[37][1] > 0.0 && set.blink[41][1] < 0.0);
    }
}
