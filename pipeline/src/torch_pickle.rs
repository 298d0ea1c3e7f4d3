//! Reader for PyTorch `torch.save` files (state dicts) without Python: the legacy sequential
//! format (magic, protocol, sys-info and object pickles followed by raw storages) and the zip
//! format (`archive/data.pkl` + `archive/data/<key>`, stored uncompressed). Implements the small
//! subset of the pickle protocol that tensor dictionaries use, and writes that legacy format
//! ([`save_legacy`], for stand-in checkpoints and reader tests).

use crate::error::{PipelineError, Result};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// A decoded pickle value (only what state dicts contain).
#[derive(Debug, Clone)]
enum Value {
    None,
    /// NEWTRUE / NEWFALSE (e.g. `requires_grad`): the value is not needed.
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// A persistent id (`('storage', type, key, location, numel, ...)`).
    Persistent(Box<Value>),
    Tensor(TensorRef),
    /// Any other `callable(*args)` we do not interpret.
    Opaque,
    Mark,
}

#[derive(Debug, Clone)]
struct TensorRef {
    key: String,
    kind: Kind,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

fn bad(reason: impl Into<String>) -> PipelineError {
    PipelineError::Checkpoint { file: String::new(), reason: reason.into() }
}

struct Unpickler<'a> {
    buf: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, stack: Vec::new(), memo: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| bad("truncated pickle"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<String> {
        let start = self.pos;
        while self.pos < self.buf.len() && self.buf[self.pos] != b'\n' {
            self.pos += 1;
        }
        let s = String::from_utf8_lossy(&self.buf[start..self.pos]).into_owned();
        self.take(1)?;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| bad("pickle stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| bad("pickle MARK missing"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top_mut(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().ok_or_else(|| bad("pickle stack underflow"))
    }

    /// Run until STOP; returns the top of the stack.
    fn load(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                } // PROTO
                0x95 => {
                    self.take(8)?;
                } // FRAME
                b'.' => return self.pop(),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool),
                0x89 => self.stack.push(Value::Bool),
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Value::Int(v))
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 16 {
                        return Err(bad(format!("a {n}-byte integer is beyond what state dicts hold")));
                    }
                    let b = self.take(n)?;
                    let mut v: i128 = 0;
                    for (i, byte) in b.iter().enumerate() {
                        v |= (*byte as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    self.stack.push(Value::Int(v as i64))
                }
                b'G' => {
                    self.take(8)?; // BINFLOAT: value not needed by state dicts
                    self.stack.push(Value::Float)
                }
                b'X' | b'T' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                b'}' => self.stack.push(Value::Dict(vec![])),
                b']' => self.stack.push(Value::List(vec![])),
                b')' => self.stack.push(Value::Tuple(vec![])),
                b'(' => self.stack.push(Value::Mark),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(bad("pickle stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    let v = self.top_mut()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top_mut()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top_mut()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v = self.memo.get(&k).cloned().ok_or_else(|| bad("pickle memo miss"))?;
                    self.stack.push(v)
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top_mut()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(bad("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    match self.top_mut()? {
                        Value::Dict(d) => {
                            for kv in items.chunks(2) {
                                if let [k, v] = kv {
                                    d.push((k.clone(), v.clone()));
                                }
                            }
                        }
                        _ => return Err(bad("SETITEMS on a non-dict")),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top_mut()? {
                        l.push(v)
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top_mut()? {
                        l.extend(items)
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::Persistent(Box::new(pid)))
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.stack.push(reduce(func, args)?)
                }
                b'b' => {
                    // BUILD: object state (e.g. an OrderedDict's `_metadata`): not needed.
                    self.pop()?;
                }
                other => return Err(bad(format!("unsupported pickle opcode 0x{other:02x} at byte {}", self.pos - 1))),
            }
        }
    }
}

/// The storage classes of a state dict and their element kinds (the reader's and the writer's table).
const STORAGES: [(&str, Kind); 10] = [
    ("FloatStorage", Kind::Float),
    ("DoubleStorage", Kind::Double),
    ("HalfStorage", Kind::Half),
    ("BFloat16Storage", Kind::BFloat16),
    ("LongStorage", Kind::Int64),
    ("IntStorage", Kind::Int),
    ("ShortStorage", Kind::Int16),
    ("CharStorage", Kind::Int8),
    ("ByteStorage", Kind::Uint8),
    ("BoolStorage", Kind::Bool),
];

fn storage_kind(name: &str) -> Option<Kind> {
    STORAGES.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

fn storage_name(kind: Kind) -> Option<&'static str> {
    STORAGES.iter().find(|(_, k)| *k == kind).map(|(n, _)| *n)
}

fn ints(v: &Value) -> Result<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|x| if let Value::Int(i) = x { Ok(*i) } else { Err(bad("expected an int tuple")) })
            .collect(),
        _ => Err(bad("expected a tuple")),
    }
}

fn reduce(func: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = &func else { return Ok(Value::Opaque) };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(vec![])),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let Value::Tuple(a) = args else { return Err(bad("tensor args")) };
            let (Some(Value::Persistent(pid)), Some(Value::Int(offset)), Some(size), Some(stride)) =
                (a.first(), a.get(1), a.get(2), a.get(3))
            else {
                return Err(bad("unexpected _rebuild_tensor arguments"));
            };
            let Value::Tuple(p) = pid.as_ref() else { return Err(bad("persistent id is not a tuple")) };
            let (Some(Value::Global(_, ty)), Some(Value::Str(key))) = (p.get(1), p.get(2)) else {
                return Err(bad("unexpected storage persistent id"));
            };
            let kind = storage_kind(ty).ok_or_else(|| bad(format!("unsupported storage type {ty}")))?;
            Ok(Value::Tensor(TensorRef {
                key: key.clone(),
                kind,
                offset: *offset,
                size: ints(size)?,
                stride: ints(stride)?,
            }))
        }
        _ => Ok(Value::Opaque),
    }
}

fn element_size(kind: Kind) -> usize {
    match kind {
        Kind::Double | Kind::Int64 => 8,
        Kind::Float | Kind::Int => 4,
        Kind::Half | Kind::BFloat16 | Kind::Int16 => 2,
        _ => 1,
    }
}

/// Collect `name -> tensor` from a (possibly nested) dict: nested dict keys are joined with '.'
/// only when the top level is not itself a tensor dict (e.g. `{'mapping': {...}}` -> `mapping.*`).
fn collect(prefix: &str, v: &Value, out: &mut Vec<(String, TensorRef)>) {
    if let Value::Dict(items) = v {
        for (k, val) in items {
            let Value::Str(k) = k else { continue };
            let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match val {
                Value::Tensor(t) => out.push((name, t.clone())),
                Value::Dict(_) => collect(&name, val, out),
                _ => {}
            }
        }
    }
}

/// Every tensor reference anywhere in `v` (dict values under any key, lists, tuples).
fn all_tensor_refs(v: &Value, out: &mut Vec<TensorRef>) {
    match v {
        Value::Tensor(t) => out.push(t.clone()),
        Value::Dict(items) => items.iter().for_each(|(_, val)| all_tensor_refs(val, out)),
        Value::List(items) | Value::Tuple(items) => items.iter().for_each(|val| all_tensor_refs(val, out)),
        _ => {}
    }
}

fn materialize(
    refs: Vec<(String, TensorRef)>,
    storages: &HashMap<String, (Kind, Vec<u8>)>,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(refs.len());
    for (name, r) in refs {
        let (kind, bytes) =
            storages.get(&r.key).ok_or_else(|| bad(format!("storage {} of `{name}` missing", r.key)))?;
        let es = element_size(*kind);
        let numel = (bytes.len() / es) as i64;
        let fail = |what: &str| bad(format!("tensor `{name}`: {what}"));
        if r.size.len() != r.stride.len() || r.size.iter().chain(&r.stride).any(|&d| d < 0) || r.offset < 0 {
            return Err(fail("size, stride or offset out of range"));
        }
        if r.size.contains(&0) {
            out.push((name, Tensor::zeros(r.size.as_slice(), (*kind, tch::Device::Cpu))));
            continue;
        }
        // The last element read: offset + sum((size - 1) * stride), which must lie in the storage.
        let last =
            r.size.iter().zip(&r.stride).try_fold(r.offset, |acc, (s, st)| (s - 1).checked_mul(*st)?.checked_add(acc));
        if last.is_none_or(|l| l >= numel) {
            return Err(fail("reads past its storage"));
        }
        let t = Tensor::f_from_data_size(bytes, &[numel], *kind)
            .and_then(|flat| flat.f_as_strided(r.size.as_slice(), r.stride.as_slice(), r.offset))
            .and_then(|view| view.f_contiguous())
            .map_err(|e| fail(&e.to_string()))?;
        out.push((name, t));
    }
    Ok(out)
}

/// Read every tensor of a `torch.save` file as `(dotted name, tensor)` on the CPU.
pub fn load(path: &std::path::Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}"))).map_err(in_file(path))?;
    load_bytes(&bytes).map_err(in_file(path))
}

/// Name `path` in a checkpoint error (the byte-level reader and writer do not know the file).
fn in_file(path: &std::path::Path) -> impl Fn(PipelineError) -> PipelineError + '_ {
    move |e| match e {
        PipelineError::Checkpoint { reason, .. } => {
            PipelineError::Checkpoint { file: path.display().to_string(), reason }
        }
        other => other,
    }
}

/// Parse `torch.save` bytes (legacy or zip format).
pub fn load_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    if bytes.starts_with(b"PK\x03\x04") {
        load_zip(bytes)
    } else {
        load_legacy(bytes)
    }
}

fn load_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut u = Unpickler::new(bytes);
    let magic = u.load()?;
    // The magic number is an 80-bit integer pickle; only its presence is checked.
    if !matches!(magic, Value::Int(_)) {
        return Err(bad("not a torch.save file"));
    }
    u.stack.clear();
    let _protocol = u.load()?;
    let _sys_info = u.load()?;
    let root = u.load()?;
    let keys = u.load()?;
    let Value::List(keys) = keys else { return Err(bad("storage key list missing")) };
    let mut refs = Vec::new();
    collect("", &root, &mut refs);
    // Every storage follows the pickle, including those of tensors that are not named (e.g. an
    // optimizer state keyed by ints): their kinds are needed to step over them.
    let mut all = Vec::new();
    all_tensor_refs(&root, &mut all);
    let kinds: HashMap<String, Kind> = all.iter().map(|r| (r.key.clone(), r.kind)).collect();
    let mut pos = u.pos;
    let mut storages = HashMap::new();
    for k in keys {
        let Value::Str(k) = k else { return Err(bad("storage key is not a string")) };
        let kind = *kinds.get(&k).ok_or_else(|| bad(format!("storage {k} is not referenced")))?;
        let n = bytes.get(pos..pos + 8).ok_or_else(|| bad("truncated storage header"))?;
        let numel = u64::from_le_bytes(n.try_into().map_err(|_| bad("storage size"))?) as usize;
        pos += 8;
        let len = numel.checked_mul(element_size(kind)).ok_or_else(|| bad("storage too large"))?;
        let data = pos
            .checked_add(len)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(|| bad(format!("truncated storage {k}")))?;
        pos += len;
        storages.insert(k, (kind, data.to_vec()));
    }
    materialize(refs, &storages)
}

/// Minimal reader of the stored (uncompressed) zip entries torch writes.
fn zip_entries(bytes: &[u8]) -> Result<HashMap<String, &[u8]>> {
    let le16 = |i: usize| bytes.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let le32 = |i: usize| bytes.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let eocd = (0..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| bytes[i..].starts_with(b"PK\x05\x06"))
        .ok_or_else(|| bad("zip directory not found"))?;
    let count = le16(eocd + 10).ok_or_else(|| bad("zip"))?;
    let mut at = le32(eocd + 16).ok_or_else(|| bad("zip"))?;
    let mut out = HashMap::new();
    for _ in 0..count {
        if bytes.get(at..at + 4) != Some(b"PK\x01\x02") {
            return Err(bad("corrupt zip directory"));
        }
        let method = le16(at + 10).ok_or_else(|| bad("zip"))?;
        let size = le32(at + 20).ok_or_else(|| bad("zip"))?;
        let (nlen, xlen, clen) = (le16(at + 28), le16(at + 30), le16(at + 32));
        let (nlen, xlen, clen) =
            (nlen.ok_or_else(|| bad("zip"))?, xlen.ok_or_else(|| bad("zip"))?, clen.ok_or_else(|| bad("zip"))?);
        let local = le32(at + 42).ok_or_else(|| bad("zip"))?;
        let name = String::from_utf8_lossy(bytes.get(at + 46..at + 46 + nlen).ok_or_else(|| bad("zip"))?).into_owned();
        at += 46 + nlen + xlen + clen;
        if method != 0 {
            return Err(bad(format!("zip entry {name} is compressed (method {method})")));
        }
        let lname = le16(local + 26).ok_or_else(|| bad("zip"))?;
        let lextra = le16(local + 28).ok_or_else(|| bad("zip"))?;
        let start = local + 30 + lname + lextra;
        let data = bytes.get(start..start + size).ok_or_else(|| bad(format!("truncated zip entry {name}")))?;
        out.insert(name, data);
    }
    Ok(out)
}

fn load_zip(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let entries = zip_entries(bytes)?;
    let (pkl_name, pkl) =
        entries.iter().find(|(n, _)| n.ends_with("/data.pkl")).ok_or_else(|| bad("data.pkl missing"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl");
    let root = Unpickler::new(pkl).load()?;
    let mut refs = Vec::new();
    collect("", &root, &mut refs);
    let mut storages = HashMap::new();
    for (_, r) in &refs {
        let data =
            entries.get(&format!("{prefix}data/{}", r.key)).ok_or_else(|| bad(format!("storage {} missing", r.key)))?;
        storages.insert(r.key.clone(), (r.kind, data.to_vec()));
    }
    materialize(refs, &storages)
}

/// Pickle opcodes the writer emits.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const LONG1: u8 = 0x8a;
    pub const BININT: u8 = b'J';
    pub const BINUNICODE: u8 = b'X';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const APPENDS: u8 = b'e';
    pub const GLOBAL: u8 = b'c';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const NEWFALSE: u8 = 0x89;
    pub const NEWTRUE: u8 = 0x88;
    pub const NONE: u8 = b'N';
}

/// A protocol-2 pickle being written.
struct Pickler(Vec<u8>);

impl Pickler {
    fn new() -> Self {
        Self(vec![op::PROTO, 2])
    }
    fn op(&mut self, code: u8) -> &mut Self {
        self.0.push(code);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: i64) -> &mut Self {
        match i32::try_from(v) {
            Ok(small) => {
                self.0.push(op::BININT);
                self.0.extend_from_slice(&small.to_le_bytes());
            }
            Err(_) => {
                self.0.extend_from_slice(&[op::LONG1, 8]);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
        }
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(op::GLOBAL);
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn int_tuple(&mut self, values: &[i64]) -> &mut Self {
        self.op(op::MARK);
        values.iter().for_each(|&v| {
            self.int(v);
        });
        self.op(op::TUPLE)
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.push(op::STOP);
        self.0
    }
}

/// Write `{top: {name: tensor, ...}}` (e.g. `{'mapping': state_dict}`), or with an empty `top`
/// the plain `{name: tensor, ...}`, as a legacy-format `torch.save` file that [`load`] and
/// `torch.load` read. Tensors are stored contiguous, one storage each, in the order given.
pub fn save_legacy(path: &std::path::Path, top: &str, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let bytes = legacy_bytes(top, tensors).map_err(in_file(path))?;
    std::fs::write(path, bytes).map_err(|e| bad(format!("cannot write: {e}"))).map_err(in_file(path))
}

/// The bytes [`save_legacy`] writes.
pub fn legacy_bytes(top: &str, tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    // Magic number (0x1950a86a20f9469cfc6c as a 10-byte LONG1), protocol 1001, system info.
    let mut magic = Pickler::new();
    magic.0.extend_from_slice(&[op::LONG1, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
    out.extend(magic.finish());
    let mut protocol = Pickler::new();
    protocol.int(1001);
    out.extend(protocol.finish());
    let mut info = Pickler::new();
    info.op(op::EMPTY_DICT).op(op::MARK).str("protocol_version").int(1001).str("little_endian").op(op::NEWTRUE);
    info.str("type_sizes").op(op::EMPTY_DICT).op(op::MARK);
    info.str("short").int(2).str("int").int(4).str("long").int(4).op(op::SETITEMS).op(op::SETITEMS);
    out.extend(info.finish());

    let mut root = Pickler::new();
    root.op(op::EMPTY_DICT);
    if !top.is_empty() {
        root.str(top).op(op::EMPTY_DICT);
    }
    root.op(op::MARK);
    let mut keys = Vec::with_capacity(tensors.len());
    for (i, (name, t)) in tensors.iter().enumerate() {
        let kind = t.kind();
        let storage = storage_name(kind).ok_or_else(|| bad(format!("`{name}`: cannot store {kind:?} tensors")))?;
        let key = i.to_string();
        let size = t.size();
        let mut stride = vec![1i64; size.len()];
        for d in (0..size.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * size[d + 1].max(1);
        }
        root.str(name).global("torch._utils", "_rebuild_tensor_v2").op(op::MARK);
        root.op(op::MARK).str("storage").global("torch", storage).str(&key).str("cpu").int(t.numel() as i64);
        root.op(op::NONE).op(op::TUPLE).op(op::BINPERSID);
        root.int(0).int_tuple(&size).int_tuple(&stride).op(op::NEWFALSE);
        root.global("collections", "OrderedDict").op(op::EMPTY_TUPLE).op(op::REDUCE);
        root.op(op::TUPLE).op(op::REDUCE);
        keys.push(key);
    }
    root.op(op::SETITEMS);
    if !top.is_empty() {
        root.op(op::SETITEM);
    }
    out.extend(root.finish());
    let mut list = Pickler::new();
    list.op(op::EMPTY_LIST).op(op::MARK);
    keys.iter().for_each(|k| {
        list.str(k);
    });
    list.op(op::APPENDS);
    out.extend(list.finish());
    for (name, t) in tensors {
        let flat = t.contiguous().to_device(tch::Device::Cpu);
        let mut bytes = vec![0u8; flat.numel() * element_size(flat.kind())];
        flat.f_copy_data_u8(&mut bytes, flat.numel()).map_err(|e| bad(format!("`{name}`: {e}")))?;
        out.extend_from_slice(&(flat.numel() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5]).reshape([2, 3]);
        let b = Tensor::from_slice(&[4i64, 5, 6]);
        legacy_bytes("mapping", &[("first.weight", &a), ("count", &b)]).unwrap()
    }

    #[test]
    fn plain_state_dicts_read_back_unprefixed() {
        let a = Tensor::from_slice(&[0.5f32, 2.0]);
        let n = Tensor::from_slice(&[7i64]).view([] as [i64; 0]);
        let loaded =
            load_bytes(&legacy_bytes("", &[("norm.weight", &a), ("norm.num_batches_tracked", &n)]).unwrap()).unwrap();
        let names: Vec<&str> = loaded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["norm.weight", "norm.num_batches_tracked"]);
        assert_eq!(loaded[1].1.size(), Vec::<i64>::new());
        assert_eq!(loaded[1].1.int64_value(&[]), 7);
    }

    #[test]
    fn saved_legacy_files_read_back_equal() {
        let loaded = load_bytes(&sample()).unwrap();
        let names: Vec<&str> = loaded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["mapping.first.weight", "mapping.count"]);
        assert_eq!(loaded[0].1.size(), [2, 3]);
        assert_eq!(Vec::<f32>::try_from(loaded[0].1.flatten(0, -1)).unwrap(), [1.5, -2.0, 3.25, 0.0, 7.0, -0.5]);
        assert_eq!(loaded[1].1.kind(), Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(&loaded[1].1).unwrap(), [4, 5, 6]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 10000, ..Default::default() })]
        /// Truncated or byte-mutated files are errors, never panics, and never allocate more than
        /// the file itself holds (a tensor's bytes come out of the file).
        #[test]
        fn mutated_pickles_never_panic(
            cut in 0usize..400,
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..6),
        ) {
            let mut bytes = sample();
            for (at, value) in flips {
                let n = bytes.len();
                bytes[at % n] = value;
            }
            let keep = bytes.len().saturating_sub(cut % bytes.len());
            bytes.truncate(keep);
            if let Ok(tensors) = load_bytes(&bytes) {
                let total: usize = tensors.iter().map(|(_, t)| t.numel()).sum();
                proptest::prop_assert!(total <= bytes.len());
            }
        }
    }

    #[test]
    fn garbage_is_a_checkpoint_error_not_a_panic() {
        for b in [&b""[..], b"\x80\x02", b"PK\x03\x04garbage", b"\x80\x02\x8a\x0a"] {
            assert!(matches!(load_bytes(b), Err(PipelineError::Checkpoint { .. })));
        }
    }
}
