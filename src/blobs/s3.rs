//! The S3-compatible blob backend (AWS S3, MinIO, R2, ...) through the `object_store` crate:
//! `VIPAVATAR_STORAGE=s3://bucket/prefix`, credentials from `VIPAVATAR_S3_*` (else the usual
//! `AWS_*` variables), downloads handed out as SigV4-presigned GET URLs.

use super::{Listed, Store};
use crate::config::StorageArgs;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Objects larger than this are uploaded in parts instead of one PUT.
const MULTIPART_ABOVE: u64 = 32 * 1024 * 1024;
const PART_BYTES: usize = 8 * 1024 * 1024;

pub struct S3Store {
    s3: AmazonS3,
    /// Signs presigned URLs for the public endpoint (the same client when there is none).
    signer: AmazonS3,
    bucket: String,
    /// Key prefix without slashes at either end ("" for the bucket's root).
    prefix: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store({})", self.describe())
    }
}

/// `s3://bucket/prefix` -> (bucket, prefix).
fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| anyhow::anyhow!("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if bucket.len() < 3 || !bucket.chars().all(valid) {
        anyhow::bail!("VIPAVATAR_STORAGE: {bucket:?} is not a valid bucket name (3+ of a-z, 0-9, '-', '.')");
    }
    let prefix = prefix.trim_matches('/').to_string();
    if prefix.split('/').any(|p| p == ".." || p == ".") {
        anyhow::bail!("VIPAVATAR_STORAGE: the prefix {prefix:?} may not contain . or .. segments");
    }
    Ok((bucket.to_string(), prefix))
}

fn io_err(e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl S3Store {
    pub fn open(url: &str, args: &StorageArgs) -> anyhow::Result<Self> {
        let (bucket, prefix) = parse_url(url)?;
        let s3 = Self::client(&bucket, args, args.s3_endpoint.as_deref())?;
        let signer = match args.s3_public_endpoint.as_deref().filter(|e| !e.is_empty()) {
            Some(public) => Self::client(&bucket, args, Some(public))?,
            None => s3.clone(),
        };
        Ok(Self { s3, signer, bucket, prefix })
    }

    fn client(bucket: &str, args: &StorageArgs, endpoint: Option<&str>) -> anyhow::Result<AmazonS3> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) {
            b = b.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        let region = args.s3_region.clone().or_else(|| std::env::var("AWS_REGION").ok());
        b = b.with_region(region.unwrap_or_else(|| "us-east-1".into()));
        if let Some(k) = args.s3_access_key_id.as_ref().filter(|k| !k.is_empty()) {
            b = b.with_access_key_id(k.expose());
        }
        if let Some(k) = args.s3_secret_access_key.as_ref().filter(|k| !k.is_empty()) {
            b = b.with_secret_access_key(k.expose());
        }
        // Path-style requests (`endpoint/bucket/key`): what MinIO and most S3-compatibles serve.
        b.with_virtual_hosted_style_request(false).build().map_err(|e| anyhow::anyhow!("S3 storage: {e}"))
    }

    /// The object's `Content-Type` from its name, so a presigned URL opened in a browser plays
    /// or shows it (originals and audio have no extension and keep the store's default).
    fn attributes(name: &str) -> Attributes {
        let mut attributes = Attributes::new();
        let mime = match name.rsplit_once('.').map(|(_, ext)| ext) {
            Some("mp4") => "video/mp4",
            Some("jpg") => "image/jpeg",
            _ => return attributes,
        };
        attributes.insert(Attribute::ContentType, mime.into());
        attributes
    }

    async fn put_whole(&self, name: &str, bytes: Bytes) -> io::Result<()> {
        let opts = PutOptions { attributes: Self::attributes(name), ..Default::default() };
        self.s3.put_opts(&self.key(name), PutPayload::from(bytes), opts).await.map_err(io_err)?;
        Ok(())
    }

    fn key(&self, name: &str) -> ObjectPath {
        let full = if self.prefix.is_empty() { name.to_string() } else { format!("{}/{name}", self.prefix) };
        ObjectPath::from(full)
    }

    /// The blob name of a listed key (the prefix taken off).
    fn name_of(&self, key: &ObjectPath) -> String {
        let k = key.as_ref();
        match self.prefix.is_empty() {
            true => k.to_string(),
            false => k.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(k).to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Store for S3Store {
    async fn put_if_absent(&self, name: &str, bytes: Bytes) -> io::Result<bool> {
        // Content-addressed names: a concurrent writer of the same name writes the same bytes,
        // so "head, then put" is enough (and works on stores without conditional PUT).
        if self.size(name).await?.is_some() {
            return Ok(false);
        }
        self.put_whole(name, bytes).await?;
        Ok(true)
    }

    async fn put_file(&self, name: &str, file: &Path) -> io::Result<u64> {
        let size = tokio::fs::metadata(file).await?.len();
        if size <= MULTIPART_ABOVE {
            let bytes = tokio::fs::read(file).await?;
            self.put_whole(name, Bytes::from(bytes)).await?;
        } else {
            use tokio::io::AsyncReadExt;
            let opts = PutMultipartOptions { attributes: Self::attributes(name), ..Default::default() };
            let upload = self.s3.put_multipart_opts(&self.key(name), opts).await.map_err(io_err)?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut f = tokio::fs::File::open(file).await?;
            let mut buf = vec![0u8; PART_BYTES];
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await.map_err(io_err)?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map_err(io_err)?;
        }
        let _ = tokio::fs::remove_file(file).await;
        Ok(size)
    }

    async fn get(&self, name: &str) -> io::Result<Option<Bytes>> {
        match self.s3.get(&self.key(name)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(io_err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn size(&self, name: &str) -> io::Result<Option<u64>> {
        match self.s3.head(&self.key(name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn delete(&self, name: &str) -> io::Result<()> {
        match self.s3.delete(&self.key(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        let (folder, stem) = prefix.split_once('/').unwrap_or((prefix, ""));
        let dir = self.key(folder);
        let metas: Vec<_> = self.s3.list(Some(&dir)).try_collect().await.map_err(io_err)?;
        let mut out: Vec<Listed> = metas
            .iter()
            .map(|m| Listed { name: self.name_of(&m.location), bytes: m.size })
            .filter(|l| l.name.strip_prefix(&format!("{folder}/")).is_some_and(|f| f.starts_with(stem)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn presign(&self, name: &str, ttl: Duration) -> io::Result<Option<String>> {
        let url =
            self.signer.signed_url(object_store::signer::Method::GET, &self.key(name), ttl).await.map_err(io_err)?;
        Ok(Some(url.to_string()))
    }

    fn local_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }

    fn describe(&self) -> String {
        match self.prefix.is_empty() {
            true => format!("s3://{}", self.bucket),
            false => format!("s3://{}/{}", self.bucket, self.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_parse_or_are_refused() {
        assert_eq!(parse_url("s3://media/avatars/").unwrap(), ("media".into(), "avatars".into()));
        assert_eq!(parse_url("s3://media").unwrap(), ("media".into(), "".into()));
        for bad in ["s3://", "s3://A_B/x", "s3://ok-bucket/../x", "s3://ab"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
