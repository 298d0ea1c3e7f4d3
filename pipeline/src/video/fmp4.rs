//! Splitting a fragmented MP4 byte stream (as ffmpeg's `frag_keyframe+empty_moov` muxer writes
//! it to a pipe) into its init segment (`ftyp` + `moov`) and media fragments (`moof` + `mdat`),
//! so each piece can be published as soon as it is complete.

/// One publishable piece of a fragmented MP4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fragment {
    /// `ftyp` + `moov`: what a player needs before any media.
    Init(Vec<u8>),
    /// One `moof` + `mdat` pair (and any boxes that precede the pair, such as `styp`/`sidx`).
    Media(Vec<u8>),
}

impl Fragment {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Fragment::Init(b) | Fragment::Media(b) => b,
        }
    }
}

/// Incremental box splitter: feed bytes as they arrive, take finished fragments out.
#[derive(Debug, Default)]
pub struct FragmentSplitter {
    buf: Vec<u8>,
    /// Boxes of the piece being assembled.
    piece: Vec<u8>,
    init_done: bool,
}

/// A box header: type and total size (`None` size: runs to the end of the stream).
fn box_header(b: &[u8]) -> Option<([u8; 4], Option<u64>, usize)> {
    if b.len() < 8 {
        return None;
    }
    let size32 = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64;
    let kind = [b[4], b[5], b[6], b[7]];
    match size32 {
        0 => Some((kind, None, 8)),
        1 => {
            if b.len() < 16 {
                return None;
            }
            let size = u64::from_be_bytes(b[8..16].try_into().ok()?);
            Some((kind, Some(size), 16))
        }
        n => Some((kind, Some(n), 8)),
    }
}

impl FragmentSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes; returns the pieces they completed, in order. A malformed box size is an error.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Fragment>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((kind, size, header)) = box_header(&self.buf) {
            let Some(size) = size else {
                return Err(format!("box {} without a size in a live stream", String::from_utf8_lossy(&kind)));
            };
            if size < header as u64 || size > (1 << 31) {
                return Err(format!("box {} has an impossible size {size}", String::from_utf8_lossy(&kind)));
            }
            let size = size as usize;
            if self.buf.len() < size {
                break;
            }
            self.piece.extend(self.buf.drain(..size));
            match &kind {
                b"moov" if !self.init_done => {
                    self.init_done = true;
                    out.push(Fragment::Init(std::mem::take(&mut self.piece)));
                }
                b"mdat" if self.init_done => out.push(Fragment::Media(std::mem::take(&mut self.piece))),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The end of the stream: trailing boxes (e.g. `mfra`) become a last media piece.
    pub fn finish(&mut self) -> Option<Fragment> {
        let mut rest = std::mem::take(&mut self.piece);
        rest.append(&mut self.buf);
        (!rest.is_empty() && self.init_done).then_some(Fragment::Media(rest))
    }
}

/// The boxes directly inside `b`, as `(type, payload)`; stops at the first malformed one.
fn children(mut b: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let (kind, size, header) = box_header(b)?;
        let size = usize::try_from(size.unwrap_or(b.len() as u64)).ok()?;
        if size < header || size > b.len() {
            return None;
        }
        let (this, rest) = b.split_at(size);
        b = rest;
        Some((kind, &this[header..]))
    })
}

/// The number of samples of track `track` in a media piece (`moof` + `mdat`): the sum of the
/// `trun` sample counts of its `traf` boxes. `None` when the piece has no `moof`.
pub fn track_samples(media: &[u8], track: u32) -> Option<u32> {
    let (_, moof) = children(media).find(|(k, _)| k == b"moof")?;
    let be32 = |b: &[u8], at: usize| b.get(at..at + 4).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
    let mut samples = 0u32;
    for (_, traf) in children(moof).filter(|(k, _)| k == b"traf") {
        // tfhd: version+flags (4 bytes), then the track id.
        let tfhd = children(traf).find(|(k, _)| k == b"tfhd").and_then(|(_, b)| be32(b, 4));
        if tfhd != Some(track) {
            continue;
        }
        // trun: version+flags (4 bytes), then the sample count.
        for (_, trun) in children(traf).filter(|(k, _)| k == b"trun") {
            samples = samples.saturating_add(be32(trun, 4)?);
        }
    }
    Some(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(kind: &[u8; 4], payload: usize) -> Vec<u8> {
        let mut b = ((payload + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend(std::iter::repeat_n(7u8, payload));
        b
    }

    #[test]
    fn splits_init_and_fragments_whatever_the_read_sizes() {
        let stream: Vec<u8> =
            [mk(b"ftyp", 20), mk(b"moov", 300), mk(b"moof", 50), mk(b"mdat", 900), mk(b"moof", 40), mk(b"mdat", 10)]
                .concat();
        for step in [1usize, 7, 64, 5000] {
            let mut s = FragmentSplitter::new();
            let mut got = Vec::new();
            for c in stream.chunks(step) {
                got.extend(s.push(c).expect("valid"));
            }
            assert!(s.finish().is_none());
            assert_eq!(got.len(), 3, "step {step}");
            assert!(matches!(&got[0], Fragment::Init(b) if b.len() == 28 + 308));
            assert!(matches!(&got[1], Fragment::Media(b) if b.len() == 58 + 908));
            let joined: Vec<u8> = got.iter().flat_map(|f| f.bytes().to_vec()).collect();
            assert_eq!(joined, stream);
        }
        let mut s = FragmentSplitter::new();
        assert!(s.push(&[0, 0, 0, 3, b'b', b'a', b'd', b'!']).is_err());
    }

    fn full_box(kind: &[u8; 4], fields: &[u32]) -> Vec<u8> {
        let payload: Vec<u8> = fields.iter().flat_map(|f| f.to_be_bytes()).collect();
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend(payload);
        b
    }

    fn container(kind: &[u8; 4], inner: &[Vec<u8>]) -> Vec<u8> {
        let payload = inner.concat();
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend(payload);
        b
    }

    #[test]
    fn counts_the_samples_of_one_track() {
        let traf = |track: u32, runs: &[u32]| {
            let mut inner = vec![full_box(b"tfhd", &[0, track]), full_box(b"tfdt", &[0, 0])];
            inner.extend(runs.iter().map(|&n| full_box(b"trun", &[0, n, 0])));
            container(b"traf", &inner)
        };
        let moof = container(b"moof", &[full_box(b"mfhd", &[0, 1]), traf(1, &[20, 5]), traf(2, &[47])]);
        let piece = [moof, mk(b"mdat", 100)].concat();
        assert_eq!(track_samples(&piece, 1), Some(25));
        assert_eq!(track_samples(&piece, 2), Some(47));
        assert_eq!(track_samples(&piece, 3), Some(0));
        assert_eq!(track_samples(&mk(b"mdat", 10), 1), None);
        // A truncated piece is not a panic.
        for cut in 0..piece.len() {
            let _ = track_samples(&piece[..cut], 1);
        }
    }
}
