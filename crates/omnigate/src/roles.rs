//! Every role `omnigate serve` runs starts the same way: a [`Role`] takes the shared
//! [`RoleContext`], spawns its tasks on the context's tracker and returns its HTTP
//! routes. Connectors are roles through their [`Connector`] trait; the router, the
//! webhook dispatcher and the `/v1` API are the core roles.

use crate::config::{CORE_ROLES, Config};
use anyhow::Context as _;
use async_trait::async_trait;
use omnigate_core::connector::{Connector, ConnectorContext};
use omnigate_router::contacts::ContactStore;
use omnigate_webhooks::WebhookStore;
use std::sync::Arc;
use tokio::sync::{Notify, OnceCell};

/// One role of the process.
#[async_trait]
pub trait Role: Send + Sync {
    /// Starts the role's tasks on `ctx`'s tracker; returns its HTTP routes.
    async fn start(&self, ctx: &RoleContext<'_>) -> anyhow::Result<axum::Router>;
}

/// What every role starts from: the configuration, the connectors' context, and the
/// stores that several roles share, each opened once by whichever role needs it first.
pub struct RoleContext<'a> {
    /// The whole configuration.
    pub config: &'a Config,
    /// Publisher, subscriber, blobs, shutdown, tasks and health.
    pub connector: ConnectorContext,
    /// Tells the dispatcher that the API changed an endpoint.
    pub webhook_changes: Arc<Notify>,
    contacts: OnceCell<Arc<ContactStore>>,
    webhook_store: OnceCell<WebhookStore>,
}

impl<'a> RoleContext<'a> {
    /// A context whose shared stores are not opened yet.
    pub fn new(config: &'a Config, connector: ConnectorContext) -> Self {
        Self {
            config,
            connector,
            webhook_changes: Arc::new(Notify::new()),
            contacts: OnceCell::new(),
            webhook_store: OnceCell::new(),
        }
    }

    /// The router's store of contacts and conversations (the router writes it, the
    /// API reads it).
    pub async fn contacts(&self) -> anyhow::Result<Arc<ContactStore>> {
        let url = &self.config.router.database_url;
        self.contacts
            .get_or_try_init(|| async {
                ContactStore::connect(url)
                    .await
                    .map(Arc::new)
                    .with_context(|| format!("cannot open router.database_url {url}"))
            })
            .await
            .cloned()
    }

    /// The webhook registry (the API manages it, the dispatcher reads it).
    pub async fn webhook_store(&self) -> anyhow::Result<WebhookStore> {
        let url = &self.config.webhooks.database_url;
        self.webhook_store
            .get_or_try_init(|| async {
                WebhookStore::connect(url)
                    .await
                    .with_context(|| format!("cannot open webhooks.database_url {url}"))
            })
            .await
            .cloned()
    }
}

/// A connector as a role.
struct ConnectorRole(Arc<dyn Connector>);

#[async_trait]
impl Role for ConnectorRole {
    async fn start(&self, ctx: &RoleContext<'_>) -> anyhow::Result<axum::Router> {
        let connector = Arc::clone(&self.0);
        ctx.connector
            .health
            .add_channels(Arc::new(move || connector.health()));
        Ok(self.0.start(ctx.connector.clone()).await?)
    }
}

/// The router: conversations, contacts and inboxes for every inbound event.
struct RouterRole;

#[async_trait]
impl Role for RouterRole {
    async fn start(&self, ctx: &RoleContext<'_>) -> anyhow::Result<axum::Router> {
        crate::router::start(ctx).await?;
        Ok(axum::Router::new())
    }
}

/// The webhook dispatcher: signed deliveries of routed events.
struct WebhooksRole;

#[async_trait]
impl Role for WebhooksRole {
    async fn start(&self, ctx: &RoleContext<'_>) -> anyhow::Result<axum::Router> {
        crate::webhooks::start(ctx).await?;
        Ok(axum::Router::new())
    }
}

/// The `/v1` API: sends, conversations and the webhook registry.
struct ApiRole;

#[async_trait]
impl Role for ApiRole {
    async fn start(&self, ctx: &RoleContext<'_>) -> anyhow::Result<axum::Router> {
        crate::api::start(ctx).await
    }
}

/// The roles among `names`, in the order they start: connectors first (their routes
/// and consumers), then the dispatcher, the router and the API.
pub fn enabled(config: &Config, names: &[String]) -> Vec<(String, Box<dyn Role>)> {
    let wanted = |name: &str| names.iter().any(|n| n == name);
    let mut roles: Vec<(String, Box<dyn Role>)> = config
        .connectors
        .iter()
        .filter(|(name, _)| wanted(name))
        .map(|(name, connector)| {
            let role: Box<dyn Role> = Box::new(ConnectorRole(Arc::clone(connector)));
            (name.to_string(), role)
        })
        .collect();
    let core: [(&str, Box<dyn Role>); 3] = [
        ("webhooks", Box::new(WebhooksRole)),
        ("router", Box::new(RouterRole)),
        ("api", Box::new(ApiRole)),
    ];
    debug_assert!(core.iter().all(|(name, _)| CORE_ROLES.contains(name)));
    roles.extend(
        core.into_iter()
            .filter(|(name, _)| wanted(name))
            .map(|(name, role)| (name.to_string(), role)),
    );
    roles
}
