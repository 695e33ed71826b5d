//! One visitor websocket: `hello` → `welcome`, messages acknowledged after Kafka,
//! replies pushed, heartbeats, limits.

use crate::{
    Livechat, METRICS,
    hub::Pushed,
    normalize::{self, Visitor},
    protocol::{self, ClientFrame, IdentityCheck, SUBPROTOCOL, ServerFrame},
    store::{HistoryRow, StoredReply},
};
use axum::{
    extract::{
        ConnectInfo, Path, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use omnigate_core::{
    publish::{ErrorKind, Topic},
    telemetry::EventOutcome,
};
use omnigate_model::pb;
use secrecy::ExposeSecret as _;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tracing::Instrument as _;

/// Most attachments one message may carry.
const MAX_ATTACHMENTS: usize = 10;

/// The longest a `hello` waits for this replica's unwritten history rows.
const HELLO_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Close codes of the protocol.
mod close {
    pub const UNAUTHORIZED: u16 = 4401;
    pub const ORIGIN: u16 = 4403;
    pub const IDLE: u16 = 4408;
    pub const TOO_LARGE: u16 = 4413;
    pub const RATE: u16 = 4429;
    pub const POLICY: u16 = 1008;
    pub const GOING_AWAY: u16 = 1001;
}

/// `GET /livechat/{channel}/ws`.
pub(crate) async fn upgrade(
    State(chat): State<Livechat>,
    Path(channel_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(channel) = chat.inner.config.channels.get(&channel_id) else {
        return (StatusCode::NOT_FOUND, "no such live chat channel").into_response();
    };
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let allowed = channel.allows(origin.as_deref());
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(512)
        .collect::<String>();
    let limit = chat.inner.config.frame_max_bytes;
    // Small buffers: an idle socket should cost a few KiB, not tungstenite's default
    // 128 KiB read buffer. Frames over the limit are cut off below the protocol's own
    // check (which answers 4413), so no socket buffers more than twice the limit.
    let ws = ws
        .protocols([SUBPROTOCOL])
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(limit * 2)
        .max_frame_size(limit * 2);
    if ws.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            format!("ask for the websocket subprotocol {SUBPROTOCOL}"),
        )
            .into_response();
    }
    ws.on_upgrade(move |socket| async move {
        let session = Session {
            chat,
            channel_id,
            user_agent,
        };
        session.run(socket, allowed, peer.ip()).await;
    })
}

struct Session {
    chat: Livechat,
    channel_id: String,
    user_agent: String,
}

/// A token bucket: `rate` per second, `burst` at once.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

async fn send(socket: &mut WebSocket, frame: &ServerFrame) -> bool {
    let Ok(text) = serde_json::to_string(frame) else {
        return false;
    };
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// Sends an `error` frame and closes with `code`.
async fn refuse(mut socket: WebSocket, code: u16, error: &str, message: &str) {
    tracing::info!(code, error, "Live chat socket closed");
    let _ = send(
        &mut socket,
        &ServerFrame::Error {
            code: error.into(),
            message: message.into(),
        },
    )
    .await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: error.to_string().into(),
        })))
        .await;
}

/// What ended the frame loop.
enum End {
    Close(u16, &'static str, &'static str),
    Gone,
}

impl Session {
    async fn run(self, mut socket: WebSocket, allowed: bool, ip: std::net::IpAddr) {
        let config = &self.chat.inner.config;
        if !allowed {
            return refuse(
                socket,
                close::ORIGIN,
                "origin_refused",
                "this page may not open the chat",
            )
            .await;
        }
        let Some(_slot) = self.chat.inner.hub.admit(ip, config.sockets_per_ip) else {
            return refuse(
                socket,
                close::RATE,
                "too_many_sockets",
                "too many chat connections from this address",
            )
            .await;
        };
        let idle = Duration::from_secs(config.idle_timeout_secs);
        let hello = match tokio::time::timeout(idle, socket.recv()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.len() <= config.frame_max_bytes => {
                protocol::parse_client(&text)
            }
            Ok(Some(Ok(Message::Text(_)))) => {
                return refuse(
                    socket,
                    close::TOO_LARGE,
                    "frame_too_large",
                    "frame too large",
                )
                .await;
            }
            _ => return,
        };
        let Ok(ClientFrame::Hello {
            visitor_token,
            identity,
            last_seq,
            page,
        }) = hello
        else {
            return refuse(
                socket,
                close::POLICY,
                "hello_expected",
                "the first frame must be hello",
            )
            .await;
        };
        let Some(channel) = config.channels.get(&self.channel_id) else {
            return;
        };
        let secret = channel.identity_secret.expose_secret().as_bytes();
        let check = identity.as_ref().map_or(IdentityCheck::Unverified, |i| {
            protocol::check_identity(secret, i)
        });
        if check == IdentityCheck::Forged {
            METRICS.events(&self.channel_id, EventOutcome::Rejected, 1);
            return refuse(
                socket,
                close::UNAUTHORIZED,
                "identity_refused",
                "the identity hash does not match",
            )
            .await;
        }
        let verified = check == IdentityCheck::Verified;
        if channel.require_identity && !verified {
            return refuse(
                socket,
                close::UNAUTHORIZED,
                "identity_required",
                "this chat needs a verified identity",
            )
            .await;
        }
        let token = visitor_token.as_deref().filter(|t| !t.is_empty());
        let returning = verified || token.is_some();
        let visitor = match (verified, token) {
            (true, _) => {
                protocol::verified_visitor(identity.as_ref().unwrap_or(&Default::default()))
            }
            (false, Some(token)) => match protocol::check_token(secret, &self.channel_id, token) {
                Some(visitor) => visitor,
                None => {
                    METRICS.events(&self.channel_id, EventOutcome::Rejected, 1);
                    return refuse(
                        socket,
                        close::UNAUTHORIZED,
                        "bad_visitor_token",
                        "unknown or forged visitor token",
                    )
                    .await;
                }
            },
            (false, None) => uuid::Uuid::new_v4().simple().to_string(),
        };
        let store = &self.chat.inner.store;
        // Messages this replica acknowledged moments ago are written first; if the
        // database is slow, the history is read without them rather than making the
        // hello wait longer. A new visitor has no history to wait for.
        if returning {
            let _ = tokio::time::timeout(
                HELLO_FLUSH_WAIT,
                self.chat.inner.history.flush(&self.channel_id, &visitor),
            )
            .await;
        }
        let (replies, history) = match (
            store
                .replies(&self.channel_id, &visitor, last_seq, u64::MAX)
                .await,
            store.history(&self.channel_id, &visitor, 100).await,
        ) {
            (Ok(replies), Ok(history)) => (replies, history),
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %err, "Live chat store unavailable at hello");
                return refuse(socket, 1011, "unavailable", "try again shortly").await;
            }
        };
        let welcome = ServerFrame::Welcome {
            visitor_token: protocol::issue_token(secret, &self.channel_id, &visitor),
            conversation_key: protocol::conversation_key(&self.channel_id, &visitor),
            verified,
            replies: replies.iter().map(StoredReply::frame).collect(),
            history,
        };
        if !send(&mut socket, &welcome).await {
            return;
        }
        let mut last_sent = replies.last().map_or(last_seq, |r| r.seq.max(last_seq));
        for reply in &replies {
            self.status(&visitor, &reply.event_id, pb::DeliveryStatus::Delivered);
        }
        let (pushes, mut pushed) = mpsc::channel(16);
        let _registration = self
            .chat
            .inner
            .hub
            .register((self.channel_id.clone(), visitor.clone()), pushes);
        let who = Visitor {
            channel_id: &self.channel_id,
            tenant: &channel.tenant,
            visitor: &visitor,
            identity: identity.as_ref(),
            verified,
            page: page.as_ref(),
            user_agent: &self.user_agent,
        };
        let mut bucket = Bucket {
            tokens: f64::from(config.message_burst),
            rate: config.messages_per_second,
            burst: f64::from(config.message_burst),
            at: Instant::now(),
        };
        let mut heartbeat = tokio::time::interval(Duration::from_secs(config.heartbeat_secs));
        heartbeat.tick().await;
        // One idle timer for the socket's life, moved on only when it fires: a frame
        // just notes the time instead of arming a new timer.
        let mut last_heard = tokio::time::Instant::now();
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        let mut last_read = 0u64;
        // Typing states set before this socket said hello are not news to it.
        let mut last_typing = Utc::now().timestamp_millis() - 1;
        let shutdown = self.chat.inner.ctx.shutdown.clone();
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        let end = loop {
            tokio::select! {
                frame = socket.recv() => {
                    last_heard = tokio::time::Instant::now();
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Gone,
                        Some(Ok(_)) => continue,
                    };
                    if text.len() > config.frame_max_bytes {
                        break End::Close(close::TOO_LARGE, "frame_too_large", "frame too large");
                    }
                    match protocol::parse_client(&text) {
                        Ok(ClientFrame::Message { client_id, text, attachments }) => {
                            if text.chars().count() > config.text_max_chars {
                                break End::Close(close::TOO_LARGE, "text_too_long", "message text too long");
                            }
                            let answer = match bucket.take() {
                                Err(wait) => ServerFrame::Nack {
                                    client_id,
                                    code: "rate_limited".into(),
                                    retry_after_ms: Some(wait.as_millis() as u64 + 1),
                                },
                                Ok(()) if client_id.is_empty() || client_id.len() > 128 || attachments.len() > MAX_ATTACHMENTS || (text.trim().is_empty() && attachments.is_empty()) => ServerFrame::Nack {
                                    client_id,
                                    code: "invalid_message".into(),
                                    retry_after_ms: None,
                                },
                                Ok(()) => self.accept(&who, client_id, text, &attachments).await,
                            };
                            if !send(&mut socket, &answer).await {
                                break End::Gone;
                            }
                        }
                        Ok(ClientFrame::Read { seq }) if seq > last_read => {
                            match store.replies(&self.channel_id, &visitor, last_read, seq.min(last_sent)).await {
                                Ok(read) => {
                                    for reply in read {
                                        self.status(&visitor, &reply.event_id, pb::DeliveryStatus::Read);
                                    }
                                    last_read = seq.min(last_sent);
                                }
                                Err(err) => tracing::warn!(error = %err, "Read receipts not recorded"),
                            }
                        }
                        Ok(ClientFrame::Ping) => {
                            if !send(&mut socket, &ServerFrame::Pong).await {
                                break End::Gone;
                            }
                        }
                        Ok(ClientFrame::Hello { .. }) => {
                            break End::Close(close::POLICY, "hello_again", "hello is sent once per socket");
                        }
                        // Typing, pongs, reads already counted and newer frame types.
                        Ok(_) => {}
                        Err(_) => {
                            break End::Close(close::POLICY, "unreadable_frame", "frames are JSON objects with a type");
                        }
                    }
                }
                Some(push) = pushed.recv() => match push {
                    Pushed::Reply(reply) => {
                        if reply.seq > last_sent {
                            if !send(&mut socket, &reply.frame()).await {
                                break End::Gone;
                            }
                            last_sent = reply.seq;
                            self.status(&visitor, &reply.event_id, pb::DeliveryStatus::Delivered);
                        }
                    }
                    // The pusher looks back a few seconds: each state is sent once.
                    Pushed::Typing(typing) => {
                        if typing.updated_ms > last_typing {
                            if !send(&mut socket, &typing.frame()).await {
                                break End::Gone;
                            }
                            last_typing = typing.updated_ms;
                        }
                    }
                },
                _ = heartbeat.tick() => {
                    if !send(&mut socket, &ServerFrame::Ping).await {
                        break End::Gone;
                    }
                }
                () = &mut idle_timer => {
                    let quiet_until = last_heard + idle;
                    if quiet_until > tokio::time::Instant::now() {
                        idle_timer.as_mut().reset(quiet_until);
                        continue;
                    }
                    break End::Close(close::IDLE, "heartbeat_timeout", "no frame within the idle timeout");
                }
                () = &mut shutting_down => {
                    break End::Close(close::GOING_AWAY, "shutting_down", "the server is restarting; reconnect");
                }
            }
        };
        if let End::Close(code, error, message) = end {
            refuse(socket, code, error, message).await;
        }
    }

    /// Publishes a visitor message and answers `ack` once Kafka has it, or `nack`.
    /// The event id derives from the visitor and the client id, so a message sent
    /// again after a lost ack lands under the same id; the history row is written
    /// after the ack, in batches, off the visitor's path.
    async fn accept(
        &self,
        who: &Visitor<'_>,
        client_id: String,
        text: String,
        upload_ids: &[String],
    ) -> ServerFrame {
        let (channel, visitor) = (who.channel_id, who.visitor);
        let attachments = if upload_ids.is_empty() {
            Vec::new()
        } else {
            match self
                .chat
                .inner
                .store
                .uploads(channel, visitor, upload_ids)
                .await
            {
                Ok(found) if found.iter().all(Option::is_some) => {
                    found.into_iter().flatten().collect()
                }
                Ok(_) => {
                    return ServerFrame::Nack {
                        client_id,
                        code: "invalid_message".into(),
                        retry_after_ms: None,
                    };
                }
                Err(err) => {
                    tracing::warn!(error = %err, "Uploads not looked up; nack");
                    return ServerFrame::Nack {
                        client_id,
                        code: "unavailable".into(),
                        retry_after_ms: Some(1000),
                    };
                }
            }
        };
        let event = normalize::message_event(who, &client_id, &text, attachments, Utc::now());
        let event_id = event.id.clone();
        // Instrumented rather than entered: an entered span would stay entered on the
        // worker thread, over other sockets, while this one waits for Kafka.
        let span =
            tracing::info_span!("livechat_message", channel = %channel, event_id = %event_id);
        let published = self
            .chat
            .inner
            .ctx
            .publisher
            .event(Topic::Inbound, event)
            .instrument(span.clone())
            .await;
        match published {
            Ok(_) => {
                METRICS.events(channel, EventOutcome::Published, 1);
                self.chat.inner.history.record(HistoryRow {
                    channel: channel.to_string(),
                    visitor: visitor.to_string(),
                    client_id: client_id.clone(),
                    event_id: event_id.clone(),
                    text,
                    created_ms: Utc::now().timestamp_millis(),
                });
                ServerFrame::Ack {
                    client_id,
                    event_id,
                }
            }
            Err(err) => {
                span.in_scope(
                    || tracing::warn!(error = %err, "Live chat message not on Kafka; nack"),
                );
                ServerFrame::Nack {
                    client_id,
                    code: if err.kind == ErrorKind::Permanent {
                        "refused"
                    } else {
                        "kafka_unavailable"
                    }
                    .into(),
                    retry_after_ms: (err.kind != ErrorKind::Permanent)
                        .then(|| err.retry_after().as_millis() as u64),
                }
            }
        }
    }

    /// Publishes a delivered or read status of a reply, beside the socket's work.
    fn status(&self, visitor: &str, reply_event_id: &str, status: pb::DeliveryStatus) {
        let Some(channel) = self.chat.inner.config.channels.get(&self.channel_id) else {
            return;
        };
        let event = normalize::reply_status(
            &self.channel_id,
            &channel.tenant,
            visitor,
            reply_event_id,
            status,
            Utc::now(),
        );
        let publisher = self.chat.inner.ctx.publisher.clone();
        self.chat.inner.ctx.tasks.spawn(async move {
            if let Err(err) = publisher.event(Topic::Inbound, event).await {
                tracing::warn!(error = %err, "Reply status not published");
            }
        });
    }
}
