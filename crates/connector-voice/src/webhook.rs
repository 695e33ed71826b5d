//! The webhook endpoints: Twilio status callbacks and CTI requests, each verified,
//! parsed, run through the call state machine and acknowledged by Kafka before the 2xx.

use crate::{
    Voice,
    calls::{self, CallChannel},
    config::{ChannelConfig, Provider},
    normalize::{self, ParseError, Parsed},
    twiml, verify,
};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Uri, header},
    routing::post,
};
use chrono::Utc;
use omnigate_core::{
    api_error::ApiError,
    ingest, publish,
    telemetry::{ChannelMetrics, EventOutcome},
};
use omnigate_model::pb;
use secrecy::ExposeSecret as _;

/// The channel metrics of every voice channel.
pub(crate) const METRICS: ChannelMetrics = ChannelMetrics::voice();

pub(crate) fn routes(voice: Voice) -> Router {
    Router::new()
        .route("/webhooks/twilio/voice/{channel}", post(twilio_status))
        .route(
            "/webhooks/twilio/voice/{channel}/incoming",
            post(twilio_incoming),
        )
        .route(
            "/webhooks/twilio/voice/{channel}/recording",
            post(twilio_recording),
        )
        .route("/webhooks/cti/{channel}", post(cti_signed))
        .route("/webhooks/cti/{channel}/{token}", post(cti_with_token))
        .with_state(voice)
}

/// What CTI bridges expect back: Zammad answers `{}` when it has no instruction.
type CtiAnswer = Json<serde_json::Map<String, serde_json::Value>>;

fn channel<'a>(
    voice: &'a Voice,
    id: &str,
    provider: Provider,
) -> Result<&'a ChannelConfig, ApiError> {
    voice
        .inner
        .config
        .channels
        .get(id)
        .filter(|channel| channel.provider == provider)
        .ok_or_else(|| ApiError::not_found("no such voice channel"))
}

fn refused(channel_id: &str, source: &str, reason: &str) -> ApiError {
    METRICS.events(channel_id, EventOutcome::Rejected, 1);
    tracing::warn!(
        channel = channel_id,
        source,
        reason,
        "Voice webhook refused"
    );
    ApiError::unauthorized("invalid_signature", reason.to_string())
}

/// A Twilio request that passed the signature and account checks.
struct TwilioRequest<'a> {
    config: &'a ChannelConfig,
    /// The form fields (empty for a JSON body).
    pairs: Vec<(String, String)>,
    /// The URL Twilio called, as it signed it.
    url: url::Url,
}

/// Checks `X-Twilio-Signature` over the URL Twilio called (the channel's public
/// base, then the path and query) and that the request is for the channel's account.
fn verify_twilio_request<'a>(
    voice: &'a Voice,
    channel_id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<TwilioRequest<'a>, ApiError> {
    let config = channel(voice, channel_id, Provider::Twilio)?;
    let json = content_type(headers).starts_with("application/json");
    let pairs = if json {
        Vec::new()
    } else {
        normalize::form_pairs(body)
    };
    let base = config
        .public_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/'))
        .unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = url::Url::parse(&format!("{base}{path}")).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_url",
            e.to_string(),
        )
    })?;
    let token = config
        .auth_token
        .as_ref()
        .map(|t| t.expose_secret().as_bytes())
        .unwrap_or_default();
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(err) = verify::verify_twilio(token, &url, &pairs, body, signature) {
        return Err(refused(channel_id, "twilio", &err.to_string()));
    }
    let account = pairs
        .iter()
        .find(|(name, _)| name == "AccountSid")
        .map(|(_, v)| v.as_str());
    if !json && account != config.account_sid.as_deref() {
        METRICS.events(channel_id, EventOutcome::Rejected, 1);
        tracing::warn!(
            channel = channel_id,
            "Twilio request for another account refused"
        );
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "wrong_account",
            "AccountSid is not this channel's account",
        ));
    }
    Ok(TwilioRequest { config, pairs, url })
}

/// `POST /webhooks/twilio/voice/{channel}`: a status callback.
async fn twilio_status(
    State(voice): State<Voice>,
    Path(channel_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    let request = verify_twilio_request(&voice, &channel_id, &uri, &headers, &body)?;
    let parsed = normalize::twilio_status(&request.pairs, Utc::now());
    let answer = ingest_report(&voice, &channel_id, request.config, parsed, &headers, &body).await;
    METRICS.request_duration(started.elapsed().as_secs_f64());
    answer
}

/// `POST /webhooks/twilio/voice/{channel}/incoming`: the number's voice URL. Rings
/// `forward_to` first when there is one; when nobody answers there (Twilio posts the
/// `<Dial>` outcome back here), or without one, the caller may leave a voicemail,
/// whose recording Twilio reports to `/recording`.
async fn twilio_incoming(
    State(voice): State<Voice>,
    Path(channel_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let request = verify_twilio_request(&voice, &channel_id, &uri, &headers, &body)?;
    let field = |name: &str| {
        request
            .pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let public = request
        .config
        .public_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/'))
        .unwrap_or_default();
    let base = format!("{public}/webhooks/twilio/voice/{channel_id}");
    let twiml = twiml::incoming(
        request.config,
        &base,
        field("From").unwrap_or_default(),
        field("DialCallStatus"),
    );
    Ok(([(header::CONTENT_TYPE, "text/xml")], twiml))
}

/// `POST /webhooks/twilio/voice/{channel}/recording?from=...`: a voicemail's
/// recording is ready.
async fn twilio_recording(
    State(voice): State<Voice>,
    Path(channel_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    let request = verify_twilio_request(&voice, &channel_id, &uri, &headers, &body)?;
    let caller = request
        .url
        .query_pairs()
        .find(|(name, _)| name == "from")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let parsed = normalize::twilio_recording(&request.pairs, &caller, Utc::now());
    let answer = ingest_report(&voice, &channel_id, request.config, parsed, &headers, &body).await;
    METRICS.request_duration(started.elapsed().as_secs_f64());
    answer
}

/// `POST /webhooks/cti/{channel}/{token}`: a CTI request authenticated by its path.
async fn cti_with_token(
    State(voice): State<Voice>,
    Path((channel_id, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<CtiAnswer, ApiError> {
    let config = channel(&voice, &channel_id, Provider::Cti)?;
    let expected = config
        .token
        .as_ref()
        .map(|t| t.expose_secret())
        .unwrap_or_default();
    if !verify::cti_token_matches(expected, &token) {
        // The token itself is never logged: it is the whole credential.
        return Err(refused(&channel_id, "cti", "the path token does not match"));
    }
    cti(&voice, &channel_id, config, &headers, &body).await
}

/// `POST /webhooks/cti/{channel}`: a CTI request signed with `X-Omnigate-Signature`.
async fn cti_signed(
    State(voice): State<Voice>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<CtiAnswer, ApiError> {
    let config = channel(&voice, &channel_id, Provider::Cti)?;
    let Some(secret) = config.hmac_secret.as_ref() else {
        return Err(refused(
            &channel_id,
            "cti",
            "this channel takes its token in the path",
        ));
    };
    let signature = headers
        .get("x-omnigate-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(err) =
        verify::verify_cti_signature(secret.expose_secret().as_bytes(), &body, signature)
    {
        return Err(refused(&channel_id, "cti", &err.to_string()));
    }
    cti(&voice, &channel_id, config, &headers, &body).await
}

async fn cti(
    voice: &Voice,
    channel_id: &str,
    config: &ChannelConfig,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<CtiAnswer, ApiError> {
    let started = std::time::Instant::now();
    let parsed = normalize::cti(body, content_type(headers), Utc::now());
    let answer = ingest_report(voice, channel_id, config, parsed, headers, body).await;
    METRICS.request_duration(started.elapsed().as_secs_f64());
    answer.map(|()| Json(serde_json::Map::new()))
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-www-form-urlencoded")
}

/// Publishes the event a verified request calls for, if any, then moves the call's
/// state. An unreadable request goes to the dead-letter topic with its raw bytes and
/// is answered 2xx, so the provider stops sending what can never be read.
async fn ingest_report(
    voice: &Voice,
    channel_id: &str,
    config: &ChannelConfig,
    parsed: Result<Parsed, ParseError>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(), ApiError> {
    METRICS.received_bytes(channel_id, body.len() as u64);
    let received_at = Utc::now();
    let letter = |reason: &str| {
        ingest::raw_dead_letter(
            pb::ChannelKind::Voice,
            channel_id,
            &config.tenant,
            content_type(headers),
            body,
            reason,
            received_at,
        )
    };
    let ctx = &voice.inner.ctx;
    let report = match parsed {
        Ok(Parsed::Report(report)) => report,
        Ok(Parsed::Ignored(what)) => {
            METRICS.events(channel_id, EventOutcome::Ignored, 1);
            tracing::debug!(channel = channel_id, what, "Voice callback ignored");
            return Ok(());
        }
        Err(err) => {
            METRICS.events(channel_id, EventOutcome::DeadLettered, 1);
            tracing::warn!(channel = channel_id, reason = %err, bytes = body.len(), "Voice request dead-lettered");
            ingest::dead_letter(&ctx.publisher, &ctx.blobs, letter(&err.to_string())).await?;
            return Ok(());
        }
    };
    publish_report(voice, channel_id, config, &report, || letter("")).await
}

/// Publishes the event `report` calls for against its call's state, if any, then
/// moves the state. Fails only when the provider should send the report again
/// (Kafka did not take it).
pub(crate) async fn publish_report(
    voice: &Voice,
    channel_id: &str,
    config: &ChannelConfig,
    report: &normalize::CallReport,
    letter: impl FnOnce() -> pb::DeadLetter,
) -> Result<(), ApiError> {
    let ctx = &voice.inner.ctx;
    let call_key = format!("{channel_id}:{}", report.call_id);
    let calls = &voice.inner.calls;
    let Some(decision) = calls::decide(&calls.state(&call_key), report) else {
        METRICS.events(channel_id, EventOutcome::Ignored, 1);
        tracing::debug!(channel = channel_id, step = ?report.step, "Repeated or late call step; nothing to publish");
        return Ok(());
    };
    let source = CallChannel {
        channel_id,
        tenant: &config.tenant,
        number: &config.number,
        default_country: config.country(),
    };
    let event = calls::call_event(&source, &decision);
    let event_type = decision.event_type;
    let copy_recording = crate::recordings::recording_to_copy(&event, config.provider);
    let mut records = Vec::with_capacity(2);
    publish::push_inbound(&mut records, event, copy_recording);
    let ingested =
        ingest::publish_or_dead_letter(&ctx.publisher, &ctx.blobs, &records, letter)
            .await
            .inspect_err(|err| {
                tracing::warn!(channel = channel_id, error = %err, "Kafka did not take the call event; answering 503");
            })?;
    calls.keep(&call_key, decision.next);
    let outcome = match ingested {
        ingest::Ingested::Published => EventOutcome::Published,
        ingest::Ingested::DeadLettered => EventOutcome::DeadLettered,
    };
    METRICS.events(channel_id, outcome, 1);
    tracing::debug!(
        channel = channel_id,
        event_type = event_type.as_str(),
        "Call event published"
    );
    Ok(())
}
