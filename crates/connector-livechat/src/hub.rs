//! The sockets this replica holds, by conversation, and the pusher that brings them
//! agent replies and typing stored by any replica.

use crate::store::{AgentTyping, LivechatStore, StoredReply};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A conversation: (channel, visitor).
pub type Conversation = (String, String);

/// What the hub hands a socket. Both travel as `Arc`: a socket's buffer costs a
/// pointer per slot.
#[derive(Debug, Clone)]
pub enum Pushed {
    /// An agent reply.
    Reply(Arc<StoredReply>),
    /// The agent typing, or stopped.
    Typing(Arc<AgentTyping>),
}

/// Each conversation's sockets: (socket id, where its pushes go).
type Sockets = HashMap<Conversation, Vec<(u64, mpsc::Sender<Pushed>)>>;

/// The open sockets of this replica.
#[derive(Debug, Default)]
pub struct Hub {
    sockets: Mutex<Sockets>,
    next_id: AtomicU64,
    per_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
    /// Wakes the reply pusher when a socket registers, so it sleeps while none is open.
    registered: tokio::sync::Notify,
}

/// Keeps a socket registered while it lives.
#[derive(Debug)]
pub struct Registration<'a> {
    hub: &'a Hub,
    conversation: Conversation,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut sockets = self.hub.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = sockets.get_mut(&self.conversation) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                sockets.remove(&self.conversation);
            }
        }
    }
}

/// Counts a client address's sockets while it lives.
#[derive(Debug)]
pub struct IpSlot<'a> {
    hub: &'a Hub,
    ip: std::net::IpAddr,
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut per_ip = self.hub.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Hub {
    /// A slot for one more socket from `ip`, unless it already has `max`.
    pub fn admit(&self, ip: std::net::IpAddr, max: usize) -> Option<IpSlot<'_>> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot { hub: self, ip })
    }

    /// Registers a socket of `conversation`; replies and typing for it arrive on `sender`.
    pub fn register(
        &self,
        conversation: Conversation,
        sender: mpsc::Sender<Pushed>,
    ) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(conversation.clone())
            .or_default()
            .push((id, sender));
        self.registered.notify_one();
        Registration {
            hub: self,
            conversation,
            id,
        }
    }

    fn is_empty(&self) -> bool {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Hands `reply` to every socket of its conversation on this replica.
    pub fn push(&self, reply: &StoredReply) {
        self.hand(&reply.channel, &reply.visitor, || {
            Pushed::Reply(Arc::new(reply.clone()))
        });
    }

    /// Hands the agent's typing state to every socket of its conversation here.
    pub fn push_typing(&self, typing: &AgentTyping) {
        self.hand(&typing.channel, &typing.visitor, || {
            Pushed::Typing(Arc::new(typing.clone()))
        });
    }

    fn hand(&self, channel: &str, visitor: &str, pushed: impl FnOnce() -> Pushed) {
        let senders: Vec<mpsc::Sender<Pushed>> = self
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(channel.to_string(), visitor.to_string()))
            .map(|list| list.iter().map(|(_, s)| s.clone()).collect())
            .unwrap_or_default();
        if senders.is_empty() {
            return;
        }
        let pushed = pushed();
        for sender in senders {
            // A socket too slow to take a reply gets it from the store on its next
            // hello; a typing state it misses is stale by then anyway.
            let _ = sender.try_send(pushed.clone());
        }
    }
}

/// Looks for replies and typing stored by any replica every `every` and pushes them
/// to the sockets held here. While no socket is open it asks the database nothing and
/// does not wake at all: an idle gateway should cost nothing.
pub async fn push_replies(
    hub: Arc<Hub>,
    store: LivechatStore,
    every: Duration,
    shutdown: CancellationToken,
) {
    // Replies committed out of order by a few hundred ms are still seen: the window
    // looks back, and sockets drop the sequences they already sent.
    const LOOK_BACK_MS: i64 = 5_000;
    let mut since = chrono::Utc::now().timestamp_millis() - LOOK_BACK_MS;
    loop {
        if hub.is_empty() {
            tokio::select! {
                () = hub.registered.notified() => {}
                () = shutdown.cancelled() => return,
            }
            since = chrono::Utc::now().timestamp_millis() - LOOK_BACK_MS;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        match tokio::try_join!(store.replies_since(since), store.typing_since(since)) {
            Ok((replies, typing)) => {
                for reply in &replies {
                    hub.push(reply);
                }
                for state in &typing {
                    hub.push_typing(state);
                }
                let newest = replies
                    .iter()
                    .map(|r| r.created_ms)
                    .chain(typing.iter().map(|t| t.updated_ms))
                    .max()
                    .unwrap_or(since);
                since = since.max(newest - LOOK_BACK_MS);
            }
            Err(err) => tracing::warn!(error = %err, "Live chat replies not read; retrying"),
        }
    }
}
