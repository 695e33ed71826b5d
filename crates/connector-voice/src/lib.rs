//! Voice connector: call events from Twilio and from any PBX that speaks Zammad's
//! generic CTI format.
//!
//! - `POST /webhooks/twilio/voice/{channel}`: Twilio status callbacks, checked against
//!   `X-Twilio-Signature` and the channel's account;
//! - `POST /webhooks/cti/{channel}/{token}` and `POST /webhooks/cti/{channel}` (with
//!   `X-Omnigate-Signature`): `newCall`, `answer` and `hangup` from CTI bridges;
//! - [`calls`]: one state machine turns every source's reports into `call.ringing`,
//!   `call.answered`, `call.ended` and `call.missed`, once each per call.

pub mod calls;
pub mod config;
pub mod normalize;
mod twiml;
pub mod verify;
mod webhook;

pub use config::{ChannelConfig, Provider, VoiceConfig};

use async_trait::async_trait;
use omnigate_core::{
    ConfigError,
    connector::{
        ChannelInfo, ConfigSource, Connector, ConnectorContext, ConnectorError, ConnectorKind,
    },
};
use omnigate_model::pb;
use std::sync::Arc;

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
        Ok(Arc::new(VoiceConnector { config }))
    }
}

/// Every configured voice channel, before it starts.
#[derive(Debug)]
struct VoiceConnector {
    config: VoiceConfig,
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

    async fn start(&self, ctx: ConnectorContext) -> Result<axum::Router, ConnectorError> {
        let voice = Voice {
            inner: Arc::new(Inner {
                calls: calls::CallBook::new(self.config.max_tracked_calls),
                config: self.config.clone(),
                ctx,
            }),
        };
        Ok(webhook::routes(voice))
    }
}
