//! IMAP connections: TCP or TLS (implicit or STARTTLS), logged in with a password or
//! XOAUTH2, every step under a deadline (async-imap has no timeouts of its own).

use crate::{
    config::{ChannelConfig, Endpoint},
    oauth::TokenSource,
};
use async_imap::{Client, Session};
use secrecy::ExposeSecret as _;
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream, rustls};

/// Why a mailbox is not being read; drives the channel's error state.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// The server could not be reached, went silent past a deadline, or dropped the
    /// connection: reconnect with backoff.
    #[error("IMAP connection: {0}")]
    Connection(String),
    /// The server refused the login: the credentials (or token) need an operator.
    #[error("IMAP login refused: {0}")]
    Login(String),
    /// The server answered a command with an error.
    #[error("IMAP: {0}")]
    Protocol(String),
}

impl From<std::io::Error> for ImapError {
    fn from(err: std::io::Error) -> Self {
        Self::Connection(err.to_string())
    }
}

impl From<async_imap::error::Error> for ImapError {
    fn from(err: async_imap::error::Error) -> Self {
        use async_imap::error::Error;
        match err {
            Error::Io(e) => Self::Connection(e.to_string()),
            Error::ConnectionLost => Self::Connection("the server closed the connection".into()),
            other => Self::Protocol(other.to_string()),
        }
    }
}

/// A plain or TLS connection.
#[derive(Debug)]
pub enum MailStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A logged-in IMAP session.
pub type ImapSession = Session<MailStream>;

/// Runs `future` under `deadline`; running out is a connection error naming `what`.
pub async fn within<T, E: Into<ImapError>>(
    deadline: Duration,
    what: &str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(deadline, future).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(ImapError::Connection(format!(
            "no answer to {what} within {} ms",
            deadline.as_millis()
        ))),
    }
}

fn tls_connector() -> Result<TlsConnector, ImapError> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ImapError::Connection(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn tls(stream: TcpStream, host: &str) -> Result<MailStream, ImapError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ImapError::Connection(format!("`{host}` is not a TLS server name: {e}")))?;
    let stream = tls_connector()?
        .connect(name, stream)
        .await
        .map_err(|e| ImapError::Connection(format!("TLS with {host}: {e}")))?;
    Ok(MailStream::Tls(Box::new(stream)))
}

/// The XOAUTH2 SASL response (RFC 7628's Google/Microsoft variant).
struct XOAuth2 {
    response: String,
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;

    fn process(&mut self, _challenge: &[u8]) -> Self::Response {
        // A second challenge is the server's error detail; an empty answer ends the
        // exchange so the server reports the failure.
        std::mem::take(&mut self.response)
    }
}

/// The SASL XOAUTH2 initial response for `user` and `token`.
pub fn xoauth2_response(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}

/// Connects to the channel's IMAP server and logs in.
pub async fn connect(
    channel: &ChannelConfig,
    endpoint: &Endpoint,
    tokens: Option<&TokenSource>,
    deadline: Duration,
) -> Result<ImapSession, ImapError> {
    let tcp = within(
        deadline,
        "connect",
        TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    )
    .await?;
    // A dead peer during a long IDLE is noticed by keepalive probes, not only at the
    // next IDLE renewal.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15));
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let stream = if endpoint.implicit_tls {
        within(deadline, "the TLS handshake", tls(tcp, &endpoint.host)).await?
    } else {
        MailStream::Plain(tcp)
    };
    let mut client = Client::new(stream);
    within(deadline, "the greeting", async {
        client
            .read_response()
            .await
            .map_err(|e| ImapError::Connection(e.to_string()))?
            .ok_or_else(|| ImapError::Connection("closed before its greeting".into()))
    })
    .await?;
    if channel.starttls && !endpoint.implicit_tls {
        within(
            deadline,
            "STARTTLS",
            client.run_command_and_check_ok("STARTTLS", None),
        )
        .await?;
        let MailStream::Plain(tcp) = client.into_inner() else {
            return Err(ImapError::Protocol("STARTTLS on a TLS connection".into()));
        };
        client =
            Client::new(within(deadline, "the TLS handshake", tls(tcp, &endpoint.host)).await?);
    }
    match (tokens, &channel.password) {
        (Some(tokens), _) => {
            let token = tokens
                .access_token()
                .await
                .map_err(|e| ImapError::Login(e.to_string()))?;
            let auth = XOAuth2 {
                response: xoauth2_response(&channel.username, &token),
            };
            match within(deadline, "AUTHENTICATE", async {
                Ok::<_, ImapError>(client.authenticate("XOAUTH2", auth).await)
            })
            .await?
            {
                Ok(session) => Ok(session),
                Err((err, _)) => {
                    // The token may have been revoked early: the next attempt asks
                    // for a new one.
                    tokens.forget();
                    Err(ImapError::Login(err.to_string()))
                }
            }
        }
        (None, Some(password)) => {
            match within(deadline, "LOGIN", async {
                Ok::<_, ImapError>(
                    client
                        .login(&channel.username, password.expose_secret())
                        .await,
                )
            })
            .await?
            {
                Ok(session) => Ok(session),
                Err((err, _)) => Err(ImapError::Login(err.to_string())),
            }
        }
        (None, None) => Err(ImapError::Login(
            "no password and no oauth2 configured".into(),
        )),
    }
}
