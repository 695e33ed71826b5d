//! The blob store: media, attachments and raw payloads, on the `object_store` crate.
//! A local folder by default, S3 (or any S3-compatible store) by config.

use crate::config::{BlobConfig, ConfigError};
use bytes::Bytes;
use object_store::{
    GetOptions, ObjectStore, PutOptions, PutPayload, aws::AmazonS3Builder, local::LocalFileSystem,
    path::Path as StorePath, prefix::PrefixStore,
};
use omnigate_model::pb::BlobRef;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A failed blob operation.
#[derive(Debug, thiserror::Error)]
#[error("blob store: {0}")]
pub struct BlobError(#[from] object_store::Error);

/// A handle on the configured store. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.store)
    }
}

impl BlobStore {
    /// Opens the store named by `config.url`, creating a local folder if needed.
    pub fn open(config: &BlobConfig) -> Result<Self, ConfigError> {
        let bad = |problem: String| ConfigError::new("blobs.url", problem);
        let store: Arc<dyn ObjectStore> = if let Some(rest) = config.url.strip_prefix("file:") {
            // Accept `file:relative/dir` and `file:///absolute/dir`.
            let dir = rest.strip_prefix("//").unwrap_or(rest);
            std::fs::create_dir_all(dir)
                .map_err(|e| bad(format!("cannot create folder {dir}: {e}")))?;
            Arc::new(
                LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(format!("cannot open folder {dir}: {e}")))?,
            )
        } else if let Some(rest) = config.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("an s3:// URL needs a bucket: s3://bucket/prefix".into()));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if !config.s3_region.is_empty() {
                builder = builder.with_region(&config.s3_region);
            }
            if !config.s3_endpoint.is_empty() {
                builder = builder.with_endpoint(&config.s3_endpoint);
            }
            if !config.s3_access_key_id.is_empty() {
                builder = builder
                    .with_access_key_id(&config.s3_access_key_id)
                    .with_secret_access_key(config.s3_secret_access_key.expose_secret());
            }
            let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            }
        } else {
            return Err(bad(format!(
                "`{}` is not a blob store URL; use file:<folder> or s3://bucket/prefix",
                config.url
            )));
        };
        Ok(Self { store })
    }

    /// Stores `bytes` under `key` and returns a reference with their size and SHA-256.
    pub async fn put(
        &self,
        key: &str,
        mime_type: &str,
        bytes: Bytes,
    ) -> Result<BlobRef, BlobError> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        self.store
            .put_opts(
                &StorePath::from(key),
                PutPayload::from_bytes(bytes),
                PutOptions::default(),
            )
            .await?;
        Ok(BlobRef {
            key: key.to_string(),
            size,
            sha256,
            mime_type: mime_type.to_string(),
        })
    }

    /// Reads a blob back.
    pub async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let result = self
            .store
            .get_opts(&StorePath::from(key), GetOptions::default())
            .await?;
        Ok(result.bytes().await?)
    }
}

/// A content-addressed key: the same bytes always land under the same key, so a
/// retried download never creates a second copy.
pub fn content_key(area: &str, sha256_hex: &str, extension: &str) -> String {
    let fan_out = sha256_hex.get(..2).unwrap_or("00");
    format!("{area}/{fan_out}/{sha256_hex}{extension}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_round_trips_with_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&BlobConfig {
            url: format!("file://{}", dir.path().display()),
            s3_region: String::new(),
            s3_endpoint: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: "".into(),
        })
        .unwrap();
        let blob = store
            .put("media/x/abc.txt", "text/plain", Bytes::from_static(b"test"))
            .await
            .unwrap();
        assert_eq!(blob.size, 4);
        assert_eq!(
            blob.sha256,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(store.get("media/x/abc.txt").await.unwrap(), "test");
        assert!(dir.path().join("media/x/abc.txt").exists());
    }

    #[test]
    fn unknown_scheme_names_the_key() {
        let err = BlobStore::open(&BlobConfig {
            url: "ftp://x".into(),
            s3_region: String::new(),
            s3_endpoint: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: "".into(),
        })
        .unwrap_err();
        assert_eq!(err.key, "blobs.url");
    }
}
