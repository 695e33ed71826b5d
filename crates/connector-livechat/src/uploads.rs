//! `POST /livechat/{channel}/uploads`: a visitor's file, authorized by their visitor
//! token, into the blob store; its `upload_id` then goes in a message's `attachments`.

use crate::{Livechat, protocol};
use axum::{
    extract::{Multipart, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use omnigate_core::blob::content_key;
use omnigate_model::pb;
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};

/// CORS headers for a page of an allowed origin (a shop on another origin sends the
/// visitor token in `Authorization`, which needs a preflight).
fn cors(
    chat: &Livechat,
    channel: &str,
    headers: &HeaderMap,
) -> Vec<(header::HeaderName, HeaderValue)> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let allowed = chat
        .inner
        .config
        .channels
        .get(channel)
        .is_some_and(|c| c.allows(origin));
    match (allowed, origin.and_then(|o| HeaderValue::from_str(o).ok())) {
        (true, Some(origin)) => vec![
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (header::VARY, HeaderValue::from_static("Origin")),
        ],
        _ => Vec::new(),
    }
}

/// `OPTIONS /livechat/{channel}/uploads`: the CORS preflight.
pub(crate) async fn preflight(
    State(chat): State<Livechat>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut allowed = cors(&chat, &channel, &headers);
    if allowed.is_empty() {
        return StatusCode::FORBIDDEN.into_response();
    }
    allowed.push((
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    ));
    allowed.push((
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    ));
    allowed.push((
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    ));
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().extend(allowed);
    response
}

fn answer(
    status: StatusCode,
    body: serde_json::Value,
    cors: Vec<(header::HeaderName, HeaderValue)>,
) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().extend(cors);
    response
}

/// `POST /livechat/{channel}/uploads`.
pub(crate) async fn upload(
    State(chat): State<Livechat>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    let cors = cors(&chat, &channel_id, &headers);
    let error = |status: StatusCode, code: &str, message: &str| {
        answer(
            status,
            serde_json::json!({"code": code, "message": message}),
            cors.clone(),
        )
    };
    let Some(channel) = chat.inner.config.channels.get(&channel_id) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_channel",
            "no such live chat channel",
        );
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let secret = channel.identity_secret.expose_secret().as_bytes();
    let Some(visitor) = protocol::check_token(secret, &channel_id, token) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "bad_visitor_token",
            "a visitor token is required",
        );
    };
    let config = &chat.inner.config;
    let field = loop {
        match form.next_field().await {
            Ok(Some(field)) if field.name() == Some("file") => break field,
            Ok(Some(_)) => continue,
            Ok(None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "no_file",
                    "send the file in the multipart field `file`",
                );
            }
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "unreadable_form",
                    "the body is not multipart/form-data",
                );
            }
        }
    };
    let mime_type = field
        .content_type()
        .unwrap_or("application/octet-stream")
        .to_ascii_lowercase();
    let filename: String = field
        .file_name()
        .unwrap_or("file")
        .chars()
        .take(200)
        .collect();
    if !config.upload_mime_types.iter().any(|allowed| {
        allowed == &mime_type
            || allowed
                .strip_suffix("/*")
                .is_some_and(|kind| mime_type.starts_with(&format!("{kind}/")))
    }) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "type_not_allowed",
            "this file type is not accepted",
        );
    }
    let bytes: Bytes = match field.bytes().await {
        Ok(bytes) => bytes,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "unreadable_form",
                "the file could not be read",
            );
        }
    };
    if bytes.len() as u64 > config.upload_max_bytes {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the file is over the upload limit",
        );
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    let blob = match chat
        .inner
        .ctx
        .blobs
        .put(
            &content_key("livechat/uploads", &sha, ""),
            &mime_type,
            bytes,
        )
        .await
    {
        Ok(blob) => blob,
        Err(err) => {
            tracing::warn!(error = %err, "Upload not stored");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again shortly",
            );
        }
    };
    let upload_id = format!("up_{}", uuid::Uuid::new_v4().simple());
    let attachment = pb::Attachment {
        kind: match mime_type.split('/').next() {
            Some("image") => "image",
            Some("audio") => "audio",
            Some("video") => "video",
            _ => "document",
        }
        .into(),
        mime_type: mime_type.clone(),
        size: blob.size,
        sha256: blob.sha256.clone(),
        filename,
        state: pb::MediaState::Stored as i32,
        blob: Some(blob),
        ..Default::default()
    };
    if let Err(err) = chat
        .inner
        .store
        .save_upload(&channel_id, &visitor, &upload_id, &attachment)
        .await
    {
        tracing::warn!(error = %err, "Upload not recorded");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "try again shortly",
        );
    }
    answer(
        StatusCode::CREATED,
        serde_json::json!({"upload_id": upload_id, "mime_type": mime_type, "size": attachment.size}),
        cors,
    )
}
