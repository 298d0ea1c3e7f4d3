//! RGB -> I420 (planar YUV 4:2:0, BT.601 limited range), the layout x264 encodes, so ffmpeg
//! reads frames it can hand to x264 as they are. ffmpeg 5.1's own rgb24 -> yuv420p path costs
//! about 0.4 ms per 256 px frame on the encoder's process, which is the slowest stage of a
//! stream; done here, on the renderer's side, it is a few times cheaper and halves the bytes
//! that cross the pipe.

/// Append the I420 planes of `rgb` (`width` x `height`, both even, 3 bytes per pixel) to `out`:
/// the full-size Y plane, then U and V at half size, each chroma sample from the mean of its
/// 2x2 block.
pub fn rgb_to_i420(rgb: &[u8], width: usize, height: usize, out: &mut Vec<u8>) {
    debug_assert!(width.is_multiple_of(2) && height.is_multiple_of(2) && rgb.len() == width * height * 3);
    let (cw, ch) = (width / 2, height / 2);
    let start = out.len();
    out.resize(start + width * height + 2 * cw * ch, 0);
    let (y_plane, chroma) = out[start..].split_at_mut(width * height);
    let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
    let row_bytes = width * 3;
    for by in 0..ch {
        let top = &rgb[2 * by * row_bytes..][..row_bytes];
        let bottom = &rgb[(2 * by + 1) * row_bytes..][..row_bytes];
        let (y_top, y_bottom) = y_plane[2 * by * width..][..2 * width].split_at_mut(width);
        luma_row(top, y_top);
        luma_row(bottom, y_bottom);
        let (u_row, v_row) = (&mut u_plane[by * cw..][..cw], &mut v_plane[by * cw..][..cw]);
        for (bx, (t, b)) in top.chunks_exact(6).zip(bottom.chunks_exact(6)).enumerate() {
            // Sums of four samples: the mean's rounding is folded into the final shift.
            let r = t[0] as i32 + t[3] as i32 + b[0] as i32 + b[3] as i32;
            let g = t[1] as i32 + t[4] as i32 + b[1] as i32 + b[4] as i32;
            let bl = t[2] as i32 + t[5] as i32 + b[2] as i32 + b[5] as i32;
            u_row[bx] = (((-38 * r - 74 * g + 112 * bl + 512) >> 10) + 128) as u8;
            v_row[bx] = (((112 * r - 94 * g - 18 * bl + 512) >> 10) + 128) as u8;
        }
    }
}

/// BT.601 limited-range luma of one row, 8-bit fixed point (16..=235).
fn luma_row(rgb: &[u8], y: &mut [u8]) {
    for (px, out) in rgb.chunks_exact(3).zip(y.iter_mut()) {
        let (r, g, b) = (px[0] as u32, px[1] as u32, px[2] as u32);
        *out = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_land_on_their_bt601_codes() {
        // One 2x2 block per colour: (Y, U, V) as BT.601 limited range defines them.
        for (rgb, want) in [
            ([0u8, 0, 0], (16u8, 128u8, 128u8)),
            ([255, 255, 255], (235, 128, 128)),
            ([255, 0, 0], (82, 90, 240)),
            ([0, 255, 0], (145, 54, 34)),
            ([0, 0, 255], (41, 240, 110)),
        ] {
            let frame: Vec<u8> = rgb.iter().copied().cycle().take(12).collect();
            let mut out = Vec::new();
            rgb_to_i420(&frame, 2, 2, &mut out);
            assert_eq!(out.len(), 6);
            assert!(out[..4].iter().all(|&y| y.abs_diff(want.0) <= 1), "{rgb:?}: Y {:?} vs {}", &out[..4], want.0);
            assert!(
                out[4].abs_diff(want.1) <= 1 && out[5].abs_diff(want.2) <= 1,
                "{rgb:?}: UV {:?} vs {want:?}",
                &out[4..]
            );
        }
    }

    #[test]
    fn planes_keep_their_places_and_chroma_is_the_block_mean() {
        // 4x2: a black block beside a white one; appended after what the buffer held.
        let mut frame = vec![0u8; 4 * 2 * 3];
        for row in 0..2 {
            frame[row * 12 + 6..row * 12 + 12].fill(255);
        }
        let mut out = vec![7u8];
        rgb_to_i420(&frame, 4, 2, &mut out);
        assert_eq!(out, vec![7, 16, 16, 235, 235, 16, 16, 235, 235, 128, 128, 128, 128]);
        // A block of one red and three black pixels has a quarter of red's chroma offset.
        let mut block = vec![0u8; 12];
        block[0] = 255;
        let mut out = Vec::new();
        rgb_to_i420(&block, 2, 2, &mut out);
        assert!(out[4].abs_diff(128 - (128 - 90) / 4) <= 1 && out[5].abs_diff(128 + (240 - 128) / 4) <= 1, "{out:?}");
    }
}
