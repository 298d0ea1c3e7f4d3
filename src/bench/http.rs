//! A minimal HTTP/1.1 client for the end-to-end cases (one request per connection, `Connection:
//! close`), with a multipart/form-data builder. Small on purpose: the service crate has no HTTP
//! client dependency, and the benchmark only talks to its own server on loopback.

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
}

/// A multipart/form-data body.
pub struct Form {
    boundary: String,
    body: Vec<u8>,
}

impl Form {
    pub fn new() -> Self {
        Self { boundary: format!("vipavatar-bench-{}", uuid::Uuid::new_v4().simple()), body: Vec::new() }
    }

    pub fn text(mut self, name: &str, value: &str) -> Self {
        let head = format!("--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n", self.boundary);
        self.body.extend_from_slice(head.as_bytes());
        self.body.extend_from_slice(value.as_bytes());
        self.body.extend_from_slice(b"\r\n");
        self
    }

    pub fn file(mut self, name: &str, filename: &str, mime: &str, bytes: &[u8]) -> Self {
        let head = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {mime}\r\n\r\n",
            self.boundary
        );
        self.body.extend_from_slice(head.as_bytes());
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    fn finish(mut self) -> (String, Vec<u8>) {
        self.body.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (format!("multipart/form-data; boundary={}", self.boundary), self.body)
    }
}

impl Default for Form {
    fn default() -> Self {
        Self::new()
    }
}

/// Take the complete chunks at the front of a `Transfer-Encoding: chunked` body; `Some(true)` once
/// the last (empty) chunk was seen, `None` when more bytes are needed.
fn take_chunks(raw: &mut Vec<u8>, out: &mut Vec<u8>) -> anyhow::Result<bool> {
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else { return Ok(false) };
        let size_text = std::str::from_utf8(&raw[..line_end])?.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_text, 16).with_context(|| format!("bad chunk size {size_text:?}"))?;
        if size == 0 {
            return Ok(true);
        }
        if raw.len() < line_end + 2 + size + 2 {
            return Ok(false);
        }
        out.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw.drain(..line_end + 2 + size + 2);
    }
}

/// What reading a live stream gave.
#[derive(Debug, Clone)]
pub struct StreamRead {
    pub status: u16,
    /// Milliseconds from `since` until the first media fragment (`moof` + `mdat`) was complete.
    pub first_media_ms: Option<f64>,
    pub bytes: Vec<u8>,
    /// The body ended with its final chunk (not cut off).
    pub complete: bool,
}

/// Decode a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("bad chunk header"))?;
        let size_text = std::str::from_utf8(&raw[..line_end])?.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_text, 16).with_context(|| format!("bad chunk size {size_text:?}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = raw.get(..size).ok_or_else(|| anyhow!("truncated chunk"))?;
        out.extend_from_slice(chunk);
        raw = raw.get(size + 2..).ok_or_else(|| anyhow!("truncated chunk"))?;
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(String, Vec<u8>)>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(self.addr).await.with_context(|| format!("connect {}", self.addr))?;
        stream.set_nodelay(true)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.addr
        );
        let payload = match body {
            Some((content_type, bytes)) => {
                head.push_str(&format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", bytes.len()));
                bytes
            }
            None => Vec::new(),
        };
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(&payload);
        stream.write_all(&req).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let split =
            raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header in the reply"))?;
        let header = std::str::from_utf8(&raw[..split])?;
        let status: u16 = header
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line: {:?}", header.lines().next()))?;
        let chunked = header.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = &raw[split + 4..];
        Ok((status, if chunked { dechunk(body)? } else { body.to_vec() }))
    }

    /// GET a live fragmented-MP4 stream to its end, noting when its first media fragment arrived.
    pub async fn get_stream(&self, path: &str, since: std::time::Instant) -> anyhow::Result<StreamRead> {
        let mut stream = TcpStream::connect(self.addr).await.with_context(|| format!("connect {}", self.addr))?;
        stream.set_nodelay(true)?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
        stream.write_all(head.as_bytes()).await?;
        let (mut raw, mut body, mut buf) = (Vec::new(), Vec::new(), vec![0u8; 64 * 1024]);
        let mut header: Option<(u16, bool)> = None;
        let mut splitter = vipavatar_pipeline::video::FragmentSplitter::new();
        let (mut first_media_ms, mut complete) = (None, false);
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if header.is_none() {
                let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let text = std::str::from_utf8(&raw[..split])?.to_ascii_lowercase();
                let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let chunked = text.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
                header = Some((status, chunked));
                raw.drain(..split + 4);
            }
            let Some((_, chunked)) = header else { continue };
            let before = body.len();
            if chunked {
                complete = take_chunks(&mut raw, &mut body)?;
            } else {
                body.append(&mut raw);
            }
            let pieces = splitter.push(&body[before..]).map_err(|e| anyhow!("stream: {e}"))?;
            if first_media_ms.is_none()
                && pieces.iter().any(|p| matches!(p, vipavatar_pipeline::video::Fragment::Media(_)))
            {
                first_media_ms = Some(since.elapsed().as_secs_f64() * 1e3);
            }
            if complete {
                break;
            }
        }
        let (status, chunked) = header.ok_or_else(|| anyhow!("no HTTP header in the reply"))?;
        Ok(StreamRead { status, first_media_ms, bytes: body, complete: complete || !chunked })
    }

    /// GET `path`; the status and the JSON body.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let (status, body) = self.request("GET", path, None).await?;
        Ok((status, parse(status, &body)?))
    }

    /// POST a form to `path`; the status and the JSON body.
    pub async fn post_form(&self, path: &str, form: Form) -> anyhow::Result<(u16, Value)> {
        let (status, body) = self.request("POST", path, Some(form.finish())).await?;
        Ok((status, parse(status, &body)?))
    }
}

fn parse(status: u16, body: &[u8]) -> anyhow::Result<Value> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(_) => bail!("HTTP {status}: body is not JSON: {:?}", String::from_utf8_lossy(&body[..body.len().min(300)])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk(b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n").unwrap(), b"Wikipedia");
        assert!(dechunk(b"9\r\nabc").is_err());
    }
}
