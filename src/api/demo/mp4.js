// vipavatar demo: the few MP4 box readings the page needs to feed MediaSource: split a byte
// stream into top-level boxes, and read the codec string (avc1.PPCCLL, mp4a.OO.A) from the init
// segment's avcC and esds boxes, so nothing about the encoder is hard-coded here.
"use strict";

const Mp4 = (() => {
  const CONTAINERS = new Set(["moov", "trak", "mdia", "minf", "stbl", "mvex", "edts", "dinf"]);
  const fourcc = (b, at) => String.fromCharCode(b[at], b[at + 1], b[at + 2], b[at + 3]);
  const u32 = (b, at) => ((b[at] << 24) >>> 0) + (b[at + 1] << 16) + (b[at + 2] << 8) + b[at + 3];

  // Boxes laid end to end in b[start, end): [{type, start, end, body}] (body = after the header).
  function boxes(b, start = 0, end = b.length) {
    const out = [];
    let at = start;
    while (at + 8 <= end) {
      let size = u32(b, at), header = 8;
      if (size === 1) { // 64-bit size
        if (at + 16 > end) break;
        size = u32(b, at + 8) * 4294967296 + u32(b, at + 12);
        header = 16;
      } else if (size === 0) {
        size = end - at;
      }
      if (size < header || at + size > end) break; // incomplete
      out.push({ type: fourcc(b, at + 4), start: at, end: at + size, body: at + header });
      at += size;
    }
    return out;
  }

  // Complete top-level boxes at the front of `b` and how many bytes they take.
  function complete(b) {
    const list = boxes(b);
    return { list, used: list.length ? list[list.length - 1].end : 0 };
  }

  // Find the first box of `type` under a container box (depth-first).
  function find(b, box, type) {
    for (const child of children(b, box)) {
      if (child.type === type) return child;
      const deeper = CONTAINERS.has(child.type) || child.type === "stsd" || isSampleEntry(child.type) ? find(b, child, type) : null;
      if (deeper) return deeper;
    }
    return null;
  }

  function isSampleEntry(t) { return t === "avc1" || t === "avc3" || t === "mp4a"; }

  function children(b, box) {
    let at = box.body;
    if (box.type === "stsd") at += 8; // version/flags + entry count
    else if (box.type === "avc1" || box.type === "avc3") at += 78; // sample entry + visual fields
    else if (box.type === "mp4a") at += 28; // sample entry + audio fields
    return boxes(b, at, box.end);
  }

  function hex2(n) { return n.toString(16).padStart(2, "0"); }

  // avc1.PPCCLL from an avcC box: profile, constraint flags, level.
  function avcCodec(b, avcC) {
    const p = avcC.body;
    return "avc1." + hex2(b[p + 1]) + hex2(b[p + 2]) + hex2(b[p + 3]);
  }

  // mp4a.OO.A from an esds box: object type indication and the AudioSpecificConfig object type.
  function aacCodec(b, esds) {
    let at = esds.body + 4; // version/flags
    const readLen = () => {
      let len = 0;
      for (let i = 0; i < 4; i++) {
        const c = b[at++];
        len = (len << 7) | (c & 0x7f);
        if (!(c & 0x80)) break;
      }
      return len;
    };
    if (b[at++] !== 0x03) return null; // ES_Descriptor
    readLen();
    at += 2; // ES_ID
    const flags = b[at++];
    if (flags & 0x80) at += 2; // dependsOn_ES_ID
    if (flags & 0x40) at += 1 + b[at]; // URL
    if (flags & 0x20) at += 2; // OCR_ES_ID
    if (b[at++] !== 0x04) return null; // DecoderConfigDescriptor
    readLen();
    const oti = b[at];
    at += 13;
    if (b[at++] !== 0x05) return "mp4a." + hex2(oti); // no DecoderSpecificInfo
    readLen();
    let aot = b[at] >> 3;
    if (aot === 31) aot = 32 + (((b[at] & 7) << 3) | (b[at + 1] >> 5));
    return "mp4a." + oti.toString(16) + "." + aot;
  }

  // From the init segment (ftyp + moov): {mime, fragmented}; null when no moov is present.
  function describe(b) {
    const moov = boxes(b).find((x) => x.type === "moov");
    if (!moov) return null;
    const codecs = [];
    const avcC = find(b, moov, "avcC");
    if (avcC) codecs.push(avcCodec(b, avcC));
    const esds = find(b, moov, "esds");
    const aac = esds && aacCodec(b, esds);
    if (aac) codecs.push(aac);
    return {
      mime: 'video/mp4; codecs="' + codecs.join(", ") + '"',
      fragmented: children(b, moov).some((x) => x.type === "mvex"),
    };
  }

  return { boxes, complete, describe };
})();
