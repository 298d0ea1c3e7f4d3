//! Runs a parsed TFLite graph ([`super::tflite::Graph`]) with tch on the CPU: the float ops of
//! MediaPipe's face-mesh network (convolutions, depthwise convolutions, PReLU, max pooling,
//! padding, additions). TFLite tensors are NHWC; here they are NCHW-shaped views of the same
//! NHWC memory (libtorch's channels-last layout, which its CPU convolutions run about twice as
//! fast on this network as contiguous NCHW), and the weights are views of theirs, made once at
//! load. Constants (fp16 weights behind DEQUANTIZE) are folded at load.

use super::tflite::{Activation, Graph, OpKind, Padding};
use crate::error::{PipelineError, Result};
use tch::{Kind, Tensor};

fn bad(what: impl std::fmt::Display) -> PipelineError {
    PipelineError::Internal(format!("face-mesh graph: {what}"))
}

/// One prepared operation; `input`/`output` are graph tensor indices.
enum Step {
    Conv {
        input: usize,
        weight: Tensor,
        bias: Option<Tensor>,
        stride: [i64; 2],
        dilation: [i64; 2],
        same: bool,
        groups: i64,
        act: Activation,
    },
    Add {
        a: usize,
        b: usize,
        act: Activation,
    },
    MaxPool {
        input: usize,
        filter: [i64; 2],
        stride: [i64; 2],
        same: bool,
    },
    Pad {
        input: usize,
        /// `constant_pad_nd` order for NCHW: W, H, C, N (before, after each).
        pads: Vec<i64>,
    },
    Prelu {
        input: usize,
        /// `[C]` (one per channel) or `[1, C, H, W]`.
        alpha: Tensor,
    },
}

/// A loaded graph, ready to run.
pub struct GraphRunner {
    steps: Vec<(Step, usize)>,
    tensors: usize,
    input: usize,
    input_shape: Vec<i64>,
    outputs: Vec<usize>,
}

/// A constant's values as a tensor of its TFLite shape.
fn constant(graph: &Graph, folded: &[Option<Vec<f32>>], index: i32) -> Result<Tensor> {
    let i = usize::try_from(index).map_err(|_| bad("a required input is absent"))?;
    let values = folded[i].as_ref().ok_or_else(|| bad(format!("{} is not a constant", graph.tensors[i].name)))?;
    let shape = &graph.tensors[i].shape;
    if shape.iter().product::<i64>() != values.len() as i64 {
        return Err(bad(format!("{}: {} values for shape {shape:?}", graph.tensors[i].name, values.len())));
    }
    Ok(Tensor::from_slice(values).reshape(shape.as_slice()))
}

fn activation_index(graph: &Graph, index: i32) -> Result<usize> {
    usize::try_from(index).map_err(|_| bad("a required input is absent")).and_then(|i| match i < graph.tensors.len() {
        true => Ok(i),
        false => Err(bad(format!("tensor {i}"))),
    })
}

fn apply(x: Tensor, act: Activation) -> Tensor {
    match act {
        Activation::None => x,
        Activation::Relu => x.relu(),
        Activation::ReluN1To1 => x.clamp(-1.0, 1.0),
        Activation::Relu6 => x.clamp(0.0, 6.0),
    }
}

/// TFLite's SAME padding for one spatial axis: (before, after).
fn same_pad(size: i64, kernel: i64, stride: i64, dilation: i64) -> (i64, i64) {
    let out = (size + stride - 1) / stride;
    let total = ((out - 1) * stride + (kernel - 1) * dilation + 1 - size).max(0);
    (total / 2, total - total / 2)
}

/// Pad H and W of an NCHW tensor the SAME way for a `kernel`-sized window.
fn pad_same(x: &Tensor, kernel: [i64; 2], stride: [i64; 2], dilation: [i64; 2], value: f64) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    let (top, bottom) = same_pad(h, kernel[0], stride[0], dilation[0]);
    let (left, right) = same_pad(w, kernel[1], stride[1], dilation[1]);
    match top + bottom + left + right {
        0 => x.shallow_clone(),
        _ => x.pad([left, right, top, bottom], "constant", value),
    }
}

impl GraphRunner {
    pub fn new(graph: &Graph) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        // Fold every op whose inputs are all constants (here: DEQUANTIZE of fp16 weights).
        let mut folded: Vec<Option<Vec<f32>>> = graph.tensors.iter().map(|t| t.data.clone()).collect();
        let mut steps = Vec::new();
        for op in &graph.ops {
            let output = match op.outputs.as_slice() {
                [o] => activation_index(graph, *o)?,
                _ => return Err(bad("an operator with other than one output")),
            };
            let step = match &op.kind {
                OpKind::Dequantize => {
                    let i = activation_index(graph, op.inputs[0])?;
                    match folded[i].clone() {
                        Some(v) => folded[output] = Some(v),
                        None => return Err(bad("DEQUANTIZE of a computed tensor")),
                    }
                    continue;
                }
                OpKind::Conv2d { padding, stride, dilation, act } => {
                    // OHWI viewed as OIHW (channels-last strides).
                    let weight = constant(graph, &folded, op.inputs[1])?.permute([0, 3, 1, 2]);
                    let bias =
                        op.inputs.get(2).filter(|&&b| b >= 0).map(|&b| constant(graph, &folded, b)).transpose()?;
                    let (stride, dilation, same, act) = (*stride, *dilation, *padding == Padding::Same, *act);
                    Step::Conv {
                        input: activation_index(graph, op.inputs[0])?,
                        weight,
                        bias,
                        stride,
                        dilation,
                        same,
                        groups: 1,
                        act,
                    }
                }
                OpKind::DepthwiseConv2d { padding, stride, dilation, act } => {
                    // 1HW(C*m) viewed as (C*m)1HW, one group per input channel.
                    let weight = constant(graph, &folded, op.inputs[1])?.permute([3, 0, 1, 2]);
                    let input = activation_index(graph, op.inputs[0])?;
                    let groups =
                        *graph.tensors[input].shape.last().ok_or_else(|| bad("a depthwise input without shape"))?;
                    let bias =
                        op.inputs.get(2).filter(|&&b| b >= 0).map(|&b| constant(graph, &folded, b)).transpose()?;
                    let (stride, dilation, same, act) = (*stride, *dilation, *padding == Padding::Same, *act);
                    Step::Conv { input, weight, bias, stride, dilation, same, groups, act }
                }
                OpKind::Add { act } => {
                    let (a, b) = match op.inputs.as_slice() {
                        [a, b] => (activation_index(graph, *a)?, activation_index(graph, *b)?),
                        _ => return Err(bad("ADD without two inputs")),
                    };
                    if folded[a].is_some() || folded[b].is_some() {
                        return Err(bad("ADD of a constant is not supported"));
                    }
                    Step::Add { a, b, act: *act }
                }
                OpKind::MaxPool2d { padding, stride, filter } => Step::MaxPool {
                    input: activation_index(graph, op.inputs[0])?,
                    filter: *filter,
                    stride: *stride,
                    same: *padding == Padding::Same,
                },
                OpKind::Pad => {
                    let p = constant(graph, &folded, op.inputs[1])?;
                    let p: Vec<f32> = Vec::<f32>::try_from(p.reshape([-1])).map_err(bad)?;
                    if p.len() != 8 {
                        return Err(bad("PAD of other than a 4-D tensor"));
                    }
                    // NHWC (before, after) pairs -> NCHW from the last axis: W, H, C, N.
                    let pads = [4, 5, 2, 3, 6, 7, 0, 1].iter().map(|&i| p[i] as i64).collect();
                    Step::Pad { input: activation_index(graph, op.inputs[0])?, pads }
                }
                OpKind::Prelu => {
                    let alpha = constant(graph, &folded, op.inputs[1])?;
                    // One value per channel: libtorch's own prelu takes them as `[C]`; any
                    // other alpha broadcasts over NCHW.
                    let shape = alpha.size();
                    let alpha = match shape.as_slice() {
                        [_] => alpha,
                        [1, 1, _] => alpha.reshape([-1]),
                        [_, _, _] => alpha.permute([2, 0, 1]).unsqueeze(0),
                        other => return Err(bad(format!("PReLU alpha of shape {other:?}"))),
                    };
                    Step::Prelu { input: activation_index(graph, op.inputs[0])?, alpha: alpha.contiguous() }
                }
            };
            steps.push((step, output));
        }
        let [input] = graph.inputs.as_slice() else { return Err(bad("the graph has other than one input")) };
        Ok(Self {
            steps,
            tensors: graph.tensors.len(),
            input: *input,
            input_shape: graph.tensors[*input].shape.clone(),
            outputs: graph.outputs.clone(),
        })
    }

    /// The input's NHWC shape, as the file states it.
    pub fn input_shape(&self) -> &[i64] {
        &self.input_shape
    }

    /// Run on an NHWC f32 input of [`Self::input_shape`]; returns the graph outputs as NCHW
    /// tensors (a `[1, 1, 1, N]` NHWC output becomes `[1, N, 1, 1]`: the same values in order).
    pub fn run(&self, input_nhwc: &Tensor) -> Result<Vec<Tensor>> {
        if input_nhwc.size() != self.input_shape || input_nhwc.kind() != Kind::Float {
            return Err(bad(format!(
                "input of shape {:?} ({:?}), expected {:?} float",
                input_nhwc.size(),
                input_nhwc.kind(),
                self.input_shape
            )));
        }
        let _guard = tch::no_grad_guard();
        let mut values: Vec<Option<Tensor>> = (0..self.tensors).map(|_| None).collect();
        values[self.input] = Some(input_nhwc.permute([0, 3, 1, 2]));
        let get = |values: &[Option<Tensor>], i: usize| -> Result<Tensor> {
            values[i]
                .as_ref()
                .map(Tensor::shallow_clone)
                .ok_or_else(|| bad(format!("tensor {i} is used before it is made")))
        };
        for (step, output) in &self.steps {
            let y = match step {
                Step::Conv { input, weight, bias, stride, dilation, same, groups, act } => {
                    let x = get(&values, *input)?;
                    let kernel = [weight.size()[2], weight.size()[3]];
                    let (h, w) = (x.size()[2], x.size()[3]);
                    let pads = match same {
                        true => [
                            same_pad(h, kernel[0], stride[0], dilation[0]),
                            same_pad(w, kernel[1], stride[1], dilation[1]),
                        ],
                        false => [(0, 0); 2],
                    };
                    // Even padding goes into the convolution; TFLite's uneven SAME padding (one
                    // more after) is an explicit pad first.
                    let (x, padding) = match pads[0].0 == pads[0].1 && pads[1].0 == pads[1].1 {
                        true => (x, [pads[0].0, pads[1].0]),
                        false => (pad_same(&x, kernel, *stride, *dilation, 0.0), [0, 0]),
                    };
                    apply(x.conv2d(weight, bias.as_ref(), *stride, padding, *dilation, *groups), *act)
                }
                Step::Add { a, b, act } => apply(get(&values, *a)? + get(&values, *b)?, *act),
                Step::MaxPool { input, filter, stride, same } => {
                    let x = get(&values, *input)?;
                    let x = match same {
                        true => pad_same(&x, *filter, *stride, [1, 1], f64::NEG_INFINITY),
                        false => x,
                    };
                    x.max_pool2d(*filter, *stride, [0, 0], [1, 1], false)
                }
                Step::Pad { input, pads } => get(&values, *input)?.constant_pad_nd(pads.as_slice()),
                Step::Prelu { input, alpha } => {
                    let x = get(&values, *input)?;
                    match alpha.size().as_slice() {
                        [c] if x.size()[1] == *c => x.prelu(alpha),
                        _ => x.relu() - (-&x).relu() * alpha,
                    }
                }
            };
            values[*output] = Some(y);
        }
        self.outputs.iter().map(|&o| get(&values, o)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tflite() {
        // 96 -> 48 with a 3x3 stride-2 window: one extra row/column after, none before.
        assert_eq!(same_pad(96, 3, 2, 1), (0, 1));
        assert_eq!(same_pad(192, 3, 2, 1), (0, 1));
        assert_eq!(same_pad(12, 3, 1, 1), (1, 1));
        assert_eq!(same_pad(6, 2, 2, 1), (0, 0));
    }

    #[test]
    fn max_pool_padding_is_ignored_not_zero() {
        let x = Tensor::from_slice(&[-5.0f32, -4.0, -3.0]).reshape([1, 1, 1, 3]);
        let y =
            pad_same(&x, [1, 2], [1, 2], [1, 1], f64::NEG_INFINITY).max_pool2d([1, 2], [1, 2], [0, 0], [1, 1], false);
        assert_eq!(Vec::<f32>::try_from(y.reshape([-1])).unwrap(), vec![-4.0, -3.0]);
    }
}
