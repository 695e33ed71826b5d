//! Readiness shared between the Kafka probe and the `/readyz` handler.

use crate::connector::ChannelState;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

/// Reports the state of a connector's channels, by channel id.
pub type ChannelReport = Arc<dyn Fn() -> Vec<(String, ChannelState)> + Send + Sync>;

/// Whether this process can do its work right now, and how its channels fare. Cheap
/// to clone.
#[derive(Clone, Default)]
pub struct Health {
    kafka_reachable: Arc<AtomicBool>,
    channels: Arc<Mutex<Vec<ChannelReport>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("kafka_reachable", &self.kafka_reachable())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Records whether the broker answered the last probe.
    pub fn set_kafka_reachable(&self, reachable: bool) {
        let was = self.kafka_reachable.swap(reachable, Ordering::Relaxed);
        if was != reachable {
            if reachable {
                tracing::info!("Kafka is reachable");
            } else {
                tracing::warn!("Kafka is unreachable; /readyz answers 503");
            }
        }
        metrics::gauge!(crate::telemetry::metric::KAFKA_REACHABLE).set(if reachable {
            1.0
        } else {
            0.0
        });
    }

    /// True while the broker answers.
    pub fn kafka_reachable(&self) -> bool {
        self.kafka_reachable.load(Ordering::Relaxed)
    }

    /// Adds a connector's channels to what `/readyz` details and
    /// `omnigate_channel_up` reports.
    pub fn add_channels(&self, report: ChannelReport) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(report);
    }

    /// Every channel's state, by channel id; also sets `omnigate_channel_up` (1 working,
    /// 0 in error) for each.
    pub fn channels(&self) -> Vec<(String, ChannelState)> {
        let reports = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let states: Vec<(String, ChannelState)> = reports.iter().flat_map(|r| r()).collect();
        for (channel, state) in &states {
            let up = if *state == ChannelState::Ok { 1.0 } else { 0.0 };
            metrics::gauge!(crate::telemetry::metric::CHANNEL_UP, "channel" => channel.clone())
                .set(up);
        }
        states
    }
}
