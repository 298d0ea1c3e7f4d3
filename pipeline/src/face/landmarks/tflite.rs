//! Reads a TFLite model file (a FlatBuffer, schema `tensorflow/lite/schema/schema.fbs`) into a
//! plain graph: tensors with their constant data decoded to f32, and the operators with their
//! options. Only what MediaPipe's `face_landmark.tflite` uses is understood; anything else is a
//! clear error naming the operator, never a panic on a bad file.

use crate::error::{PipelineError, Result};

/// One graph tensor. `data` holds constants (weights, biases, paddings) as f32.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: Option<Vec<f32>>,
}

/// How an operator pads its input (TFLite's `Padding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Same,
    Valid,
}

/// The fused activation after an operator (TFLite's `ActivationFunctionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    ReluN1To1,
    Relu6,
}

/// The operators this reader understands, with their options.
#[derive(Debug, Clone, PartialEq)]
pub enum OpKind {
    Add { act: Activation },
    Conv2d { padding: Padding, stride: [i64; 2], dilation: [i64; 2], act: Activation },
    DepthwiseConv2d { padding: Padding, stride: [i64; 2], dilation: [i64; 2], act: Activation },
    Dequantize,
    MaxPool2d { padding: Padding, stride: [i64; 2], filter: [i64; 2] },
    Pad,
    Prelu,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub kind: OpKind,
    /// Tensor indices; -1 marks an optional input that is absent.
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
}

/// The first subgraph of a model.
#[derive(Debug, Clone)]
pub struct Graph {
    pub tensors: Vec<TensorInfo>,
    pub ops: Vec<Op>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
}

fn bad(what: impl std::fmt::Display) -> PipelineError {
    PipelineError::Internal(format!("not a usable TFLite model: {what}"))
}

/// A FlatBuffer table: `pos` is where it starts in `buf`.
#[derive(Clone, Copy)]
struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn read<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N]> {
    buf.get(at..at + N).and_then(|s| s.try_into().ok()).ok_or_else(|| bad(format!("offset {at} is past the end")))
}
fn u16_at(buf: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(read(buf, at)?))
}
fn u32_at(buf: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(read(buf, at)?))
}

impl<'a> Table<'a> {
    fn root(buf: &'a [u8]) -> Result<Self> {
        Ok(Self { buf, pos: u32_at(buf, 0)? as usize })
    }

    /// Where field `id` sits, or None when the table leaves it out (its default applies).
    fn field(&self, id: usize) -> Result<Option<usize>> {
        let soffset = i32::from_le_bytes(read(self.buf, self.pos)?) as i64;
        let vtable = usize::try_from(self.pos as i64 - soffset).map_err(|_| bad("vtable offset"))?;
        let vt_len = u16_at(self.buf, vtable)? as usize;
        let entry = 4 + 2 * id;
        if entry + 2 > vt_len {
            return Ok(None);
        }
        match u16_at(self.buf, vtable + entry)? {
            0 => Ok(None),
            off => Ok(Some(self.pos + off as usize)),
        }
    }

    fn u8_or(&self, id: usize, default: u8) -> Result<u8> {
        Ok(match self.field(id)? {
            Some(p) => read::<1>(self.buf, p)?[0],
            None => default,
        })
    }
    fn i32_or(&self, id: usize, default: i32) -> Result<i32> {
        Ok(match self.field(id)? {
            Some(p) => i32::from_le_bytes(read(self.buf, p)?),
            None => default,
        })
    }

    /// Follow the offset stored at field `id`.
    fn indirect(&self, id: usize) -> Result<Option<usize>> {
        match self.field(id)? {
            Some(p) => Ok(Some(p + u32_at(self.buf, p)? as usize)),
            None => Ok(None),
        }
    }
    fn table(&self, id: usize) -> Result<Option<Table<'a>>> {
        Ok(self.indirect(id)?.map(|pos| Table { buf: self.buf, pos }))
    }
    /// A vector field: (first element, length).
    fn vector(&self, id: usize) -> Result<(usize, usize)> {
        match self.indirect(id)? {
            Some(v) => Ok((v + 4, u32_at(self.buf, v)? as usize)),
            None => Ok((0, 0)),
        }
    }
    fn tables(&self, id: usize) -> Result<Vec<Table<'a>>> {
        let (start, len) = self.vector(id)?;
        (0..len)
            .map(|i| {
                let at = start + 4 * i;
                Ok(Table { buf: self.buf, pos: at + u32_at(self.buf, at)? as usize })
            })
            .collect()
    }
    fn i32s(&self, id: usize) -> Result<Vec<i32>> {
        let (start, len) = self.vector(id)?;
        (0..len).map(|i| Ok(i32::from_le_bytes(read(self.buf, start + 4 * i)?))).collect()
    }
    fn bytes(&self, id: usize) -> Result<&'a [u8]> {
        let (start, len) = self.vector(id)?;
        self.buf.get(start..start + len).ok_or_else(|| bad("a byte vector runs past the end"))
    }
    fn string(&self, id: usize) -> Result<String> {
        Ok(String::from_utf8_lossy(self.bytes(id)?).into_owned())
    }
}

/// IEEE half to f32 (normals, subnormals, infinities, NaN).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value = f * 2^-24.
            let v = f as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

fn activation(code: u8) -> Result<Activation> {
    Ok(match code {
        0 => Activation::None,
        1 => Activation::Relu,
        2 => Activation::ReluN1To1,
        3 => Activation::Relu6,
        other => return Err(bad(format!("fused activation {other} is not supported"))),
    })
}

fn padding(code: u8) -> Result<Padding> {
    Ok(match code {
        0 => Padding::Same,
        1 => Padding::Valid,
        other => return Err(bad(format!("padding {other}"))),
    })
}

/// Decode one buffer as f32 values by the tensor's type (FLOAT32 = 0, FLOAT16 = 1, INT32 = 2).
fn decode_data(bytes: &[u8], dtype: u8, name: &str) -> Result<Vec<f32>> {
    let values = match dtype {
        0 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        1 => bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        2 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
        other => return Err(bad(format!("tensor {name} has type {other}, which is not supported"))),
    };
    Ok(values)
}

fn op_kind(code: i32, options: Option<Table>) -> Result<OpKind> {
    let opt = |name: &str| options.ok_or_else(|| bad(format!("{name} without its options")));
    Ok(match code {
        0 => OpKind::Add { act: activation(options.map(|o| o.u8_or(0, 0)).transpose()?.unwrap_or(0))? },
        3 => {
            let o = opt("CONV_2D")?;
            OpKind::Conv2d {
                padding: padding(o.u8_or(0, 0)?)?,
                stride: [o.i32_or(2, 1)? as i64, o.i32_or(1, 1)? as i64],
                act: activation(o.u8_or(3, 0)?)?,
                dilation: [o.i32_or(5, 1)? as i64, o.i32_or(4, 1)? as i64],
            }
        }
        4 => {
            let o = opt("DEPTHWISE_CONV_2D")?;
            OpKind::DepthwiseConv2d {
                padding: padding(o.u8_or(0, 0)?)?,
                stride: [o.i32_or(2, 1)? as i64, o.i32_or(1, 1)? as i64],
                act: activation(o.u8_or(4, 0)?)?,
                dilation: [o.i32_or(6, 1)? as i64, o.i32_or(5, 1)? as i64],
            }
        }
        6 => OpKind::Dequantize,
        17 => {
            let o = opt("MAX_POOL_2D")?;
            if o.u8_or(5, 0)? != 0 {
                return Err(bad("MAX_POOL_2D with a fused activation"));
            }
            OpKind::MaxPool2d {
                padding: padding(o.u8_or(0, 0)?)?,
                stride: [o.i32_or(2, 1)? as i64, o.i32_or(1, 1)? as i64],
                filter: [o.i32_or(4, 1)? as i64, o.i32_or(3, 1)? as i64],
            }
        }
        34 => OpKind::Pad,
        54 => OpKind::Prelu,
        other => return Err(bad(format!("builtin operator {other} is not supported by this reader"))),
    })
}

impl Graph {
    /// Parse a `.tflite` file's bytes (first subgraph only).
    pub fn parse(buf: &[u8]) -> Result<Self> {
        if buf.get(4..8) != Some(b"TFL3".as_slice()) {
            return Err(bad("the file identifier is not TFL3"));
        }
        let model = Table::root(buf)?;
        let codes: Vec<i32> =
            model.tables(1)?.iter().map(|c| Ok((c.u8_or(0, 0)? as i32).max(c.i32_or(3, 0)?))).collect::<Result<_>>()?;
        let buffers = model.tables(4)?;
        let subgraph = *model.tables(2)?.first().ok_or_else(|| bad("no subgraph"))?;
        let tensors = subgraph
            .tables(0)?
            .iter()
            .map(|t| {
                let name = t.string(3)?;
                let shape = t.i32s(0)?.into_iter().map(i64::from).collect();
                let buffer = t.i32_or(2, 0)? as usize;
                let bytes = match buffer {
                    0 => &[][..],
                    b => buffers.get(b).ok_or_else(|| bad(format!("tensor {name}: buffer {b}")))?.bytes(0)?,
                };
                let data = match bytes.is_empty() {
                    true => None,
                    false => Some(decode_data(bytes, t.u8_or(1, 0)?, &name)?),
                };
                Ok(TensorInfo { name, shape, data })
            })
            .collect::<Result<Vec<_>>>()?;
        let ops = subgraph
            .tables(3)?
            .iter()
            .map(|o| {
                let index = o.i32_or(0, 0)? as usize;
                let code = *codes.get(index).ok_or_else(|| bad(format!("operator code {index}")))?;
                Ok(Op { kind: op_kind(code, o.table(4)?)?, inputs: o.i32s(1)?, outputs: o.i32s(2)? })
            })
            .collect::<Result<Vec<_>>>()?;
        let index = |v: Vec<i32>| -> Result<Vec<usize>> {
            v.into_iter()
                .map(|i| {
                    usize::try_from(i).ok().filter(|&i| i < tensors.len()).ok_or_else(|| bad(format!("tensor {i}")))
                })
                .collect()
        };
        let (inputs, outputs) = (index(subgraph.i32s(1)?)?, index(subgraph.i32s(2)?)?);
        for op in &ops {
            for &t in op.inputs.iter().chain(&op.outputs) {
                if t >= tensors.len() as i32 {
                    return Err(bad(format!("an operator names tensor {t} of {}", tensors.len())));
                }
            }
        }
        Ok(Self { tensors, ops, inputs, outputs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_decode() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"TFL3", b"\x08\0\0\0TFL3", b"\xff\xff\xff\x7fTFL3\0\0\0\0\0\0\0\0"] {
            assert!(Graph::parse(bytes).is_err());
        }
        let mut long = vec![0u8; 64];
        long[4..8].copy_from_slice(b"TFL3");
        long[0] = 60;
        assert!(Graph::parse(&long).is_err());
    }
}
