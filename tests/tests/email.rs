//! Email end to end: mail delivered by a real Postfix into a real Dovecot, followed by
//! the gateway over IMAP, onto the broker `make test` starts; replies sent through the
//! API land in the customer's Dovecot mailbox with threading headers.
//! `scripts/mail.sh test` (run by `make test`) serves IMAP on 127.0.0.1:11143 and SMTP
//! on :12525; any `name@domain` logs in with `test-password`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::TryStreamExt as _;
use omnigate_e2e::{Gateway, brokers, json, read_at_least, unique_prefix};
use serde_json::{Value, json};
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

const IMAP_PORT: u16 = 11143;
const SMTP_PORT: u16 = 12525;
const PASSWORD: &str = "test-password";

/// Tests that restart the shared Dovecot hold this for writing, every other test for
/// reading, so no test's mailbox read meets a server going down.
static DOVECOT: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A mailbox address no other test (or earlier run) uses.
fn fresh_address(name: &str) -> String {
    format!(
        "{name}-{}@omnigate.test",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The config of channel `support` following `address`'s INBOX.
fn channel(address: &str) -> String {
    format!(
        r#"
[email]
# Dovecot notices a UIDVALIDITY change at a session's next command, not during IDLE.
idle_renew_secs = 5
reconnect_min_ms = 200
reconnect_max_ms = 2000
[email.channels.support]
tenant = "acme"
address = "{address}"
display_name = "ACME Support"
imap_url = "imap://127.0.0.1:{IMAP_PORT}"
username = "{address}"
password = "{PASSWORD}"
smtp_url = "smtp://127.0.0.1:{SMTP_PORT}"
smtp_auth = false
"#
    )
}

/// A raw mail with CRLF line ends.
fn mail(from: &str, to: &str, subject: &str, id: &str, parents: &[&str], body: &str) -> String {
    let mut headers = vec![
        format!("From: Customer <{from}>"),
        format!("To: <{to}>"),
        format!("Subject: {subject}"),
        format!("Message-ID: <{id}>"),
        "Date: Mon, 9 Nov 2026 10:00:00 +0000".to_string(),
        "MIME-Version: 1.0".to_string(),
        "Content-Type: text/plain; charset=utf-8".to_string(),
    ];
    if let Some(parent) = parents.last() {
        headers.push(format!("In-Reply-To: <{parent}>"));
        let references: Vec<String> = parents.iter().map(|p| format!("<{p}>")).collect();
        headers.push(format!("References: {}", references.join(" ")));
    }
    format!(
        "{}\r\n\r\n{}\r\n",
        headers.join("\r\n"),
        body.replace('\n', "\r\n")
    )
}

/// Hands `raw` to the test SMTP server (Postfix, which delivers into Dovecot).
async fn smtp(from: &str, to: &str, raw: &str) {
    use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor, address::Envelope};
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(SMTP_PORT)
        .build();
    // An empty sender is a null return path, as bounces have.
    let sender = (!from.is_empty()).then(|| from.parse().unwrap());
    let envelope = Envelope::new(sender, vec![to.parse().unwrap()]).unwrap();
    transport.send_raw(&envelope, raw.as_bytes()).await.unwrap();
}

/// Every mail in `user`'s INBOX, raw, once there are at least `n` (or after 30 s).
async fn inbox(user: &str, n: usize) -> Vec<Vec<u8>> {
    folder(user, "INBOX", n).await
}

/// Every mail in `user`'s `folder`, raw, once there are at least `n` (or after 30 s).
async fn folder(user: &str, name: &str, n: usize) -> Vec<Vec<u8>> {
    let started = Instant::now();
    loop {
        // Another test may be restarting Dovecot: any failed read is tried again within the wait.
        let read = read_folder(user, name).await;
        let timed_out = started.elapsed() > Duration::from_secs(30);
        match read {
            Ok(mails) if mails.len() >= n || timed_out => return mails,
            Err(e) if timed_out => panic!("reading {user}'s {name}: {e:#}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One IMAP read of every mail in `user`'s `folder`.
async fn read_folder(user: &str, name: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", IMAP_PORT)).await?;
    let mut client = async_imap::Client::new(stream);
    client.read_response().await?;
    let mut session = client.login(user, PASSWORD).await.map_err(|(e, _)| e)?;
    let selected = session.select(name).await?;
    let mut mails = Vec::new();
    if selected.exists > 0 {
        let fetches: Vec<_> = session
            .fetch("1:*", "BODY.PEEK[]")
            .await?
            .try_collect()
            .await?;
        mails = fetches
            .iter()
            .filter_map(|f| f.body().map(<[u8]>::to_vec))
            .collect();
    }
    let _ = session.logout().await;
    Ok(mails)
}

/// The inbound topic's events of `types`, once `done` holds for them (or after 60 s).
async fn inbound_until(prefix: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let topic = format!("{prefix}inbound.v1");
    let started = Instant::now();
    loop {
        let records = tokio::task::spawn_blocking({
            let topic = topic.clone();
            move || read_at_least(&brokers(), &topic, usize::MAX, Duration::from_secs(2))
        })
        .await
        .unwrap();
        let events: Vec<Value> = records.iter().map(json).collect();
        if done(&events) || started.elapsed() > Duration::from_secs(60) {
            return events;
        }
    }
}

fn received(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "message.received")
        .collect()
}

fn distinct_ids(events: &[Value]) -> BTreeSet<String> {
    received(events)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mails_reach_kafka_with_their_parts_and_a_reply_chain_shares_one_conversation() {
    let _dovecot = DOVECOT.read().await;
    let prefix = unique_prefix("email-thread");
    let support = fresh_address("support");
    let customer = fresh_address("customer");
    let ids: Vec<String> = (1..=3)
        .map(|i| format!("t{i}.{}@example.com", uuid::Uuid::new_v4().simple()))
        .collect();
    // The first mail is there before the gateway starts: read by the backfill.
    smtp(
        &customer,
        &support,
        &mail(
            &customer,
            &support,
            "Order 1234 is late",
            &ids[0],
            &[],
            "Where is my order?",
        ),
    )
    .await;
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["email"],
        &channel(&support),
        None,
        &[],
    )
    .await;
    smtp(
        &support,
        &support,
        &mail(
            &customer,
            &support,
            "Re: Order 1234 is late",
            &ids[1],
            &[&ids[0]],
            "Any news?",
        ),
    )
    .await;
    smtp(
        &customer,
        &support,
        &mail(
            &customer,
            &support,
            "Re: Order 1234 is late",
            &ids[2],
            &[&ids[0], &ids[1]],
            "Still waiting.\n\nOn Mon, 9 Nov 2026, Customer wrote:\n> Any news?",
        ),
    )
    .await;
    let events = inbound_until(&gateway.prefix, |e| received(e).len() >= 3).await;
    let mails = received(&events);
    assert_eq!(mails.len(), 3, "log:\n{}", gateway.log());
    let key = format!("email:support:{}", ids[0]);
    for mail in &mails {
        assert_eq!(mail["conversationKey"], key.as_str(), "{mail}");
        assert_eq!(mail["message"]["contact"]["email"], customer.as_str());
        assert_eq!(mail["message"]["channel"]["address"], support.as_str());
    }
    let last = mails
        .iter()
        .find(|m| m["message"]["providerMessageId"] == ids[2].as_str())
        .unwrap();
    assert_eq!(last["message"]["email"]["newText"], "Still waiting.");
    assert_eq!(last["message"]["replyToProviderId"], ids[1].as_str());
    assert_eq!(distinct_ids(&events).len(), 3);
    // The raw message is in the blob store, as the event says.
    let raw_key = last["message"]["raw"]["blob"]["key"].as_str().unwrap();
    let raw = std::fs::read(gateway.dir.path().join("blobs").join(raw_key)).unwrap();
    assert!(String::from_utf8_lossy(&raw).contains(&ids[2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_through_the_api_threads_in_the_customers_mailbox_and_the_answer_joins() {
    let _dovecot = DOVECOT.read().await;
    let prefix = unique_prefix("email-reply");
    let support = fresh_address("support");
    let customer = fresh_address("customer");
    let first = format!("q.{}@example.com", uuid::Uuid::new_v4().simple());
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["email", "api"],
        &channel(&support),
        None,
        &[],
    )
    .await;
    smtp(
        &customer,
        &support,
        &mail(
            &customer,
            &support,
            "Broken charger",
            &first,
            &[],
            "It sparks.",
        ),
    )
    .await;
    inbound_until(&prefix, |e| !received(e).is_empty()).await;

    let answer = reqwest::Client::new()
        .post(format!("{}/v1/messages", gateway.url))
        .bearer_auth("omnigate-dev-key")
        .json(&json!({
            "channel": {"channelId": "support"},
            "to": customer,
            "replyToProviderId": first,
            "text": "Please stop using it; a replacement is on its way.",
            "idempotencyKey": "reply-1",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());
    let events = inbound_until(&prefix, |e| e.iter().any(|e| e["type"] == "message.sent")).await;
    let sent = events
        .iter()
        .find(|e| e["type"] == "message.sent")
        .unwrap_or_else(|| panic!("no message.sent; log:\n{}", gateway.log()));
    let key = format!("email:support:{first}");
    assert_eq!(sent["conversationKey"], key.as_str());
    let our_id = sent["sent"]["providerMessageId"]
        .as_str()
        .unwrap()
        .to_string();

    let delivered = inbox(&customer, 1).await;
    assert_eq!(
        delivered.len(),
        1,
        "the reply reached the customer's mailbox"
    );
    let reply = String::from_utf8_lossy(&delivered[0]).into_owned();
    assert!(
        reply.contains(&format!("In-Reply-To: <{first}>")),
        "{reply}"
    );
    assert!(reply.contains(&format!("References: <{first}>")), "{reply}");
    assert!(
        reply.contains(&format!("Message-ID: <{our_id}>")),
        "{reply}"
    );
    assert!(reply.contains("Subject: Re: Broken charger"), "{reply}");
    assert!(
        reply.contains(&format!("From: \"ACME Support\" <{support}>"))
            || reply.contains(&format!("From: ACME Support <{support}>")),
        "{reply}"
    );

    // The customer's client keeps only In-Reply-To: the answer still joins.
    let answer_id = format!("a.{}@example.com", uuid::Uuid::new_v4().simple());
    let raw = format!(
        "From: <{customer}>\r\nTo: <{support}>\r\nSubject: Re: Broken charger\r\nMessage-ID: <{answer_id}>\r\nIn-Reply-To: <{our_id}>\r\nDate: Mon, 9 Nov 2026 11:00:00 +0000\r\n\r\nThanks!\r\n"
    );
    smtp(&customer, &support, &raw).await;
    let events = inbound_until(&prefix, |e| received(e).len() >= 2).await;
    let joined = received(&events)
        .into_iter()
        .find(|e| e["message"]["providerMessageId"] == answer_id.as_str())
        .unwrap_or_else(|| panic!("the answer was not ingested; log:\n{}", gateway.log()));
    assert_eq!(joined["conversationKey"], key.as_str());

    // A client that drops every threading header: the thread token of our subject
    // still joins the customer's new mail to the thread, and nobody else's.
    let token = reply
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .and_then(|s| s.split("[#og-").nth(1))
        .and_then(|s| s.split(']').next())
        .unwrap()
        .to_string();
    let fresh = format!("f.{}@example.com", uuid::Uuid::new_v4().simple());
    let subject = format!("Charger again [#og-{token}]");
    smtp(
        &customer,
        &support,
        &mail(&customer, &support, &subject, &fresh, &[], "Still sparks."),
    )
    .await;
    let stranger = fresh_address("stranger");
    let copied = format!("s.{}@example.com", uuid::Uuid::new_v4().simple());
    smtp(
        &stranger,
        &support,
        &mail(&stranger, &support, &subject, &copied, &[], "Let me in."),
    )
    .await;
    let events = inbound_until(&prefix, |e| received(e).len() >= 4).await;
    let key_of = |id: &str| {
        received(&events)
            .into_iter()
            .find(|e| e["message"]["providerMessageId"] == id)
            .map(|e| e["conversationKey"].as_str().unwrap().to_string())
    };
    assert_eq!(
        key_of(&fresh).as_deref(),
        Some(key.as_str()),
        "the customer's token joins"
    );
    assert_eq!(
        key_of(&copied),
        Some(format!("email:support:{copied}")),
        "a copied token joins nothing"
    );

    // The customer's server bounces a mail we sent: the command gets a failed status.
    let dsn = format!(
        "From: MAILER-DAEMON@example.net\r\nTo: <{support}>\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn.{answer_id}>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; {customer}\r\nAction: failed\r\nStatus: 5.2.2\r\nDiagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: <{support}>\r\nMessage-ID: <{our_id}>\r\nSubject: Re: Broken charger\r\n--b1--\r\n"
    );
    smtp("", &support, &dsn).await;
    let events = inbound_until(&prefix, |e| e.iter().any(|e| e["type"] == "message.status")).await;
    let status = events
        .iter()
        .find(|e| e["type"] == "message.status")
        .unwrap_or_else(|| panic!("no status for the bounce; log:\n{}", gateway.log()));
    assert_eq!(status["status"]["status"], "DELIVERY_STATUS_FAILED");
    assert_eq!(status["status"]["commandId"], sent["sent"]["commandId"]);
    assert_eq!(status["status"]["errors"][0]["code"], "smtp.5.2.2");
    assert_eq!(status["conversationKey"], key.as_str());

    // The same command again (a helpdesk retry) sends nothing new.
    let again = reqwest::Client::new()
        .post(format!("{}/v1/messages", gateway.url))
        .bearer_auth("omnigate-dev-key")
        .json(&json!({
            "channel": {"channelId": "support"},
            "to": customer,
            "replyToProviderId": first,
            "text": "Please stop using it; a replacement is on its way.",
            "idempotencyKey": "reply-1",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(inbox(&customer, 1).await.len(), 1, "sent once");
}

fn mail_script(args: &[&str]) {
    let status = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mail.sh"),
    )
    .args(args)
    .status()
    .unwrap();
    assert!(status.success(), "scripts/mail.sh {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connector_resumes_from_its_cursor_and_a_uidvalidity_change_makes_no_new_ids() {
    let _dovecot = DOVECOT.read().await;
    const MAILS: usize = 500;
    let prefix = unique_prefix("email-crash");
    let support = fresh_address("support");
    let customer = fresh_address("customer");
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["email"],
        &channel(&support),
        None,
        &[],
    )
    .await;
    let sending = tokio::spawn({
        let (support, customer) = (support.clone(), customer.clone());
        async move {
            use lettre::{
                AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor, address::Envelope,
            };
            let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(SMTP_PORT)
                .build();
            let envelope = Envelope::new(
                Some(customer.parse().unwrap()),
                vec![support.parse().unwrap()],
            )
            .unwrap();
            for i in 0..MAILS {
                let raw = mail(
                    &customer,
                    &support,
                    &format!("Mail {i}"),
                    &format!("bulk-{i}.{support}"),
                    &[],
                    "x",
                );
                transport.send_raw(&envelope, raw.as_bytes()).await.unwrap();
            }
        }
    });
    // Killed while mail is still arriving.
    inbound_until(&prefix, |e| received(e).len() >= 50).await;
    let dir = gateway.kill_keep_dir();
    sending.await.unwrap();
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["email"],
        &channel(&support),
        Some(dir),
        &[],
    )
    .await;
    let events = inbound_until(&prefix, |e| distinct_ids(e).len() >= MAILS).await;
    let ids = distinct_ids(&events);
    assert_eq!(
        ids.len(),
        MAILS,
        "every mail once by event id; log:\n{}",
        gateway.log()
    );
    let read_before = received(&events).len();

    // A restart with the cursor at the end reads nothing again.
    let dir = gateway.kill_keep_dir();
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["email"],
        &channel(&support),
        Some(dir),
        &[],
    )
    .await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = inbound_until(&prefix, |_| true).await;
    assert_eq!(
        received(&events).len(),
        read_before,
        "the cursor was at the end"
    );

    // The server changes the folder's UIDVALIDITY: everything is read again, under the
    // same event ids.
    let validity = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    mail_script(&[
        "doveadm",
        "test",
        "mailbox",
        "update",
        "-u",
        &support,
        "--uid-validity",
        &validity,
        "INBOX",
    ]);
    let events = inbound_until(&prefix, |e| received(e).len() >= read_before + MAILS).await;
    assert!(
        received(&events).len() >= read_before + MAILS,
        "the folder was read again; log:\n{}",
        gateway.log()
    );
    assert_eq!(distinct_ids(&events), ids, "no new event id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dovecot_restart_mid_idle_loses_no_mail() {
    // Restarts the shared Dovecot: no other email test runs meanwhile.
    let _dovecot = DOVECOT.write().await;
    let prefix = unique_prefix("email-restart");
    let support = fresh_address("support");
    let customer = fresh_address("customer");
    let gateway = Gateway::start_roles(
        &brokers(),
        &prefix,
        &["email"],
        &channel(&support),
        None,
        &[],
    )
    .await;
    let before = format!("b.{}@example.com", uuid::Uuid::new_v4().simple());
    smtp(
        &customer,
        &support,
        &mail(&customer, &support, "Before", &before, &[], "one"),
    )
    .await;
    inbound_until(&prefix, |e| !received(e).is_empty()).await;
    // The connector is in IDLE now; the server goes away under it and comes back.
    mail_script(&["restart-imap", "test"]);
    let after = format!("a.{}@example.com", uuid::Uuid::new_v4().simple());
    smtp(
        &customer,
        &support,
        &mail(&customer, &support, "After", &after, &[], "two"),
    )
    .await;
    let events = inbound_until(&prefix, |e| received(e).len() >= 2).await;
    let ids: Vec<&str> = received(&events)
        .iter()
        .map(|e| e["message"]["providerMessageId"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&after.as_str()),
        "the mail after the restart arrived: {ids:?}; log:\n{}",
        gateway.log()
    );
    assert_eq!(distinct_ids(&events).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_mailboxes_and_the_survivor_takes_over_a_killed_ones() {
    let _dovecot = DOVECOT.read().await;
    let prefix = unique_prefix("email-replicas");
    let database = omnigate_e2e::fresh_postgres_database();
    let addresses: Vec<String> = (0..4).map(|i| fresh_address(&format!("box{i}"))).collect();
    let mut config = String::from("[email]\nreconnect_min_ms = 200\n");
    for (i, address) in addresses.iter().enumerate() {
        config.push_str(&format!(
            "[email.channels.box{i}]\naddress = \"{address}\"\nimap_url = \"imap://127.0.0.1:{IMAP_PORT}\"\nusername = \"{address}\"\npassword = \"{PASSWORD}\"\nsmtp_url = \"smtp://127.0.0.1:{SMTP_PORT}\"\nsmtp_auth = false\n"
        ));
    }
    let env = [("OMNIGATE_ROUTER__DATABASE_URL", database)];
    let mut first =
        Gateway::start_roles(&brokers(), &prefix, &["email"], &config, None, &env).await;
    let second = Gateway::start_roles(&brokers(), &prefix, &["email"], &config, None, &env).await;
    // A few lease beats: the first replica gives half of the mailboxes to the second.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let customer = fresh_address("customer");
    for (i, address) in addresses.iter().enumerate() {
        let id = format!("r1.{i}.{}@example.com", uuid::Uuid::new_v4().simple());
        smtp(
            &customer,
            address,
            &mail(&customer, address, "Round one", &id, &[], "x"),
        )
        .await;
    }
    let events = inbound_until(&prefix, |e| received(e).len() >= 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = if received(&events).len() == 4 {
        inbound_until(&prefix, |_| true).await
    } else {
        events
    };
    assert_eq!(
        received(&events).len(),
        4,
        "each mailbox followed by exactly one replica (a second follower would publish every mail twice)"
    );
    let follows = |log: &str| log.matches("Following mailbox").count();
    assert!(
        follows(&first.log()) > 0 && follows(&second.log()) > 0,
        "both replicas follow mailboxes"
    );

    first.kill();
    for (i, address) in addresses.iter().enumerate() {
        let id = format!("r2.{i}.{}@example.com", uuid::Uuid::new_v4().simple());
        smtp(
            &customer,
            address,
            &mail(&customer, address, "Round two", &id, &[], "y"),
        )
        .await;
    }
    let events = inbound_until(&prefix, |e| distinct_ids(e).len() >= 8).await;
    assert_eq!(
        distinct_ids(&events).len(),
        8,
        "the survivor took over every mailbox; log:\n{}",
        second.log()
    );
}

/// The OAuth2 side of a mail provider: a token endpoint (refresh-token grant) and the
/// introspection endpoint Dovecot asks about every XOAUTH2 login
/// (`scripts/mail.sh test` points Dovecot at 127.0.0.1:12480/introspect).
#[derive(Clone, Default)]
struct TokenServer {
    state: std::sync::Arc<std::sync::Mutex<TokenState>>,
}

#[derive(Default)]
struct TokenState {
    user: String,
    grants: usize,
    valid: BTreeSet<String>,
    refuse_refresh: bool,
}

impl TokenServer {
    async fn start(user: &str) -> Self {
        use axum::{Json, routing::post};
        use std::collections::HashMap;
        let server = Self::default();
        server.state.lock().unwrap().user = user.to_string();
        let token = server.clone();
        let introspect = server.clone();
        let app = axum::Router::new()
            .route(
                "/token",
                post(move |body: String| {
                    let server = token.clone();
                    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
                    async move {
                        let mut state = server.state.lock().unwrap();
                        if state.refuse_refresh
                            || form.get("grant_type").map(String::as_str) != Some("refresh_token")
                            || form.get("refresh_token").map(String::as_str) != Some("refresh-1")
                        {
                            return (
                                axum::http::StatusCode::BAD_REQUEST,
                                Json(json!({"error": "invalid_grant", "error_description": "AADSTS700082: the refresh token has expired"})),
                            );
                        }
                        state.grants += 1;
                        let access = format!("access-{}", state.grants);
                        state.valid.insert(access.clone());
                        // Due for renewal (two minutes before expiry) 3 s from now.
                        (axum::http::StatusCode::OK, Json(json!({"access_token": access, "token_type": "Bearer", "expires_in": 123})))
                    }
                }),
            )
            .route(
                "/introspect",
                post(move |body: String| {
                    let server = introspect.clone();
                    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
                    async move {
                        let state = server.state.lock().unwrap();
                        let token = form.get("token").cloned().unwrap_or_default();
                        if state.valid.contains(&token) {
                            Json(json!({"active": true, "username": state.user}))
                        } else {
                            Json(json!({"active": false}))
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:12480")
            .await
            .unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    fn grants(&self) -> usize {
        self.state.lock().unwrap().grants
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_refreshed_before_expiry_and_after_a_refusal() {
    // Restarts the shared Dovecot: no other email test runs meanwhile.
    let _dovecot = DOVECOT.write().await;
    let prefix = unique_prefix("email-oauth");
    let support = fresh_address("support");
    let customer = fresh_address("customer");
    let tokens = TokenServer::start(&support).await;
    let config = format!(
        r#"
[email]
reconnect_min_ms = 200
reconnect_max_ms = 1000
[email.channels.support]
address = "{support}"
imap_url = "imap://127.0.0.1:{IMAP_PORT}"
username = "{support}"
smtp_url = "smtp://127.0.0.1:12587"
[email.channels.support.oauth2]
token_url = "http://127.0.0.1:12480/token"
client_id = "omnigate-test"
client_secret = "client-secret"
refresh_token = "refresh-1"
"#
    );
    let gateway =
        Gateway::start_roles(&brokers(), &prefix, &["email", "api"], &config, None, &[]).await;
    let send = |n: usize| {
        let (support, customer) = (support.clone(), customer.clone());
        async move {
            let id = format!("o{n}.{}@example.com", uuid::Uuid::new_v4().simple());
            smtp(
                &customer,
                &support,
                &mail(&customer, &support, "OAuth", &id, &[], "z"),
            )
            .await;
        }
    };
    send(1).await;
    let events = inbound_until(&prefix, |e| !received(e).is_empty()).await;
    assert_eq!(
        received(&events).len(),
        1,
        "read over XOAUTH2; log:\n{}",
        gateway.log()
    );

    // Each token is due 3 s after it was issued: the session logs in again with a new
    // one before it could expire.
    let first = tokens.grants();
    let started = Instant::now();
    while tokens.grants() < first + 2 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        tokens.grants() >= first + 2,
        "tokens renewed: {} grants",
        tokens.grants()
    );
    send(2).await;
    let events = inbound_until(&prefix, |e| received(e).len() >= 2).await;
    assert_eq!(received(&events).len(), 2);

    // A reply goes out over SMTP with XOAUTH2 too (the test server's submission port
    // takes SMTP AUTH through Dovecot, which asks the same introspection endpoint).
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/messages", gateway.url))
        .bearer_auth("omnigate-dev-key")
        .json(&json!({"channel": {"channelId": "support"}, "to": customer, "text": "Sent with OAuth2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let events = inbound_until(&prefix, |e| e.iter().any(|e| e["type"] == "message.sent")).await;
    assert!(
        events.iter().any(|e| e["type"] == "message.sent"),
        "sent over XOAUTH2; log:\n{}",
        gateway.log()
    );
    let smtp_log =
        std::fs::read_to_string("/tmp/omnigate-mail-test/postfix.log").unwrap_or_default();
    assert!(
        smtp_log.contains(&format!("sasl_method=XOAUTH2, sasl_username={support}")),
        "Postfix saw an XOAUTH2 login for {support}"
    );
    assert_eq!(inbox(&customer, 1).await.len(), 1);

    // The provider revokes every issued token: the login is refused once, a new token
    // is fetched and the mailbox goes on.
    tokens.state.lock().unwrap().valid.clear();
    mail_script(&["restart-imap", "test"]);
    send(3).await;
    let events = inbound_until(&prefix, |e| received(e).len() >= 3).await;
    assert_eq!(received(&events).len(), 3, "log:\n{}", gateway.log());

    // The refresh token itself dies: the channel is in error, saying what to do.
    tokens.state.lock().unwrap().refuse_refresh = true;
    tokens.state.lock().unwrap().valid.clear();
    mail_script(&["restart-imap", "test"]);
    let started = Instant::now();
    let mut readyz = String::new();
    while started.elapsed() < Duration::from_secs(30) {
        readyz = reqwest::get(format!("{}/readyz", gateway.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if readyz.contains("refresh token") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        readyz.contains("channel support:") && readyz.contains("issue a new refresh token"),
        "/readyz names the channel and the fix: {readyz}"
    );
    let metrics = reqwest::get(format!("{}/metrics", gateway.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("omnigate_channel_up{channel=\"support\"} 0"),
        "{metrics}"
    );
    assert!(
        !gateway.log().contains("refresh-1") && !gateway.log().contains("client-secret"),
        "no secret in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_since_skips_older_mail_and_replies_are_copied_to_the_sent_folder() {
    let _dovecot = DOVECOT.read().await;
    let prefix = unique_prefix("email-backfill");
    let support = fresh_address("support");
    let customer = fresh_address("customer");
    let old = format!("old.{}@example.com", uuid::Uuid::new_v4().simple());
    smtp(
        &customer,
        &support,
        &mail(&customer, &support, "Old", &old, &[], "before"),
    )
    .await;
    inbox(&support, 1).await;
    // Only mail from tomorrow on: what is in the folder now is skipped.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d");
    let config = format!(
        "{}backfill_since = \"{tomorrow}\"\nsent_folder = \"Sent\"\n",
        channel(&support)
    );
    let gateway =
        Gateway::start_roles(&brokers(), &prefix, &["email", "api"], &config, None, &[]).await;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(30))
        .await;
    let started = Instant::now();
    while reqwest::get(format!("{}/readyz", gateway.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .contains("channel ")
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let new = format!("new.{}@example.com", uuid::Uuid::new_v4().simple());
    smtp(
        &customer,
        &support,
        &mail(&customer, &support, "New", &new, &[], "after"),
    )
    .await;
    let events = inbound_until(&prefix, |e| !received(e).is_empty()).await;
    let ids: Vec<&str> = received(&events)
        .iter()
        .map(|e| e["message"]["providerMessageId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [new.as_str()],
        "older mail skipped; log:\n{}",
        gateway.log()
    );

    let answer = reqwest::Client::new()
        .post(format!("{}/v1/messages", gateway.url))
        .bearer_auth("omnigate-dev-key")
        .json(&json!({"channel": {"channelId": "support"}, "to": customer, "replyToProviderId": new, "text": "Noted."}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let sent = folder(&support, "Sent", 1).await;
    assert_eq!(sent.len(), 1, "a copy in Sent; log:\n{}", gateway.log());
    assert!(String::from_utf8_lossy(&sent[0]).contains(&format!("In-Reply-To: <{new}>")));
}
