//! Send commands for email channels: a mail over SMTP, threaded into the conversation
//! it answers, then `message.sent` with its Message-ID, or a failed `message.status`
//! with the server's code. A command is sent once, across restarts too.

use crate::{
    Email, METRICS,
    config::ChannelConfig,
    imap,
    normalize::{clean_id, conversation_key, thread_token},
    store::{StoreError, ThreadEntry},
};
use chrono::Utc;
use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Attachment, Mailbox, MultiPart, SinglePart, header::ContentType},
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{Tls, TlsParameters},
    },
};
use omnigate_core::{
    publish::{PublishError, Topic},
    retry::Schedule,
};
use omnigate_model::{
    EventBuilder, EventType,
    builder::{send_failed_payload, send_once_key, sent_payload},
    pb,
};
use secrecy::ExposeSecret as _;
use std::time::Instant;
use tracing::Instrument as _;

/// Why a command must be tried again later (the consumer retries it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Why a mail was not sent, for the failed status.
struct Refusal {
    code: String,
    title: String,
}

impl Refusal {
    fn new(code: impl Into<String>, title: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            title: title.into(),
        }
    }
}

/// What a reply answers: the mail's thread, if we know it.
struct ReplyContext {
    in_reply_to: Option<String>,
    thread: Option<ThreadEntry>,
}

impl Email {
    /// Executes one send command for an email channel and publishes its outcome on
    /// `omnigate.inbound.v1`. Fails only when that could not be recorded or published,
    /// so the command is retried (and not sent twice).
    pub(crate) async fn send(&self, command: &pb::SendCommand) -> Result<(), SendError> {
        let channel_id = command.channel.as_ref().map(|c| c.channel_id.as_str());
        // Instrumented rather than entered: an entered span would stay entered on the
        // worker thread, over other tasks, while this one waits.
        let span = tracing::info_span!("send", channel = channel_id.unwrap_or(""), command_id = %command.command_id);
        self.send_in_span(command).instrument(span).await
    }

    async fn send_in_span(&self, command: &pb::SendCommand) -> Result<(), SendError> {
        let Some(channel_id) = command.channel.as_ref().map(|c| c.channel_id.as_str()) else {
            return Ok(());
        };
        let Some(channel) = self.inner.config.channels.get(channel_id) else {
            return Ok(());
        };
        let store = &self.inner.store;
        let command_key = send_once_key(command);
        let reply = ReplyContext {
            in_reply_to: Some(clean_id(&command.reply_to_provider_id)).filter(|id| !id.is_empty()),
            thread: match clean_id(&command.reply_to_provider_id) {
                id if id.is_empty() => None,
                id => store.thread_entry(channel_id, &id).await?,
            },
        };
        let message_id = outgoing_message_id(&channel.address, &command_key);
        let root = reply
            .thread
            .as_ref()
            .map(|t| t.root.clone())
            .or_else(|| reply.in_reply_to.clone())
            .unwrap_or_else(|| message_id.clone());
        let outcome = match store.sent(channel_id, &command_key).await? {
            // Sent before a crash or a failed publish: only the event is missing.
            Some(_) => Ok(()),
            None => {
                let started = Instant::now();
                let outcome = self
                    .deliver(channel_id, channel, command, &reply, (&message_id, &root))
                    .await;
                let label = if outcome.is_ok() { "sent" } else { "failed" };
                METRICS.send(channel_id, label, started.elapsed().as_secs_f64());
                if outcome.is_ok() {
                    store
                        .mark_sent(channel_id, &command_key, &message_id, &command.command_id)
                        .await?;
                    let mut references = reply
                        .thread
                        .as_ref()
                        .map(|t| t.references.clone())
                        .unwrap_or_default();
                    references.push(message_id.clone());
                    store
                        .remember_token(
                            channel_id,
                            &thread_token(channel_id, &root),
                            &root,
                            &command.to.to_lowercase(),
                        )
                        .await?;
                    store
                        .remember(
                            channel_id,
                            &message_id,
                            &ThreadEntry {
                                root: root.clone(),
                                subject: String::new(),
                                references,
                                contact: command.to.to_lowercase(),
                            },
                        )
                        .await?;
                }
                outcome
            }
        };
        let now = Utc::now();
        let channel_ref = pb::Channel {
            kind: pb::ChannelKind::Email as i32,
            channel_id: channel_id.to_string(),
            address: channel.address.clone(),
        };
        let builder = EventBuilder::channel(pb::ChannelKind::Email, channel_id, &command.tenant);
        let key = conversation_key(channel_id, &root);
        let event = match outcome {
            Ok(()) => builder.event(
                EventType::MessageSent,
                &command.command_id,
                key,
                now,
                sent_payload(command, channel_ref, message_id, now),
            ),
            Err(refusal) => {
                tracing::warn!(code = %refusal.code, reason = %refusal.title, "Mail not sent");
                builder.event(
                    EventType::MessageStatus,
                    &format!("{}:failed", command.command_id),
                    key,
                    now,
                    send_failed_payload(command, channel_ref, refusal.code, refusal.title, now),
                )
            }
        };
        self.inner
            .ctx
            .publisher
            .event(Topic::Inbound, event)
            .await?;
        Ok(())
    }

    /// Builds the mail and hands it to the SMTP server, retrying temporary failures.
    async fn deliver(
        &self,
        channel_id: &str,
        channel: &ChannelConfig,
        command: &pb::SendCommand,
        reply: &ReplyContext,
        (message_id, root): (&str, &str),
    ) -> Result<(), Refusal> {
        let mail = self
            .build(channel_id, channel, command, reply, (message_id, root))
            .await?;
        let mut schedule = Schedule::millis(&self.inner.config.send_retry_delays_ms);
        loop {
            let err = match self.submit(channel_id, channel, &mail).await {
                Ok(()) => break,
                Err(err) => err,
            };
            let permanent = err.permanent;
            let Some(delay) = schedule.next_delay().filter(|_| !permanent) else {
                return Err(Refusal::new(err.code, err.text));
            };
            tracing::info!(error = %err.text, attempt = schedule.attempts(), "SMTP send failed; retrying");
            tokio::time::sleep(delay).await;
        }
        if let Some(folder) = &channel.sent_folder {
            self.copy_to_sent(channel_id, channel, folder, &mail).await;
        }
        Ok(())
    }

    async fn build(
        &self,
        channel_id: &str,
        channel: &ChannelConfig,
        command: &pb::SendCommand,
        reply: &ReplyContext,
        ids: (&str, &str),
    ) -> Result<Message, Refusal> {
        let (message_id, root) = ids;
        use pb::send_command::Content;
        let invalid = |what: String| Refusal::new("omnigate.invalid_command", what);
        let options = command.email.clone().unwrap_or_default();
        let from = Mailbox::new(
            channel.display_name.clone(),
            channel
                .address
                .parse()
                .map_err(|e| invalid(format!("our address: {e}")))?,
        );
        let to_address = if command.to.trim().is_empty() {
            reply
                .thread
                .as_ref()
                .map(|t| t.contact.clone())
                .unwrap_or_default()
        } else {
            command.to.trim().to_string()
        };
        let parse = |a: &str| -> Result<Mailbox, Refusal> {
            a.parse()
                .map_err(|e| invalid(format!("`{a}` is not an email address: {e}")))
        };
        let subject = if !options.subject.is_empty() {
            options.subject.clone()
        } else {
            match reply.thread.as_ref().map(|t| t.subject.as_str()) {
                Some(s) if s.to_ascii_lowercase().starts_with("re:") => s.to_string(),
                Some(s) if !s.is_empty() => format!("Re: {s}"),
                _ => String::new(),
            }
        };
        // The thread token rides in the subject and a Reply-To plus-address, for
        // clients that will drop every threading header of the answer.
        let token = thread_token(channel_id, root);
        let subject = if subject.contains("[#og-") {
            subject
        } else {
            format!("{subject} [#og-{token}]").trim_start().to_string()
        };
        let reply_to = match channel.address.split_once('@') {
            Some((local, domain)) => parse(&format!("{local}+{token}@{domain}"))?,
            None => parse(&channel.address)?,
        };
        let mut builder = Message::builder()
            .from(from)
            .reply_to(reply_to)
            .to(parse(&to_address)?)
            .subject(subject)
            .message_id(Some(format!("<{message_id}>")));
        for cc in &options.cc {
            builder = builder.cc(parse(cc)?);
        }
        for bcc in &options.bcc {
            builder = builder.bcc(parse(bcc)?);
        }
        if let Some(parent) = &reply.in_reply_to {
            builder = builder.in_reply_to(format!("<{parent}>"));
            let mut chain = reply
                .thread
                .as_ref()
                .map(|t| t.references.clone())
                .unwrap_or_default();
            if chain.last() != Some(parent) {
                chain.push(parent.clone());
            }
            let references: Vec<String> = chain.iter().map(|id| format!("<{id}>")).collect();
            builder = builder.references(references.join(" "));
        }
        let (text, attachment) = match &command.content {
            Some(Content::Text(text)) => (text.clone(), None),
            Some(Content::Media(media)) => (media.caption.clone(), Some(media.clone())),
            Some(Content::Template(_)) => {
                return Err(invalid(
                    "templates are for WhatsApp; send text to an email channel".into(),
                ));
            }
            Some(Content::MarkRead(_) | Content::Typing(_)) | None => {
                return Err(invalid("an email command needs text or media".into()));
            }
        };
        let alternatives = (!options.html.is_empty())
            .then(|| MultiPart::alternative_plain_html(text.clone(), options.html.clone()));
        let Some(media) = attachment else {
            // A plain reply is one text/plain part: what mail clients quote best.
            let built = match alternatives {
                Some(alternatives) => builder.multipart(alternatives),
                None => builder.singlepart(SinglePart::plain(text)),
            };
            return built.map_err(|e| invalid(format!("the mail cannot be built: {e}")));
        };
        let Some(pb::outbound_media::Source::Blob(blob)) = &media.source else {
            return Err(invalid(
                "email attachments come from the blob store (`media.blob`)".into(),
            ));
        };
        let bytes = self
            .inner
            .ctx
            .blobs
            .get(&blob.key)
            .await
            .map_err(|e| invalid(format!("attachment {}: {e}", blob.key)))?;
        let content_type = ContentType::parse(&blob.mime_type)
            .or_else(|_| ContentType::parse("application/octet-stream"))
            .map_err(|e| invalid(e.to_string()))?;
        let filename = if media.filename.is_empty() {
            "attachment".to_string()
        } else {
            media.filename.clone()
        };
        let body = match alternatives {
            Some(alternatives) => MultiPart::mixed().multipart(alternatives),
            None => MultiPart::mixed().singlepart(SinglePart::plain(text)),
        };
        builder
            .multipart(
                body.singlepart(Attachment::new(filename).body(bytes.to_vec(), content_type)),
            )
            .map_err(|e| invalid(format!("the mail cannot be built: {e}")))
    }

    /// One SMTP submission under the command deadline.
    async fn submit(
        &self,
        channel_id: &str,
        channel: &ChannelConfig,
        mail: &Message,
    ) -> Result<(), SmtpFailure> {
        let transport = self.transport(channel_id, channel).await?;
        let deadline = self.deadline();
        match tokio::time::timeout(deadline, transport.send(mail.clone())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => {
                // A refused token may have been revoked early: the next try asks for
                // a new one.
                if err.status().is_some_and(|c| c.to_string() == "535")
                    && let Some(tokens) = self.tokens(channel_id)
                {
                    tokens.forget();
                }
                Err(SmtpFailure {
                    permanent: err.is_permanent(),
                    code: err
                        .status()
                        .map_or_else(|| "smtp.connection".to_string(), |c| format!("smtp.{c}")),
                    text: err.to_string(),
                })
            }
            Err(_) => Err(SmtpFailure {
                permanent: false,
                code: "smtp.timeout".into(),
                text: format!("no answer within {} ms", deadline.as_millis()),
            }),
        }
    }

    async fn transport(
        &self,
        channel_id: &str,
        channel: &ChannelConfig,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, SmtpFailure> {
        let endpoint = channel.smtp().map_err(|e| SmtpFailure {
            permanent: true,
            code: "omnigate.config".into(),
            text: e,
        })?;
        let tls = || {
            TlsParameters::new(endpoint.host.clone()).map_err(|e| SmtpFailure {
                permanent: true,
                code: "smtp.tls".into(),
                text: e.to_string(),
            })
        };
        let mode = if endpoint.implicit_tls {
            Tls::Wrapper(tls()?)
        } else if channel.starttls {
            Tls::Required(tls()?)
        } else {
            Tls::None
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&endpoint.host)
            .port(endpoint.port)
            .tls(mode)
            .timeout(Some(self.deadline()));
        if channel.smtp_auth {
            let login = channel.smtp_login().to_string();
            builder = match (&channel.oauth2, &channel.password) {
                (Some(_), _) => {
                    let tokens = self.tokens(channel_id).ok_or_else(|| SmtpFailure {
                        permanent: true,
                        code: "omnigate.config".into(),
                        text: "no token source for this channel".into(),
                    })?;
                    let token = tokens.access_token().await.map_err(|e| SmtpFailure {
                        permanent: matches!(e, crate::oauth::TokenError::Refused(_)),
                        code: "oauth2".into(),
                        text: e.to_string(),
                    })?;
                    builder
                        .credentials(Credentials::new(login, token))
                        .authentication(vec![Mechanism::Xoauth2])
                }
                (None, Some(password)) => builder
                    .credentials(Credentials::new(
                        login,
                        password.expose_secret().to_string(),
                    ))
                    .authentication(vec![Mechanism::Plain, Mechanism::Login]),
                (None, None) => builder,
            };
        }
        Ok(builder.build())
    }

    /// Appends a copy of a sent mail to the Sent folder; a failure is only logged (the
    /// mail itself went out).
    async fn copy_to_sent(
        &self,
        channel_id: &str,
        channel: &ChannelConfig,
        folder: &str,
        mail: &Message,
    ) {
        let deadline = self.deadline();
        let copy = async {
            let endpoint = channel.imap().map_err(imap::ImapError::Protocol)?;
            let tokens = self.tokens(channel_id);
            let mut session = imap::connect(channel, &endpoint, tokens, deadline).await?;
            imap::within(
                deadline,
                "APPEND",
                session.append(folder, Some("(\\Seen)"), None, mail.formatted()),
            )
            .await?;
            let _ = imap::within(deadline, "LOGOUT", session.logout()).await;
            Ok::<_, imap::ImapError>(())
        };
        if let Err(err) = copy.await {
            tracing::warn!(folder = %folder, error = %err, "Sent mail not copied to the Sent folder");
        }
    }
}

/// A failed SMTP submission.
struct SmtpFailure {
    permanent: bool,
    code: String,
    text: String,
}

/// Our Message-ID for a command: the same command always gets the same id, so a
/// retried send is recognizable, and replies to it map back to its thread.
pub(crate) fn outgoing_message_id(address: &str, command_key: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f6d_6e69_6761_7465_8000_0000_0000_0e6d);
    let domain = address.rsplit('@').next().unwrap_or("omnigate.invalid");
    format!(
        "og.{}@{domain}",
        uuid::Uuid::new_v5(&NAMESPACE, command_key.as_bytes()).simple()
    )
}
