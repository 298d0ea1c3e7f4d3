//! In-process audio decoding: symphonia demuxes and decodes WAV, MP3, FLAC, Ogg Vorbis, AAC/M4A,
//! AIFF and CAF; channels are averaged to mono while decoding and rubato's FFT resampler brings
//! the result to 16 kHz. What symphonia cannot read (Opus, WebM/Opus, AMR, ...) is reported as
//! [`Native::Unsupported`] so the caller can fall back to the ffmpeg path.

use super::{AudioLimits, SAMPLE_RATE};
use crate::error::{PipelineError, Result};
use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// The outcome of a native decode attempt.
pub enum Native {
    /// Mono samples at 16 kHz (not yet checked against the minimum length).
    Decoded(Vec<f32>),
    /// The container or codec is not one symphonia reads; try another decoder.
    Unsupported(String),
}

/// Packets that fail to decode before this many succeeded make the whole input a decode failure
/// (a damaged file keeps what decoded before the damage).
const MAX_LEADING_BAD_PACKETS: usize = 8;

/// Decode `bytes` in process. Enforces `limits.max_seconds` on the decoded samples.
pub fn decode(bytes: &[u8], limits: &AudioLimits) -> Result<Native> {
    let mss =
        MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes.to_vec())), MediaSourceStreamOptions::default());
    let probed = match symphonia::default::get_probe().format(
        &Hint::new(),
        mss,
        &FormatOptions { enable_gapless: true, ..FormatOptions::default() },
        &MetadataOptions::default(),
    ) {
        Ok(p) => p,
        Err(e) => return Ok(Native::Unsupported(format!("container: {e}"))),
    };
    let mut format = probed.format;
    let Some(track) = format.tracks().iter().find(|t| t.codec_params.codec != CODEC_TYPE_NULL) else {
        return Ok(Native::Unsupported("no decodable audio track".into()));
    };
    let params = track.codec_params.clone();
    let track_id = track.id;
    let Some(rate) = params.sample_rate.filter(|&r| r > 0) else {
        return Ok(Native::Unsupported("the track has no sample rate".into()));
    };
    let mut decoder = match symphonia::default::get_codecs().make(&params, &DecoderOptions::default()) {
        Ok(d) => d,
        Err(e) => return Ok(Native::Unsupported(format!("codec: {e}"))),
    };
    let header_seconds = params.n_frames.map(|n| n as f64 / rate as f64);
    let max_frames = (limits.max_seconds.max(0.0) * rate as f64).ceil() as usize;
    let mut mono: Vec<f32> = Vec::with_capacity(max_frames.min(rate as usize * 60));
    let mut buf: Option<SampleBuffer<f32>> = None;
    let (mut good, mut bad) = (0usize, 0usize);
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            // End of stream, or a file cut short: keep what was decoded.
            Err(SymError::IoError(_)) | Err(SymError::ResetRequired) => break,
            Err(e) if good > 0 => {
                tracing::warn!(error = %e, "audio container damaged after {good} packets; keeping what decoded");
                break;
            }
            Err(e) => return Ok(Native::Unsupported(format!("demux: {e}"))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(e)) => {
                bad += 1;
                if good == 0 && bad >= MAX_LEADING_BAD_PACKETS {
                    return Ok(Native::Unsupported(format!("decode: {e}")));
                }
                continue;
            }
            Err(SymError::IoError(_)) => break,
            Err(e) if good > 0 => {
                tracing::warn!(error = %e, "audio decoding stopped early; keeping what decoded");
                break;
            }
            Err(e) => return Ok(Native::Unsupported(format!("decode: {e}"))),
        };
        good += 1;
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let frames = decoded.frames();
        let sb = match buf.as_mut() {
            Some(b) if b.capacity() >= frames * channels => b,
            _ => buf.insert(SampleBuffer::<f32>::new(decoded.capacity() as u64, spec)),
        };
        sb.copy_interleaved_ref(decoded);
        // Plain average of the channels (what librosa's mono=True does).
        let gain = 1.0 / channels as f32;
        mono.extend(sb.samples().chunks_exact(channels).map(|f| {
            let v = f.iter().sum::<f32>() * gain;
            if v.is_finite() {
                v.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        }));
        if mono.len() > max_frames {
            let seconds = header_seconds.filter(|&h| h > limits.max_seconds).unwrap_or(mono.len() as f64 / rate as f64);
            return Err(PipelineError::AudioTooLong { seconds, max: limits.max_seconds });
        }
    }
    if mono.is_empty() {
        return Ok(Native::Unsupported("no audio samples could be decoded".into()));
    }
    Ok(Native::Decoded(resample(&mono, rate)?))
}

/// Resample mono `input` at `rate` Hz to [`SAMPLE_RATE`] with rubato's FFT resampler; the output
/// has `round(len * 16000 / rate)` samples, aligned with the input (the resampler's delay removed).
pub fn resample(input: &[f32], rate: u32) -> Result<Vec<f32>> {
    if rate == SAMPLE_RATE {
        return Ok(input.to_vec());
    }
    let expected = ((input.len() as u64 * SAMPLE_RATE as u64 + rate as u64 / 2) / rate as u64) as usize;
    let err = |e: &dyn std::fmt::Display| PipelineError::Internal(format!("resample {rate} Hz -> 16 kHz: {e}"));
    let mut r = FftFixedIn::<f32>::new(rate as usize, SAMPLE_RATE as usize, 1024, 2, 1).map_err(|e| err(&e))?;
    let delay = r.output_delay();
    let mut out: Vec<f32> = Vec::with_capacity(expected + delay + 2048);
    let mut pos = 0;
    loop {
        let need = r.input_frames_next();
        if pos + need > input.len() {
            break;
        }
        let o = r.process(&[&input[pos..pos + need]], None).map_err(|e| err(&e))?;
        out.extend_from_slice(&o[0]);
        pos += need;
    }
    // The tail padded with zeros, then zeros until the delayed output is complete.
    let mut block = vec![0.0f32; r.input_frames_next()];
    let tail = input.len() - pos;
    block[..tail].copy_from_slice(&input[pos..]);
    while out.len() < expected + delay {
        let o = r.process(&[&block], None).map_err(|e| err(&e))?;
        if o[0].is_empty() {
            break;
        }
        out.extend_from_slice(&o[0]);
        block.iter_mut().for_each(|v| *v = 0.0);
    }
    let mut out: Vec<f32> = out.into_iter().skip(delay).take(expected).map(|v| v.clamp(-1.0, 1.0)).collect();
    out.resize(expected, 0.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_length_pitch_and_level() {
        for rate in [8_000u32, 22_050, 44_100, 48_000] {
            let n = rate as usize * 2;
            let x: Vec<f32> =
                (0..n).map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin()).collect();
            let y = resample(&x, rate).expect("resample");
            assert_eq!(y.len(), 32_000, "{rate}");
            // Aligned: the resampled sine matches the ideal one in the middle of the clip to
            // within a fraction of an output sample (0.05 at this slope is 0.36 samples, 23 us).
            let ideal = |i: usize| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin();
            let err = (4_000..28_000).map(|i| (y[i] - ideal(i)).abs()).fold(0.0f32, f32::max);
            assert!(err < 0.05, "{rate}: max error {err}");
        }
    }
}
