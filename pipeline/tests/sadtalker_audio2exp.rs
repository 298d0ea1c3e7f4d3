//! Parity of audio2exp (`SimpleWrapperV2` + `Audio2Exp.test`) with the golden fixture
//! `audio2exp.io.safetensors` using the full-size random weights `audio2exp.weights.safetensors`
//! (fp16 stored, upcast to fp32), and equivalence of the batched pass with the reference's
//! 10-frame chunking.

use crate::sadtalker_common::{check, device, f64s, get, io_and_weights, max_abs_diff};
use tch::Tensor;
use vipavatar_pipeline::sadtalker::audio2exp::Audio2Exp;
use vipavatar_pipeline::sadtalker::batch::CoeffBatch;

fn batch(fx: &std::collections::HashMap<String, Tensor>, case: &str) -> CoeffBatch {
    let mels = get(fx, &format!("in.{case}indiv_mels")).shallow_clone();
    CoeffBatch {
        num_frames: mels.size()[1] as usize,
        indiv_mels: mels,
        ref_coeff: get(fx, &format!("in.{case}ref")).shallow_clone(),
        ratio: get(fx, &format!("in.{case}ratio_gt")).shallow_clone(),
    }
}

#[test]
fn sadtalker_audio2exp_matches_reference() {
    let Some((fx, weights)) = io_and_weights("audio2exp.io.safetensors", "audio2exp.weights.safetensors") else {
        return;
    };
    let model = Audio2Exp::from_checkpoint(&weights, device()).expect("load audio2exp");
    for case in ["", "short."] {
        let out = model.predict(&batch(&fx, case));
        check(&fx, &format!("out.{case}exp_coeff_pred"), &out, 1e-4);
    }
}

#[test]
fn sadtalker_audio2exp_batched_equals_ten_frame_chunks() {
    let Some((fx, weights)) = io_and_weights("audio2exp.io.safetensors", "audio2exp.weights.safetensors") else {
        return;
    };
    let model = Audio2Exp::from_checkpoint(&weights, device()).expect("load audio2exp");
    let b = batch(&fx, "");
    let batched = model.predict(&b);
    // The reference loop: frames [i, i + 10) at a time.
    let t = b.num_frames as i64;
    let dev = model.var_store().device();
    let mels = b.indiv_mels.reshape([t, 1, 80, 16]).to_device(dev);
    let ref_exp = b.ref_coeff.reshape([t, 70]).narrow(1, 0, 64).to_device(dev);
    let ratio = b.ratio.reshape([t, 1]).to_device(dev);
    let chunks: Vec<Tensor> = (0..t)
        .step_by(10)
        .map(|i| {
            let len = 10.min(t - i);
            tch::no_grad(|| {
                model.net().forward(&mels.narrow(0, i, len), &ref_exp.narrow(0, i, len), &ratio.narrow(0, i, len))
            })
        })
        .collect();
    let chunked = Tensor::cat(&chunks, 0).reshape([1, t, 64]);
    let err = max_abs_diff(&f64s(&batched), &f64s(&chunked));
    eprintln!("sadtalker audio2exp: batched vs 10-frame chunks max abs diff {err:.3e}");
    assert!(err <= 1e-4, "batched and chunked differ by {err}");
}
