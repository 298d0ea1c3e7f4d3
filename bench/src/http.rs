//! The end-to-end cases' HTTP client: `reqwest` against the service on loopback (keep-alive
//! connections, `TCP_NODELAY`, no proxy), JSON answers, multipart forms, and a live stream read
//! chunk by chunk so the first media fragment is timed when it arrives.

use anyhow::{anyhow, bail, Context};
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Instant;
use vipavatar_pipeline::video::{Fragment, FragmentSplitter};

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// A form field holding a file.
pub fn file_part(filename: &str, mime: &str, bytes: &[u8]) -> anyhow::Result<Part> {
    Ok(Part::bytes(bytes.to_vec()).file_name(filename.to_string()).mime_str(mime)?)
}

/// What reading a live stream gave.
#[derive(Debug, Clone)]
pub struct StreamRead {
    pub status: u16,
    /// Milliseconds from `since` until the first media fragment (`moof` + `mdat`) was complete.
    pub first_media_ms: Option<f64>,
    pub bytes: Vec<u8>,
    /// The body ended normally (not cut off).
    pub complete: bool,
}

impl Client {
    pub fn new(addr: SocketAddr) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().tcp_nodelay(true).no_proxy().build().context("build the HTTP client")?;
        Ok(Self { base: format!("http://{addr}"), http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET a live fragmented-MP4 stream to its end, noting when its first media fragment arrived.
    pub async fn get_stream(&self, path: &str, since: Instant) -> anyhow::Result<StreamRead> {
        let mut resp = self.http.get(self.url(path)).send().await.with_context(|| format!("GET {path}"))?;
        let status = resp.status().as_u16();
        let mut splitter = FragmentSplitter::new();
        let (mut bytes, mut first_media_ms, mut complete) = (Vec::new(), None, false);
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let pieces = splitter.push(&chunk).map_err(|e| anyhow!("stream: {e}"))?;
                    if first_media_ms.is_none() && pieces.iter().any(|p| matches!(p, Fragment::Media(_))) {
                        first_media_ms = Some(vipavatar_pipeline::ms_since(since));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => {
                    complete = true;
                    break;
                }
                // The server aborts the body (no final chunk) when the session fails mid-stream.
                Err(e) => {
                    tracing::debug!(error = %e, "live stream cut off");
                    break;
                }
            }
        }
        Ok(StreamRead { status, first_media_ms, bytes, complete })
    }

    /// GET `path`; the status and the JSON body.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let req = self.http.get(self.url(path)).header(reqwest::header::ACCEPT, "application/json");
        answer(req.send().await.with_context(|| format!("GET {path}"))?).await
    }

    /// GET `path`; only the status (the body is read and dropped).
    pub async fn get_status(&self, path: &str) -> anyhow::Result<u16> {
        let resp = self.http.get(self.url(path)).send().await.with_context(|| format!("GET {path}"))?;
        let status = resp.status().as_u16();
        resp.bytes().await?;
        Ok(status)
    }

    /// POST a form to `path`; the status and the JSON body.
    pub async fn post_form(&self, path: &str, form: Form) -> anyhow::Result<(u16, Value)> {
        let req = self.http.post(self.url(path)).header(reqwest::header::ACCEPT, "application/json").multipart(form);
        answer(req.send().await.with_context(|| format!("POST {path}"))?).await
    }
}

async fn answer(resp: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    match serde_json::from_slice(&body) {
        Ok(v) => Ok((status, v)),
        Err(_) => bail!("HTTP {status}: body is not JSON: {:?}", String::from_utf8_lossy(&body[..body.len().min(300)])),
    }
}
