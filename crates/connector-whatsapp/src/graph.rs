//! The Graph API calls the connector makes: media lookup and download, media upload, sends.

use bytes::{Bytes, BytesMut};
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use url::Url;

/// A failed Graph API call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Graph API {status}: {code} {title}")]
pub struct GraphError {
    /// HTTP status, 0 when no response arrived.
    pub status: u16,
    /// Meta's error code (e.g. `131047`), or `http_<status>` / `network`.
    pub code: String,
    /// Meta's message.
    pub title: String,
}

impl GraphError {
    /// Worth another try: no response, 429 or 5xx (and Meta's transient codes).
    pub fn is_retriable(&self) -> bool {
        self.status == 0
            || self.status == 429
            || self.status >= 500
            || matches!(
                self.code.as_str(),
                "131000" | "131016" | "130429" | "4" | "80007"
            )
    }

    fn network(err: reqwest::Error) -> Self {
        Self {
            status: 0,
            code: "network".into(),
            title: err.without_url().to_string(),
        }
    }
}

/// What `GET /{media-id}` returns.
#[derive(Debug, Clone, Deserialize)]
pub struct MediaInfo {
    /// Short-lived download URL (needs the same bearer token).
    pub url: String,
    /// MIME type.
    #[serde(default)]
    pub mime_type: String,
    /// Hex SHA-256 of the file.
    #[serde(default)]
    pub sha256: String,
}

/// A Graph API client bound to a base URL and version.
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: Client,
    base: Url,
    version: String,
}

impl GraphClient {
    /// Builds the client; `timeout` bounds every call.
    pub fn new(base: Url, version: &str, timeout: Duration) -> Self {
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("omnigate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base,
            version: version.to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}/{path}",
            self.base.as_str().trim_end_matches('/'),
            self.version
        )
    }

    /// Looks up a media id's download URL.
    pub async fn media_info(
        &self,
        media_id: &str,
        phone_number_id: &str,
        token: &str,
    ) -> Result<MediaInfo, GraphError> {
        let response = self
            .http
            .get(self.url(media_id))
            .query(&[("phone_number_id", phone_number_id)])
            .bearer_auth(token)
            .send()
            .await
            .map_err(GraphError::network)?;
        let body = read_ok(response).await?;
        serde_json::from_slice(&body).map_err(|e| GraphError {
            status: 200,
            code: "bad_response".into(),
            title: e.to_string(),
        })
    }

    /// Downloads media bytes, refusing anything larger than `max_bytes`.
    pub async fn download(
        &self,
        url: &str,
        token: &str,
        max_bytes: u64,
    ) -> Result<Bytes, GraphError> {
        let too_large = || GraphError {
            status: 200,
            code: "too_large".into(),
            title: format!("media is larger than {max_bytes} bytes"),
        };
        let mut response = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(GraphError::network)?;
        if !response.status().is_success() {
            return Err(error_of(response).await);
        }
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Err(too_large());
        }
        let mut buffer = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(GraphError::network)? {
            if (buffer.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large());
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer.freeze())
    }

    /// Uploads bytes as media for `phone_number_id`; returns the media id.
    pub async fn upload(
        &self,
        phone_number_id: &str,
        token: &str,
        bytes: Bytes,
        mime_type: &str,
        filename: &str,
    ) -> Result<String, GraphError> {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec())
            .file_name(if filename.is_empty() {
                "file".to_string()
            } else {
                filename.to_string()
            })
            .mime_str(mime_type)
            .map_err(GraphError::network)?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime_type.to_string())
            .part("file", part);
        let response = self
            .http
            .post(self.url(&format!("{phone_number_id}/media")))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .map_err(GraphError::network)?;
        let body: Value = serde_json::from_slice(&read_ok(response).await?).unwrap_or_default();
        body["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| GraphError {
                status: 200,
                code: "bad_response".into(),
                title: "upload answer has no id".into(),
            })
    }

    /// Posts a message body; returns the new wamid (empty for mark-as-read).
    pub async fn send(
        &self,
        phone_number_id: &str,
        token: &str,
        body: &Value,
    ) -> Result<String, GraphError> {
        let response = self
            .http
            .post(self.url(&format!("{phone_number_id}/messages")))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(GraphError::network)?;
        let answer: Value = serde_json::from_slice(&read_ok(response).await?).unwrap_or_default();
        Ok(answer["messages"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

async fn read_ok(response: reqwest::Response) -> Result<Bytes, GraphError> {
    if !response.status().is_success() {
        return Err(error_of(response).await);
    }
    response.bytes().await.map_err(GraphError::network)
}

/// Reads Meta's error envelope `{"error": {"message", "code", …}}`.
async fn error_of(response: reqwest::Response) -> GraphError {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    let error = &body["error"];
    let code = match &error["code"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => format!("http_{}", status.as_u16()),
    };
    let title = error["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    GraphError {
        status: if status == StatusCode::OK {
            0
        } else {
            status.as_u16()
        },
        code,
        title,
    }
}
