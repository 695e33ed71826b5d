//! Small operator tools: list topics, print a topic, receive webhooks locally.

use crate::config::Config;
use omnigate_kafka::{admin, reader};
use std::time::Duration;

/// `omnigate topics`
pub async fn topics(config: &Config) -> anyhow::Result<()> {
    for name in admin::list_topics(&config.kafka).await? {
        println!("{name}");
    }
    Ok(())
}

/// `omnigate tail TOPIC [--follow] [--from-end]`
pub fn tail(config: &Config, topic: &str, follow: bool, from_end: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let name = if topic.starts_with(&config.kafka.topic_prefix) {
        topic.to_string()
    } else {
        format!("{}{topic}", config.kafka.topic_prefix)
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the tail quietly.
    let mut print = |record: reader::ReadRecord| writeln!(out, "{}", tail_line(&record)).is_ok();
    if follow || from_end {
        reader::follow(&config.kafka, &name, from_end, print)?;
    } else {
        let mut open = true;
        reader::read_to_end(&config.kafka, &name, Duration::from_secs(300), |record| {
            open = open && print(record);
        })?;
    }
    Ok(())
}

/// One record as a JSON line: value as JSON when it is JSON, as a string otherwise.
fn tail_line(record: &reader::ReadRecord) -> serde_json::Value {
    let value = serde_json::from_slice::<serde_json::Value>(&record.value).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&record.value).into_owned())
    });
    serde_json::json!({
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key,
        "headers": record.headers,
        "value": value,
    })
}

/// `omnigate route explain EVENT.json`
pub fn explain(config: &Config, event: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let rules = crate::router::load_rules(&config.router.rules_file)?;
    let bytes = std::fs::read(event).with_context(|| format!("cannot read {}", event.display()))?;
    let event = omnigate_model::from_json(&bytes)
        .with_context(|| format!("{} is not an event", event.display()))?;
    let facts = omnigate_router::Facts::of(&event);
    let at = event
        .time
        .as_ref()
        .and_then(omnigate_model::datetime)
        .unwrap_or_else(chrono::Utc::now);
    let choice = rules.choose(&facts, at);
    println!(
        "event {} ({}) at {at}: tenant={} channel={}/{} email={:?} phone={:?} language={:?}",
        event.id,
        event.r#type,
        facts.tenant,
        facts.channel_kind,
        facts.channel_id,
        facts.email,
        facts.phone,
        facts.language()
    );
    for (rule, why) in &choice.skipped {
        println!("  rule {rule}: no match ({why})");
    }
    println!("=> inbox {} by {}", choice.inbox, choice.rule);
    println!("(a follow-up in an open conversation stays in that conversation's inbox)");
    Ok(())
}

/// `omnigate receive`: prints every POST as a delivery, verified when `secret` is given.
pub async fn receive(listen: std::net::SocketAddr, secret: Option<String>) -> anyhow::Result<()> {
    use omnigate_webhooks::signing::SigningKey;
    let key = secret
        .map(|s| SigningKey::parse(&s))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let key = key.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
                let verdict = match &key {
                    Some(key) => {
                        let ok = timestamp.parse().is_ok_and(|ts| {
                            key.verify(
                                &id,
                                ts,
                                &body,
                                &header("webhook-signature"),
                                chrono::Utc::now().timestamp(),
                            )
                        });
                        if ok {
                            "signature verified"
                        } else {
                            "SIGNATURE INVALID"
                        }
                    }
                    None => "signature not checked (no --secret)",
                };
                println!("webhook-id {id} timestamp {timestamp}: {verdict}");
                println!("{}\n", String::from_utf8_lossy(&body));
                axum::http::StatusCode::NO_CONTENT
            }
        },
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("Receiving webhooks on http://{listen}/ (Ctrl-C stops)");
    axum::serve(listener, app).await?;
    Ok(())
}
