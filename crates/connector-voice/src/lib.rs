//! Voice connector: call events from Twilio, from any PBX that speaks Zammad's
//! generic CTI format, and from Asterisk directly over AMI.
//!
//! - `POST /webhooks/twilio/voice/{channel}`: Twilio status callbacks, checked against
//!   `X-Twilio-Signature` and the channel's account;
//! - `POST /webhooks/cti/{channel}/{token}` and `POST /webhooks/cti/{channel}` (with
//!   `X-Omnigate-Signature`): `newCall`, `answer` and `hangup` from CTI bridges;
//! - [`ami`]: a long-lived Asterisk Manager Interface connection per channel;
//! - [`calls`]: one state machine turns every source's reports into `call.ringing`,
//!   `call.answered`, `call.ended` and `call.missed`, once each per call.

pub mod ami;
pub mod calls;
pub mod config;
pub mod normalize;
mod recordings;
mod twiml;
pub mod verify;
mod webhook;

pub use config::{ChannelConfig, Provider, VoiceConfig};

use async_trait::async_trait;
use omnigate_core::{
    ConfigError,
    connector::{
        ChannelInfo, ChannelState, ConfigSource, Connector, ConnectorContext, ConnectorError,
        ConnectorKind, Pace,
    },
    consume::HandlerError,
    publish::Topic,
};
use omnigate_model::pb;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// The running connector: every configured voice channel.
#[derive(Clone, Debug)]
pub(crate) struct Voice {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: VoiceConfig,
    ctx: ConnectorContext,
    calls: calls::CallBook,
    states: ChannelStates,
    /// Downloads voicemail recordings.
    http: reqwest::Client,
}

/// Each channel's state, shared by the running connector (which sets it) and the
/// configured one (which reports it).
type ChannelStates = Arc<Mutex<BTreeMap<String, ChannelState>>>;

impl Voice {
    /// Records `channel`'s state for health reports.
    pub(crate) fn set_state(&self, channel: &str, state: ChannelState) {
        let mut states = self.inner.states.lock().unwrap_or_else(|e| e.into_inner());
        states.insert(channel.to_string(), state);
    }
}

/// The voice connector kind: its `[voice]` table and role name.
#[derive(Debug, Clone, Copy, Default)]
pub struct VoiceKind;

impl ConnectorKind for VoiceKind {
    fn name(&self) -> &'static str {
        "voice"
    }

    fn configure(&self, source: &ConfigSource) -> Result<Arc<dyn Connector>, ConfigError> {
        let config: VoiceConfig = source.table("voice")?;
        config.validate()?;
        Ok(Arc::new(VoiceConnector {
            config,
            states: ChannelStates::default(),
        }))
    }
}

/// Every configured voice channel, before it starts.
#[derive(Debug)]
struct VoiceConnector {
    config: VoiceConfig,
    states: ChannelStates,
}

#[async_trait]
impl Connector for VoiceConnector {
    fn channels(&self) -> Vec<ChannelInfo> {
        self.config
            .channels
            .iter()
            .map(|(id, channel)| ChannelInfo {
                id: id.clone(),
                kind: pb::ChannelKind::Voice,
                tenant: channel.tenant.clone(),
            })
            .collect()
    }

    fn health(&self) -> Vec<(String, ChannelState)> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        self.config
            .channels
            .keys()
            .map(|id| {
                (
                    id.clone(),
                    states.get(id).cloned().unwrap_or(ChannelState::Ok),
                )
            })
            .collect()
    }

    async fn start(&self, ctx: ConnectorContext) -> Result<axum::Router, ConnectorError> {
        let voice = Voice {
            inner: Arc::new(Inner {
                calls: calls::CallBook::new(self.config.max_tracked_calls),
                config: self.config.clone(),
                ctx: ctx.clone(),
                states: Arc::clone(&self.states),
                http: reqwest::Client::builder()
                    .timeout(std::time::Duration::from_millis(
                        self.config.http_timeout_ms,
                    ))
                    .build()
                    .map_err(|e| ConnectorError {
                        connector: "voice",
                        message: format!("cannot build the HTTP client: {e}"),
                    })?,
            }),
        };
        if self
            .config
            .channels
            .values()
            .any(|channel| channel.provider == Provider::Twilio)
        {
            // Recordings follow the jobs topic, where the callback put each voicemail to
            // copy before its 200: a crash in between never loses the copy.
            let copier = voice.clone();
            ctx.subscriber.spawn(
                &ctx,
                "voice-recordings",
                Topic::Jobs,
                Pace::Background,
                Box::new(move |record| {
                    let copier = copier.clone();
                    Box::pin(async move {
                        if !recordings::is_voicemail(&record) {
                            return Ok(());
                        }
                        let event: pb::Event = record
                            .decode()
                            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
                        copier
                            .copy_recording(&event)
                            .await
                            .map_err(|err| match err {
                                recordings::RecordingError::Retriable(m) => {
                                    HandlerError::Retriable(m)
                                }
                                recordings::RecordingError::Permanent(m) => {
                                    tracing::warn!(reason = %m, "Voicemail recording not copied");
                                    HandlerError::Permanent(m)
                                }
                            })
                    })
                }),
            )?;
        }
        for (id, channel) in &self.config.channels {
            if channel.provider == Provider::Asterisk {
                voice.set_state(id, ChannelState::Error("Asterisk AMI: connecting".into()));
                ctx.tasks
                    .spawn(ami::follow(voice.clone(), id.clone(), channel.clone()));
            }
        }
        Ok(webhook::routes(voice))
    }
}
