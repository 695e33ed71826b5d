//! Following one folder: connect, read everything above the cursor, wait in IDLE (or
//! poll), read again; on any failure, reconnect with backoff and jitter. A folder in
//! error shows in `/readyz` and never blocks another folder.

use crate::{
    Email, METRICS,
    imap::{self, ImapError, ImapSession, within},
    lease::{BEAT, FolderId, LEASE_TTL, Leases},
    normalize::{self, Mailbox},
    store::{Cursor, StoreError, ThreadEntry},
};
use bytes::Bytes;
use chrono::Utc;
use futures::TryStreamExt as _;
use omnigate_core::{
    connector::ChannelState,
    ingest,
    publish::{ErrorKind, PublishError, Topic},
    telemetry::EventOutcome,
};
use omnigate_model::pb;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Why reading a folder stopped.
#[derive(Debug, thiserror::Error)]
enum FolderError {
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Kafka: {0}")]
    Publish(#[from] PublishError),
    #[error("blob store: {0}")]
    Blob(#[from] omnigate_core::blob::BlobError),
    /// Not a failure: the OAuth2 token runs out before the next IDLE would end, so
    /// the session is closed and opened again with a fresh token.
    #[error("reconnecting with a fresh access token")]
    TokenRenewal,
}

/// Follows the folders whose leases this replica holds, until shutdown: every beat
/// renews the leases and starts or stops followers as they move between replicas.
pub(crate) async fn coordinate(email: Email, leases: Leases) {
    let all: Vec<FolderId> = email
        .config()
        .channels
        .iter()
        .flat_map(|(id, channel)| channel.folders.iter().map(|f| (id.clone(), f.clone())))
        .collect();
    let shutdown = email.inner.ctx.shutdown.clone();
    let mut running: BTreeMap<FolderId, CancellationToken> = BTreeMap::new();
    let mut last_renewed = Instant::now();
    loop {
        match leases.beat(&all).await {
            Ok(held) => {
                last_renewed = Instant::now();
                running.retain(|folder, stop| {
                    let keep = held.contains(folder);
                    if !keep {
                        tracing::info!(channel = %folder.0, folder = %folder.1, "Mailbox handed to another replica");
                        stop.cancel();
                        email.clear_state(&folder.0, &folder.1);
                    }
                    keep
                });
                for folder in held {
                    running.entry(folder.clone()).or_insert_with(|| {
                        let stop = shutdown.child_token();
                        email.set_state(
                            &folder.0,
                            &folder.1,
                            ChannelState::Error("connecting".into()),
                        );
                        email.inner.ctx.tasks.spawn(follow(
                            email.clone(),
                            folder.0,
                            folder.1,
                            stop.clone(),
                        ));
                        stop
                    });
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "Mailbox leases not renewed");
                // Stop before the leases can run out, so no other replica ever
                // follows a folder at the same time as this one.
                if last_renewed.elapsed() > LEASE_TTL.saturating_sub(BEAT * 2) {
                    for (folder, stop) in std::mem::take(&mut running) {
                        stop.cancel();
                        email.set_state(
                            &folder.0,
                            &folder.1,
                            ChannelState::Error(format!("lease not renewed: {err}")),
                        );
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(BEAT) => {}
            () = shutdown.cancelled() => break,
        }
    }
    for stop in running.values() {
        stop.cancel();
    }
    // The others take over at once instead of after the lease runs out.
    if let Err(err) = leases.release_all().await {
        tracing::warn!(error = %err, "Mailbox leases not released at shutdown");
    }
}

/// Follows `folder` of `channel_id` until `stop` fires.
async fn follow(email: Email, channel_id: String, folder: String, stop: CancellationToken) {
    let config = email.config();
    let min = Duration::from_millis(config.reconnect_min_ms);
    let max = Duration::from_millis(config.reconnect_max_ms).max(min);
    let mut pause = min;
    let shutdown = stop;
    loop {
        let outcome = tokio::select! {
            outcome = read_folder(&email, &channel_id, &folder, &mut pause, min) => outcome,
            () = shutdown.cancelled() => return,
        };
        let err = match outcome {
            Ok(()) => return,
            Err(FolderError::TokenRenewal) => continue,
            Err(err) => err,
        };
        tracing::warn!(channel = %channel_id, folder = %folder, error = %err, retry_in_ms = pause.as_millis() as u64, "Mailbox not readable; reconnecting");
        email.set_state(&channel_id, &folder, ChannelState::Error(err.to_string()));
        // Jitter spreads the reconnects of many mailboxes after a server restart.
        let jittered = pause.mul_f64(rand::random_range(0.5..=1.0));
        tokio::select! {
            () = tokio::time::sleep(jittered) => {}
            () = shutdown.cancelled() => return,
        }
        pause = (pause * 2).min(max);
    }
}

/// One connection's life: log in, select, then read and wait, until an error.
async fn read_folder(
    email: &Email,
    channel_id: &str,
    folder: &str,
    pause: &mut Duration,
    min_pause: Duration,
) -> Result<(), FolderError> {
    let config = email.config();
    let Some(channel) = config.channels.get(channel_id) else {
        return Ok(());
    };
    let endpoint = channel.imap().map_err(ImapError::Protocol)?;
    let deadline = email.deadline();
    let tokens = email.tokens(channel_id);
    let mut session = imap::connect(channel, &endpoint, tokens, deadline).await?;
    let selected = within(deadline, "SELECT", session.select(folder)).await?;
    let uid_validity = selected.uid_validity.unwrap_or(0);
    let capabilities = within(deadline, "CAPABILITY", session.capabilities()).await?;
    let idle = capabilities.has_str("IDLE");
    email.set_state(channel_id, folder, ChannelState::Ok);
    *pause = min_pause;
    tracing::info!(channel = %channel_id, folder = %folder, idle, "Following mailbox");
    let renew = Duration::from_secs(config.idle_renew_secs);
    loop {
        read_new_mail(email, &mut session, channel_id, folder, uid_validity).await?;
        while session.unsolicited_responses.try_recv().is_ok() {}
        // With OAuth2, the session ends when its token is due for renewal (Exchange
        // drops a session whose token expired), and the next one logs in afresh.
        let token_due = tokens.and_then(|t| t.expires_at());
        let wait = match token_due {
            Some(due) if due <= Instant::now() => {
                let _ = within(deadline, "LOGOUT", session.logout()).await;
                return Err(FolderError::TokenRenewal);
            }
            Some(due) => renew.min(due - Instant::now()),
            None => renew,
        };
        if idle {
            session = wait_in_idle(session, wait, deadline).await?;
        } else {
            tokio::time::sleep(Duration::from_secs(config.poll_interval_secs)).await;
            within(deadline, "NOOP", session.noop()).await?;
        }
    }
}

/// Waits in IDLE until the server reports a change or `renew` passes, then ends the
/// IDLE. The whole wait is bounded: keepalives from the server reset async-imap's own
/// timeout, so it alone would not end an IDLE.
async fn wait_in_idle(
    session: ImapSession,
    renew: Duration,
    deadline: Duration,
) -> Result<ImapSession, FolderError> {
    let mut handle = session.idle();
    within(deadline, "IDLE", handle.init()).await?;
    {
        let (wait, _interrupt) = handle.wait_with_timeout(renew);
        // New data, the server's own timeout and ours all end the wait the same way.
        if let Ok(Err(err)) = tokio::time::timeout(renew, wait).await {
            return Err(ImapError::from(err).into());
        }
    }
    Ok(within(deadline, "DONE", handle.done()).await?)
}

/// Reads every mail above the cursor, batch by batch, moving the cursor after each
/// batch is on Kafka.
async fn read_new_mail(
    email: &Email,
    session: &mut ImapSession,
    channel_id: &str,
    folder: &str,
    uid_validity: u32,
) -> Result<(), FolderError> {
    let store = &email.inner.store;
    let deadline = email.deadline();
    let stored = store.cursor(channel_id, folder).await?;
    let mut cursor = match stored {
        Some(cursor) if cursor.uid_validity == uid_validity => cursor,
        Some(old) => {
            // The folder was recreated: every UID changed meaning. Its mails are read
            // again; their event ids come from their Message-IDs, so none is new.
            tracing::warn!(channel = %channel_id, folder = %folder, old = old.uid_validity, new = uid_validity, "UIDVALIDITY changed; reading the folder again");
            Cursor {
                uid_validity,
                last_uid: 0,
            }
        }
        None => first_cursor(email, session, channel_id, uid_validity).await?,
    };
    let found = within(
        deadline,
        "UID SEARCH",
        session.uid_search(format!("UID {}:*", cursor.last_uid.saturating_add(1))),
    )
    .await?;
    // `n:*` matches the last mail even when its UID is below n.
    let mut uids: Vec<u32> = found
        .into_iter()
        .filter(|uid| *uid > cursor.last_uid)
        .collect();
    uids.sort_unstable();
    if uids.is_empty() {
        if stored != Some(cursor) {
            store.save_cursor(channel_id, folder, cursor).await?;
        }
        return Ok(());
    }
    let batch_size = email.config().fetch_batch as usize;
    for batch in uids.chunks(batch_size) {
        let set = batch
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // A batch of large mails takes longer than one command: the deadline grows
        // with the batch.
        let fetches: Vec<_> = within(deadline * batch.len() as u32, "UID FETCH", async {
            session
                .uid_fetch(&set, "(UID BODY.PEEK[])")
                .await?
                .try_collect()
                .await
        })
        .await?;
        let ingests = fetches.iter().filter_map(|fetch| {
            let raw = fetch.body()?;
            Some(ingest_mail(email, channel_id, folder, raw))
        });
        for outcome in futures::future::join_all(ingests).await {
            outcome?;
        }
        // Mails of the batch that are gone from the fetch were expunged meanwhile.
        cursor.last_uid = batch.last().copied().unwrap_or(cursor.last_uid);
        store.save_cursor(channel_id, folder, cursor).await?;
    }
    Ok(())
}

/// The cursor of a folder read for the first time: from the start, or from
/// `backfill_since`.
async fn first_cursor(
    email: &Email,
    session: &mut ImapSession,
    channel_id: &str,
    uid_validity: u32,
) -> Result<Cursor, FolderError> {
    let since = email
        .config()
        .channels
        .get(channel_id)
        .and_then(|c| c.backfill_since);
    let Some(since) = since else {
        return Ok(Cursor {
            uid_validity,
            last_uid: 0,
        });
    };
    let query = format!("SINCE {}", since.format("%-d-%b-%Y"));
    let found = within(
        email.deadline(),
        "UID SEARCH SINCE",
        session.uid_search(query),
    )
    .await?;
    let last_uid = match found.into_iter().min() {
        Some(first) => first - 1,
        // Nothing that recent yet: start after everything there is.
        None => within(
            email.deadline(),
            "UID SEARCH ALL",
            session.uid_search("ALL"),
        )
        .await?
        .into_iter()
        .max()
        .unwrap_or(0),
    };
    Ok(Cursor {
        uid_validity,
        last_uid,
    })
}

/// Normalizes one mail, stores its parts, publishes it and indexes its thread. Mail
/// that cannot be normalized, or that Kafka refuses for good, is dead-lettered with
/// its raw bytes; mail from our own address is skipped.
async fn ingest_mail(
    email: &Email,
    channel_id: &str,
    folder: &str,
    raw: &[u8],
) -> Result<(), FolderError> {
    // Instrumented rather than entered: an entered span would stay entered on the
    // worker thread, over other tasks, while this one waits.
    let span = tracing::info_span!("mail", channel = %channel_id, folder = %folder);
    ingest_mail_in_span(email, channel_id, folder, raw)
        .instrument(span)
        .await
}

async fn ingest_mail_in_span(
    email: &Email,
    channel_id: &str,
    folder: &str,
    raw: &[u8],
) -> Result<(), FolderError> {
    let inner = &email.inner;
    let Some(channel) = inner.config.channels.get(channel_id) else {
        return Ok(());
    };
    let now = Utc::now();
    let mailbox = Mailbox {
        channel_id,
        tenant: &channel.tenant,
        address: &channel.address,
        folder,
    };
    let mut mail = match normalize::normalize(raw, mailbox, now) {
        Ok(mail) => mail,
        Err(err) => {
            tracing::warn!(error = %err, bytes = raw.len(), "Mail not readable; dead-lettered");
            return dead_letter(email, channel_id, &channel.tenant, raw, &err.to_string()).await;
        }
    };
    if mail.from_us {
        // Our own replies (Sent folder, copies to ourselves) are not customer mail.
        METRICS.events(channel_id, EventOutcome::Ignored, 1);
        return Ok(());
    }
    let known_parent = match &mail.parent {
        Some(parent) => inner.store.thread_entry(channel_id, parent).await?,
        None => None,
    };
    match known_parent {
        Some(known) if known.root != mail.root => mail.rekey(channel_id, &known.root),
        Some(_) => {}
        // No threading header we know: a thread token in a plus-address or the
        // subject joins the thread, but only for that thread's customer, so copying
        // a token into one's own mail joins nothing.
        None => {
            if let Some(meta) = email_metadata(&mail.event)
                && let Some(token) = normalize::token_hint(meta, &channel.address)
                && let Some((root, contact)) = inner.store.token_thread(channel_id, &token).await?
                && contact.eq_ignore_ascii_case(&meta.from)
            {
                mail.rekey(channel_id, &root);
            }
        }
    }
    // The bytes move into the store; the event keeps only the references.
    for blob in std::mem::take(&mut mail.blobs) {
        inner
            .ctx
            .blobs
            .put(
                &blob.blob.key,
                &blob.blob.mime_type,
                Bytes::from(blob.bytes),
            )
            .await?;
    }
    match inner
        .ctx
        .publisher
        .event(Topic::Inbound, mail.event.clone())
        .await
    {
        Ok(_) => METRICS.events(channel_id, EventOutcome::Published, 1),
        Err(err) if err.kind == ErrorKind::Permanent => {
            let reason = format!("Kafka refused the event: {}", err.message);
            return dead_letter(email, channel_id, &channel.tenant, raw, &reason).await;
        }
        Err(err) => return Err(err.into()),
    }
    METRICS.received_bytes(channel_id, raw.len() as u64);
    let meta = email_metadata(&mail.event).cloned().unwrap_or_default();
    if meta.bounce && !meta.bounced_message_id.is_empty() {
        report_bounce(email, channel_id, &channel.tenant, &channel.address, &meta).await?;
    }
    let (subject, references) = (meta.subject, meta.references);
    let contact = mail
        .event
        .payload
        .as_ref()
        .and_then(|p| match p {
            pb::event::Payload::Message(m) => m.contact.as_ref().map(|c| c.email.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let mut chain = references;
    chain.push(mail.message_id.clone());
    inner
        .store
        .remember(
            channel_id,
            &mail.message_id,
            &ThreadEntry {
                root: mail.root.clone(),
                subject,
                references: chain,
                contact,
            },
        )
        .await?;
    tracing::info!(event_id = %mail.event.id, "Mail published");
    Ok(())
}

/// The email facts of a `message.received` event.
fn email_metadata(event: &pb::Event) -> Option<&pb::EmailMetadata> {
    match &event.payload {
        Some(pb::event::Payload::Message(pb::Message {
            metadata: Some(pb::message::Metadata::Email(meta)),
            ..
        })) => Some(meta),
        _ => None,
    }
}

/// A bounce of a mail we sent: the send command it came from gets a failed
/// `message.status` with the report's status and diagnostic.
async fn report_bounce(
    email: &Email,
    channel_id: &str,
    tenant: &str,
    address: &str,
    bounce: &pb::EmailMetadata,
) -> Result<(), FolderError> {
    let store = &email.inner.store;
    let Some(command_id) = store
        .sent_command(channel_id, &bounce.bounced_message_id)
        .await?
    else {
        return Ok(());
    };
    let root = store
        .thread_entry(channel_id, &bounce.bounced_message_id)
        .await?
        .map_or_else(|| bounce.bounced_message_id.clone(), |t| t.root);
    let now = Utc::now();
    let status = omnigate_model::EventBuilder::channel(pb::ChannelKind::Email, channel_id, tenant)
        .event(
            omnigate_model::EventType::MessageStatus,
            &format!("{command_id}:bounced"),
            normalize::conversation_key(channel_id, &root),
            now,
            pb::event::Payload::Status(pb::MessageStatus {
                channel: Some(pb::Channel {
                    kind: pb::ChannelKind::Email as i32,
                    channel_id: channel_id.to_string(),
                    address: address.to_string(),
                }),
                status: pb::DeliveryStatus::Failed as i32,
                recipient: bounce.bounced_recipient.clone(),
                at: Some(omnigate_model::timestamp(now)),
                errors: vec![pb::ProviderError {
                    code: format!("smtp.{}", bounce.bounce_status),
                    title: bounce.bounce_diagnostic.clone(),
                    details: String::new(),
                }],
                command_id,
                provider_message_id: bounce.bounced_message_id.clone(),
                ..Default::default()
            }),
        );
    email
        .inner
        .ctx
        .publisher
        .event(Topic::Inbound, status)
        .await?;
    tracing::info!(recipient = %bounce.bounced_recipient, status = %bounce.bounce_status, "Bounce of a sent mail reported");
    Ok(())
}

async fn dead_letter(
    email: &Email,
    channel_id: &str,
    tenant: &str,
    raw: &[u8],
    reason: &str,
) -> Result<(), FolderError> {
    let letter = ingest::raw_dead_letter(
        pb::ChannelKind::Email,
        channel_id,
        tenant,
        normalize::RAW_MIME,
        raw,
        reason,
        Utc::now(),
    );
    ingest::dead_letter(&email.inner.ctx.publisher, &email.inner.ctx.blobs, letter).await?;
    METRICS.events(channel_id, EventOutcome::DeadLettered, 1);
    Ok(())
}
