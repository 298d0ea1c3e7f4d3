//! Strict reader for dlib's binary serialization of `shape_predictor` (the `.dat` files).
//!
//! dlib's encoding, as used here:
//! - integers: one control byte (low nibble = number of magnitude bytes that follow, little-endian;
//!   bit 0x80 = negative; bits 0x70 are never set by dlib's writer), then the magnitude bytes;
//! - floats: a `float_details` pair (int64 mantissa, int16 exponent), value = mantissa * 2^exponent,
//!   with exponents 32000 / 32001 / 32002 meaning +inf / -inf / NaN;
//! - `matrix<T,0,1>`: rows and cols as signed longs (negated by newer dlib), then the elements
//!   row-major; `std::vector`: its size as unsigned long, then the items; `vector<float,2>`: x, y.
//!
//! `shape_predictor` itself is `int version (= 1)`, `initial_shape` (column matrix),
//! `forests: vector<vector<regression_tree>>`, `anchor_idx: vector<vector<unsigned long>>`,
//! `deltas: vector<vector<vector<float,2>>>`; a `regression_tree` is `splits:
//! vector<{idx1, idx2: unsigned long, thresh: float}>` followed by `leaf_values:
//! vector<matrix<float,0,1>>`.

/// A decoding failure: what went wrong and at which byte offset.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatError {
    pub offset: usize,
    pub reason: String,
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {})", self.reason, self.offset)
    }
}

pub type FormatResult<T> = Result<T, FormatError>;

/// One split node: go to the left child when `f[idx1] - f[idx2] > thresh`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    pub idx1: u32,
    pub idx2: u32,
    pub thresh: f32,
}

/// One cascade level with its trees stored flat (all trees of a model have the same size).
#[derive(Debug, Clone, PartialEq)]
pub struct Cascade {
    /// `trees * splits_per_tree` split nodes, tree after tree, each in breadth-first order.
    pub splits: Vec<Split>,
    /// `trees * leaves_per_tree * shape_len` leaf offsets, tree after tree, leaf after leaf.
    pub leaves: Vec<f32>,
    /// Per feature pixel: the shape point it is anchored to.
    pub anchors: Vec<u32>,
    /// Per feature pixel: its offset from the anchor in the mean-shape frame.
    pub deltas: Vec<[f32; 2]>,
}

/// The decoded model, validated for internal consistency.
#[derive(Debug, Clone, PartialEq)]
pub struct RawModel {
    /// Mean shape, `x0, y0, x1, y1, ...` in the unit box of the face rectangle.
    pub initial_shape: Vec<f32>,
    pub cascades: Vec<Cascade>,
    pub trees_per_cascade: usize,
    pub splits_per_tree: usize,
    pub leaves_per_tree: usize,
}

/// A cursor over dlib-serialized bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn fail<T>(&self, reason: impl Into<String>) -> FormatResult<T> {
        Err(FormatError { offset: self.pos, reason: reason.into() })
    }

    /// Control byte and magnitude of one integer; `max_bytes` is the C++ type's size.
    #[inline]
    fn magnitude(&mut self, max_bytes: usize, what: &str) -> FormatResult<(bool, u64)> {
        let Some(&control) = self.buf.get(self.pos) else {
            return self.fail(format!("unexpected end of data reading {what}"));
        };
        if control & 0x70 != 0 {
            return self.fail(format!("invalid integer control byte {control:#04x} for {what}"));
        }
        let n = usize::from(control & 0x0F);
        if n == 0 || n > max_bytes {
            return self.fail(format!("{what} has {n} magnitude bytes, expected 1..={max_bytes}"));
        }
        let Some(bytes) = self.buf.get(self.pos + 1..self.pos + 1 + n) else {
            return self.fail(format!("unexpected end of data reading {what}"));
        };
        let mut value = 0u64;
        for &b in bytes.iter().rev() {
            value = (value << 8) | u64::from(b);
        }
        self.pos += 1 + n;
        Ok((control & 0x80 != 0, value))
    }

    /// An unsigned integer of `max_bytes` bytes (`unsigned long` = 8 on LP64).
    pub fn read_unsigned(&mut self, max_bytes: usize, what: &str) -> FormatResult<u64> {
        let start = self.pos;
        let (negative, value) = self.magnitude(max_bytes, what)?;
        if negative {
            return Err(FormatError {
                offset: start,
                reason: format!("{what} is an unsigned integer but has the sign bit set"),
            });
        }
        Ok(value)
    }

    /// A signed integer of `max_bytes` bytes (int = 4, long = 8, int16 = 2, int64 = 8).
    pub fn read_signed(&mut self, max_bytes: usize, what: &str) -> FormatResult<i64> {
        let start = self.pos;
        let (negative, magnitude) = self.magnitude(max_bytes, what)?;
        let bits = 8 * max_bytes as u32;
        // Largest magnitude that fits in the signed type (one more for negative values).
        let max_pos = (1u64 << (bits - 1)) - 1;
        let limit = if negative { max_pos + 1 } else { max_pos };
        if magnitude > limit {
            return Err(FormatError { offset: start, reason: format!("{what} overflows a {bits}-bit signed integer") });
        }
        Ok(if negative { (magnitude as i64).wrapping_neg() } else { magnitude as i64 })
    }

    /// A float serialized as dlib `float_details` (binary format only; the pre-2013 ASCII format
    /// is rejected).
    #[inline]
    pub fn read_f32(&mut self, what: &str) -> FormatResult<f32> {
        let mantissa = self.read_signed(8, what)?;
        let exponent = self.read_signed(2, what)? as i32;
        Ok(float_from_details(mantissa, exponent))
    }

    /// A `std::vector` size, checked against the bytes left (each item takes at least
    /// `min_item_bytes`), so corrupt sizes cannot trigger huge allocations.
    pub fn read_len(&mut self, min_item_bytes: usize, what: &str) -> FormatResult<usize> {
        let start = self.pos;
        let n = self.read_unsigned(8, what)?;
        let needed = n.checked_mul(min_item_bytes as u64);
        match needed {
            Some(needed) if needed <= self.remaining() as u64 => Ok(n as usize),
            _ => Err(FormatError {
                offset: start,
                reason: format!("{what} = {n} is larger than the {} bytes left", self.remaining()),
            }),
        }
    }

    /// A `matrix<float,0,1>`: returns its row count after checking it has exactly one column.
    pub fn read_column_header(&mut self, what: &str) -> FormatResult<usize> {
        let start = self.pos;
        let rows = self.read_signed(8, what)?.unsigned_abs();
        let cols = self.read_signed(8, what)?.unsigned_abs();
        if cols != 1 {
            return Err(FormatError {
                offset: start,
                reason: format!("{what} has {cols} columns, expected a column vector"),
            });
        }
        // Each float takes at least 4 bytes (two integers of at least 2 bytes each).
        if rows.saturating_mul(4) > self.remaining() as u64 {
            return Err(FormatError {
                offset: start,
                reason: format!("{what} claims {rows} rows, more than the data left"),
            });
        }
        Ok(rows as usize)
    }

    /// Append a column matrix's `rows` floats to `out`, requiring finite values.
    pub fn read_finite_floats(&mut self, rows: usize, out: &mut Vec<f32>, what: &str) -> FormatResult<()> {
        out.reserve(rows);
        for _ in 0..rows {
            let start = self.pos;
            let v = self.read_f32(what)?;
            if !v.is_finite() {
                return Err(FormatError { offset: start, reason: format!("{what} contains a non-finite value") });
            }
            out.push(v);
        }
        Ok(())
    }
}

/// `mantissa * 2^exponent` as dlib's `float_details` converts it to `float`: the mantissa is first
/// rounded to float, then scaled (exactly, via f64, so rounding happens once more at most at the end,
/// as `ldexpf` does).
pub fn float_from_details(mantissa: i64, exponent: i32) -> f32 {
    const IS_INF: i32 = 32000;
    const IS_NINF: i32 = 32001;
    if exponent == IS_INF {
        return f32::INFINITY;
    }
    if exponent == IS_NINF {
        return f32::NEG_INFINITY;
    }
    if exponent > IS_NINF {
        return f32::NAN;
    }
    let m = mantissa as f32;
    if m == 0.0 {
        return m;
    }
    // Beyond +-1200 the result is 0 or inf for any float mantissa; clamping keeps the two
    // power-of-two factors inside f64's normal range so the products stay exact.
    let e = exponent.clamp(-1200, 1200);
    let half = e / 2;
    (f64::from(m) * pow2(half) * pow2(e - half)) as f32
}

/// 2^e for |e| <= 1000, built from the exponent bits (exact).
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// Decode and validate a whole `shape_predictor`; every byte must be consumed.
pub fn parse_shape_predictor(bytes: &[u8]) -> FormatResult<RawModel> {
    let mut r = Reader::new(bytes);
    let version = r.read_signed(4, "version")?;
    if version != 1 {
        return Err(FormatError {
            offset: 0,
            reason: format!("unsupported shape_predictor version {version}, expected 1"),
        });
    }

    let rows = r.read_column_header("initial_shape")?;
    if rows == 0 || rows % 2 != 0 {
        return r.fail(format!("initial_shape has {rows} values, expected a positive even count"));
    }
    let mut initial_shape = Vec::new();
    r.read_finite_floats(rows, &mut initial_shape, "initial_shape")?;
    let shape_len = rows;
    let num_parts = shape_len / 2;

    let num_cascades = r.read_len(1, "number of cascades")?;
    if num_cascades == 0 {
        return r.fail("the model has no cascades");
    }
    let mut shape = TreeShape::default();
    let mut cascades = Vec::with_capacity(num_cascades);
    for c in 0..num_cascades {
        cascades.push(read_forest(&mut r, c, shape_len, &mut shape)?);
    }

    let n = r.read_len(1, "anchor_idx size")?;
    if n != num_cascades {
        return r.fail(format!("anchor_idx has {n} cascades, forests have {num_cascades}"));
    }
    for (c, cascade) in cascades.iter_mut().enumerate() {
        let what = format!("anchor_idx[{c}]");
        let count = r.read_len(2, &what)?;
        cascade.anchors.reserve(count);
        for _ in 0..count {
            let start = r.position();
            let a = r.read_unsigned(8, &what)?;
            if a >= num_parts as u64 {
                return Err(FormatError {
                    offset: start,
                    reason: format!("{what} names part {a}, the shape has {num_parts}"),
                });
            }
            cascade.anchors.push(a as u32);
        }
    }

    let n = r.read_len(1, "deltas size")?;
    if n != num_cascades {
        return r.fail(format!("deltas has {n} cascades, forests have {num_cascades}"));
    }
    for (c, cascade) in cascades.iter_mut().enumerate() {
        let what = format!("deltas[{c}]");
        let count = r.read_len(8, &what)?;
        if count != cascade.anchors.len() {
            return r.fail(format!("{what} has {count} entries, anchor_idx[{c}] has {}", cascade.anchors.len()));
        }
        let mut xy = Vec::with_capacity(2 * count);
        r.read_finite_floats(2 * count, &mut xy, &what)?;
        cascade.deltas = xy.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
    }

    if r.remaining() != 0 {
        return r.fail(format!("{} unexpected trailing bytes", r.remaining()));
    }
    for (c, cascade) in cascades.iter().enumerate() {
        let features = cascade.anchors.len() as u32;
        if let Some(s) = cascade.splits.iter().find(|s| s.idx1 >= features || s.idx2 >= features) {
            return Err(FormatError {
                offset: bytes.len(),
                reason: format!(
                    "cascade {c} has a split on feature {}/{} but only {features} feature pixels",
                    s.idx1, s.idx2
                ),
            });
        }
    }
    Ok(RawModel {
        initial_shape,
        cascades,
        trees_per_cascade: shape.trees,
        splits_per_tree: shape.splits,
        leaves_per_tree: shape.leaves,
    })
}

/// Tree sizes fixed by the first tree read; every other tree must match.
#[derive(Default)]
struct TreeShape {
    known: bool,
    trees: usize,
    splits: usize,
    leaves: usize,
}

fn read_forest(r: &mut Reader<'_>, c: usize, shape_len: usize, shape: &mut TreeShape) -> FormatResult<Cascade> {
    let num_trees = r.read_len(2, &format!("forest {c} size"))?;
    if num_trees == 0 {
        return r.fail(format!("forest {c} has no trees"));
    }
    if shape.known && num_trees != shape.trees {
        return r.fail(format!("forest {c} has {num_trees} trees, forest 0 has {}", shape.trees));
    }
    let mut cascade = Cascade { splits: Vec::new(), leaves: Vec::new(), anchors: Vec::new(), deltas: Vec::new() };
    for t in 0..num_trees {
        let what = format!("tree {t} of forest {c}");
        let start = r.position();
        let n_splits = r.read_len(3, &what)?;
        for _ in 0..n_splits {
            let idx1 = r.read_unsigned(8, &what)?;
            let idx2 = r.read_unsigned(8, &what)?;
            let thresh = r.read_f32(&what)?;
            if idx1 > u64::from(u32::MAX) || idx2 > u64::from(u32::MAX) || !thresh.is_finite() {
                return r.fail(format!("{what} has an invalid split ({idx1}, {idx2}, {thresh})"));
            }
            cascade.splits.push(Split { idx1: idx1 as u32, idx2: idx2 as u32, thresh });
        }
        let n_leaves = r.read_len(2, &what)?;
        if !n_leaves.is_power_of_two() || n_leaves != n_splits + 1 {
            return r.fail(format!("{what} has {n_splits} splits and {n_leaves} leaves, expected a full binary tree"));
        }
        if !shape.known {
            *shape = TreeShape { known: true, trees: num_trees, splits: n_splits, leaves: n_leaves };
            cascade.splits.reserve(num_trees * n_splits);
            cascade.leaves.reserve(num_trees * n_leaves * shape_len);
        } else if n_splits != shape.splits {
            return Err(FormatError {
                offset: start,
                reason: format!(
                    "{what} has {n_splits} splits, other trees have {} (mixed depths are not supported)",
                    shape.splits
                ),
            });
        }
        for _ in 0..n_leaves {
            let rows = r.read_column_header(&what)?;
            if rows != shape_len {
                return r.fail(format!("{what} has a leaf of {rows} values, the shape has {shape_len}"));
            }
            r.read_finite_floats(rows, &mut cascade.leaves, &what)?;
        }
    }
    Ok(cascade)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// dlib's writer, for round trips: minimal little-endian magnitude with a sign bit.
    fn encode_int(v: i64) -> Vec<u8> {
        let mut mag = v.unsigned_abs();
        let mut out = vec![0u8];
        loop {
            out.push((mag & 0xFF) as u8);
            mag >>= 8;
            if mag == 0 {
                break;
            }
        }
        out[0] = (out.len() - 1) as u8 | if v < 0 { 0x80 } else { 0 };
        out
    }

    #[test]
    fn decodes_integers() {
        let mut r = Reader::new(&[0x01, 0x05, 0x82, 0x34, 0x12, 0x02, 0xFF, 0xFF]);
        assert_eq!(r.read_unsigned(8, "a").unwrap(), 5);
        assert_eq!(r.read_signed(8, "b").unwrap(), -0x1234);
        assert_eq!(r.read_signed(4, "c").unwrap(), 0xFFFF);
        assert_eq!(r.remaining(), 0);
        for v in [0i64, 1, -1, 127, 255, 256, -65535, i64::MAX, i64::MIN + 1] {
            let bytes = encode_int(v);
            assert_eq!(Reader::new(&bytes).read_signed(8, "v").unwrap(), v, "{v} via {bytes:?}");
        }
    }

    #[test]
    fn rejects_bad_integers() {
        // unsigned with sign bit, too many bytes for the type, truncated, reserved bits, empty.
        assert!(Reader::new(&[0x81, 0x01]).read_unsigned(8, "x").is_err());
        assert!(Reader::new(&[0x03, 1, 2, 3]).read_signed(2, "x").is_err());
        assert!(Reader::new(&[0x04, 1, 2]).read_unsigned(8, "x").is_err());
        assert!(Reader::new(&[0x31, 0x01]).read_unsigned(8, "x").is_err());
        assert!(Reader::new(&[]).read_unsigned(8, "x").is_err());
        // int16 range: 0x8000 fits only as a negative value.
        assert!(Reader::new(&[0x02, 0x00, 0x80]).read_signed(2, "x").is_err());
        assert_eq!(Reader::new(&[0x82, 0x00, 0x80]).read_signed(2, "x").unwrap(), -32768);
        let err = Reader::new(&[0x01, 0x07, 0x04, 0x01]).read_len(1, "n").map(|_| ()).unwrap_err();
        assert!(err.reason.contains("larger than"), "{err}");
    }

    #[test]
    fn decodes_floats() {
        // 0.75 = 3 * 2^-2 ; -1.5 = -3 * 2^-1 ; 1024 = 1 * 2^10
        let cases: [(i64, i32, f32); 5] =
            [(3, -2, 0.75), (-3, -1, -1.5), (1, 10, 1024.0), (0, 0, 0.0), (0, -5000, 0.0)];
        for (m, e, want) in cases {
            let mut bytes = encode_int(m);
            bytes.extend(encode_int(e.into()));
            let got = Reader::new(&bytes).read_f32("f").unwrap();
            assert_eq!(got, want, "{m} * 2^{e}");
        }
        // What dlib's writer produces for 0.1f: frexp gives 0.8 * 2^-3, the mantissa is scaled to
        // 24 bits (13421773) and the exponent becomes -3 - 24.
        assert_eq!(float_from_details(13_421_773, -27), 0.1f32);
        assert_eq!(float_from_details(-13_421_773, -27), -0.1f32);
        assert_eq!(float_from_details(5, 32000), f32::INFINITY);
        assert_eq!(float_from_details(5, 32001), f32::NEG_INFINITY);
        assert!(float_from_details(5, 32002).is_nan());
        assert_eq!(float_from_details(1, -149), f32::from_bits(1));
        assert_eq!(float_from_details(1, -200), 0.0);
        assert_eq!(float_from_details(1, 200), f32::INFINITY);
        assert_eq!(float_from_details(i64::MAX, -63), 1.0);
        // The old ASCII float format starts with a digit ('1' = 0x31) and is rejected.
        assert!(Reader::new(b"1.5 ").read_f32("f").is_err());
    }

    #[test]
    fn parses_a_tiny_model_and_rejects_its_corruptions() {
        let mut b = Vec::new();
        let int = |b: &mut Vec<u8>, v: i64| b.extend(encode_int(v));
        let float = |b: &mut Vec<u8>, v: f32| {
            // exact for the quarter-integers used here
            b.extend(encode_int((v * 4.0) as i64));
            b.extend(encode_int(-2));
        };
        int(&mut b, 1); // version
        int(&mut b, -4); // initial_shape rows (negated)
        int(&mut b, -1); // cols
        for v in [0.25, 0.5, 0.75, 0.5] {
            float(&mut b, v);
        }
        int(&mut b, 1); // one cascade
        int(&mut b, 1); // one tree
        int(&mut b, 1); // one split
        int(&mut b, 0);
        int(&mut b, 1);
        float(&mut b, 2.5);
        int(&mut b, 2); // two leaves
        for leaf in [[0.25f32, 0.0, 0.0, 0.0], [-0.25, 0.0, 0.0, 0.0]] {
            int(&mut b, -4);
            int(&mut b, -1);
            for v in leaf {
                float(&mut b, v);
            }
        }
        int(&mut b, 1); // anchor_idx: one cascade, two pixels
        int(&mut b, 2);
        int(&mut b, 0);
        int(&mut b, 1);
        int(&mut b, 1); // deltas: one cascade, two pixels
        int(&mut b, 2);
        for v in [0.0, 0.25, -0.25, 0.0] {
            float(&mut b, v);
        }
        let m = parse_shape_predictor(&b).unwrap();
        assert_eq!(m.initial_shape, vec![0.25, 0.5, 0.75, 0.5]);
        assert_eq!((m.trees_per_cascade, m.splits_per_tree, m.leaves_per_tree), (1, 1, 2));
        assert_eq!(m.cascades[0].splits, vec![Split { idx1: 0, idx2: 1, thresh: 2.5 }]);
        assert_eq!(m.cascades[0].leaves.len(), 8);
        assert_eq!(m.cascades[0].anchors, vec![0, 1]);
        assert_eq!(m.cascades[0].deltas, vec![[0.0, 0.25], [-0.25, 0.0]]);

        for cut in 0..b.len() {
            assert!(parse_shape_predictor(&b[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(parse_shape_predictor(&trailing).is_err());
        let mut bad_version = b.clone();
        bad_version[1] = 2;
        assert!(parse_shape_predictor(&bad_version).unwrap_err().reason.contains("version"));
    }
}
