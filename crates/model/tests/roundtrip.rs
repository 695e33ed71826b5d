//! Every event payload survives JSON and protobuf round trips, and JSON from a newer
//! producer (unknown fields) still decodes.

use omnigate_model::pb::{self, content_part::Part, event::Payload};
use prost::Message as _;

fn channel() -> pb::Channel {
    pb::Channel {
        kind: pb::ChannelKind::Whatsapp as i32,
        channel_id: "support-wa".into(),
        address: "106540352242922".into(),
    }
}

fn ts(seconds: i64) -> Option<omnigate_model::Timestamp> {
    Some(omnigate_model::Timestamp { seconds, nanos: 0 })
}

fn every_part() -> Vec<pb::ContentPart> {
    let raw: serde_json::Value = serde_json::json!({"type": "poll", "poll": {"q": "?", "n": 1.5}});
    [
        Part::Text("Does it come in another color?".into()),
        Part::Html("<p>hi</p>".into()),
        Part::Attachment(pb::Attachment {
            kind: "image".into(),
            mime_type: "image/jpeg".into(),
            size: 303_833,
            sha256: "ab".repeat(32),
            caption: "Broken part".into(),
            state: pb::MediaState::Pending as i32,
            provider_media_id: "1234567890123456".into(),
            ..Default::default()
        }),
        Part::Location(pb::Location {
            latitude: 52.52,
            longitude: 13.405,
            name: "HQ".into(),
            ..Default::default()
        }),
        Part::ContactCard(pb::ContactCard {
            formatted_name: "Jane Doe".into(),
            phones: vec![pb::TypedValue {
                value: "+1 650 555 1234".into(),
                r#type: "WORK".into(),
                wa_id: "16505551234".into(),
            }],
            addresses: vec![pb::PostalAddress {
                city: "Menlo Park".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        Part::InteractiveReply(pb::InteractiveReply {
            kind: "list_reply".into(),
            id: "opt-1".into(),
            title: "Option 1".into(),
            ..Default::default()
        }),
        Part::Reaction(pb::Reaction {
            target_provider_message_id: "wamid.X".into(),
            emoji: "👍".into(),
        }),
        Part::System(pb::SystemNotice {
            kind: "customer_changed_number".into(),
            body: "changed".into(),
            new_provider_id: "16505550000".into(),
        }),
        Part::Order(pb::Order {
            catalog_id: "cat".into(),
            items: vec![pb::OrderItem {
                product_retailer_id: "sku".into(),
                quantity: 2.0,
                item_price: 9.5,
                currency: "EUR".into(),
            }],
            ..Default::default()
        }),
        Part::Unsupported(pb::Unsupported {
            provider_type: "poll".into(),
            errors: vec![pb::ProviderError {
                code: "131051".into(),
                title: "Unsupported message type".into(),
                details: String::new(),
            }],
            raw: Some(omnigate_model::json_to_value(
                &serde_json::value::to_raw_value(&raw).expect("a JSON value"),
            )),
        }),
    ]
    .into_iter()
    .map(|p| pb::ContentPart { part: Some(p) })
    .collect()
}

fn every_payload() -> Vec<Payload> {
    vec![
        Payload::Message(pb::Message {
            channel: Some(channel()),
            contact: Some(pb::Contact {
                display_name: "Sheena Nelson".into(),
                phone_e164: "+16505551234".into(),
                provider_id: "16505551234".into(),
                ..Default::default()
            }),
            direction: pb::Direction::Inbound as i32,
            provider_message_id: "wamid.1".into(),
            reply_to_provider_id: "wamid.0".into(),
            sent_at: ts(1_749_416_383),
            received_at: ts(1_749_416_384),
            parts: every_part(),
            metadata: Some(pb::message::Metadata::Whatsapp(pb::WhatsappMetadata {
                window_expires_at: ts(1_749_502_783),
                forwarded: true,
                referral: Some(pb::Referral {
                    source_type: "ad".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            raw: Some(pb::RawPayload {
                location: Some(pb::raw_payload::Location::Blob(pb::BlobRef {
                    key: "raw/1".into(),
                    size: 10,
                    ..Default::default()
                })),
            }),
        }),
        Payload::Message(pb::Message {
            metadata: Some(pb::message::Metadata::Email(pb::EmailMetadata {
                subject: "Order #1".into(),
                references: vec!["<a@x>".into(), "<b@x>".into()],
                auto_reply: true,
                ..Default::default()
            })),
            ..Default::default()
        }),
        Payload::Status(pb::MessageStatus {
            channel: Some(channel()),
            provider_message_id: "wamid.2".into(),
            status: pb::DeliveryStatus::Failed as i32,
            errors: vec![pb::ProviderError {
                code: "131047".into(),
                title: "Re-engagement message".into(),
                details: "more than 24 hours".into(),
            }],
            pricing: Some(pb::Pricing {
                billable: true,
                model: "PMP".into(),
                category: "service".into(),
                r#type: "regular".into(),
            }),
            at: ts(1_749_420_000),
            ..Default::default()
        }),
        Payload::Sent(pb::MessageSent {
            command_id: "cmd-1".into(),
            provider_message_id: "wamid.3".into(),
            ..Default::default()
        }),
        Payload::Call(pb::CallEvent {
            call_id: "CA123".into(),
            direction: pb::Direction::Inbound as i32,
            from: "+4930123456".into(),
            duration_seconds: 65,
            sequence: 3,
            ..Default::default()
        }),
        Payload::Assignment(pb::ConversationAssignment {
            conversation_id: "conv-1".into(),
            inbox: "billing".into(),
            previous_inbox: "general".into(),
            linked_conversation_ids: vec!["conv-0".into()],
            ..Default::default()
        }),
        Payload::ContactLinked(pb::ContactLinked {
            contact_id: "c1".into(),
            merged_contact_id: "c2".into(),
            shared_identifier: "phone:+16505551234".into(),
        }),
        Payload::MediaUpdated(pb::MediaUpdated {
            part_index: 2,
            attachment: Some(pb::Attachment {
                state: pb::MediaState::Stored as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
    ]
}

fn envelope(payload: Payload) -> pb::Event {
    pb::Event {
        id: "5f0c1a52-0000-5000-8000-000000000000".into(),
        r#type: "message.received".into(),
        source: "/omnigate/whatsapp/support-wa".into(),
        time: ts(1_749_416_384),
        tenant: "acme".into(),
        conversation_key: "whatsapp:106540352242922:16505551234".into(),
        payload: Some(payload),
        routing: Some(pb::Routing {
            conversation_id: "conv-1".into(),
            contact_id: "c1".into(),
            inbox: "general".into(),
        }),
    }
}

#[test]
fn every_event_round_trips_json_and_protobuf() {
    let payloads = every_payload();
    assert_eq!(payloads.len(), 8);
    for payload in payloads {
        let event = envelope(payload);
        let json = omnigate_model::to_json(&event);
        assert_eq!(omnigate_model::from_json(&json).unwrap(), event);
        let bytes = event.encode_to_vec();
        assert_eq!(pb::Event::decode(bytes.as_slice()).unwrap(), event);
    }
}

#[test]
fn send_commands_round_trip() {
    let commands = [
        pb::send_command::Content::Text("hello".into()),
        pb::send_command::Content::MarkRead("wamid.9".into()),
        pb::send_command::Content::Media(pb::OutboundMedia {
            kind: "document".into(),
            source: Some(pb::outbound_media::Source::Link("https://x/a.pdf".into())),
            filename: "a.pdf".into(),
            ..Default::default()
        }),
        pb::send_command::Content::Template(pb::Template {
            name: "order_update".into(),
            language: "en_US".into(),
            components: serde_json::from_value(serde_json::json!([{"type": "body"}])).ok(),
        }),
    ];
    for content in commands {
        let cmd = pb::SendCommand {
            command_id: "cmd".into(),
            channel: Some(channel()),
            to: "16505551234".into(),
            content: Some(content),
            ..Default::default()
        };
        let json = serde_json::to_vec(&cmd).unwrap();
        assert_eq!(
            serde_json::from_slice::<pb::SendCommand>(&json).unwrap(),
            cmd
        );
        assert_eq!(
            pb::SendCommand::decode(cmd.encode_to_vec().as_slice()).unwrap(),
            cmd
        );
    }
}

#[test]
fn json_is_the_canonical_mapping() {
    let event = envelope(every_payload().remove(2));
    let json: serde_json::Value = serde_json::from_slice(&omnigate_model::to_json(&event)).unwrap();
    // lowerCamelCase names, enum names as strings, RFC 3339 timestamps, oneof flattened.
    assert_eq!(
        json["conversationKey"],
        "whatsapp:106540352242922:16505551234"
    );
    assert_eq!(json["status"]["status"], "DELIVERY_STATUS_FAILED");
    assert_eq!(json["time"], "2025-06-08T20:59:44+00:00");
    assert_eq!(json["status"]["errors"][0]["code"], "131047");
}

#[test]
fn json_from_a_newer_producer_still_decodes() {
    let json = serde_json::json!({
        "id": "e1",
        "type": "message.received",
        "tenant": "acme",
        "someFutureField": {"nested": [1, 2, 3]},
        "message": {
            "providerMessageId": "wamid.1",
            "direction": "DIRECTION_INBOUND",
            "futurePart": true,
            "parts": [{"text": "hi", "alsoNew": 1}]
        }
    });
    let event = omnigate_model::from_json(json.to_string().as_bytes()).unwrap();
    let Some(Payload::Message(message)) = event.payload else {
        panic!("expected a message payload");
    };
    assert_eq!(message.provider_message_id, "wamid.1");
    assert_eq!(message.parts[0].part, Some(Part::Text("hi".into())));
}

/// Adding routing to an event's JSON gives the JSON of the routed event (the same
/// fields and values, routing last), for every payload; routing whose values need
/// escaping stays valid JSON.
#[test]
fn routing_added_to_json_matches_encoding_the_routed_event() {
    let routing = pb::Routing {
        conversation_id: "conv-1".into(),
        contact_id: "contact \"7\"\n".into(),
        inbox: "billing".into(),
    };
    for payload in every_payload() {
        let mut event = envelope(payload);
        event.routing = None;
        let inbound = omnigate_model::to_json(&event);
        let spliced = omnigate_model::with_routing_json(&inbound, &routing).expect("an object");
        let mut routed = event.clone();
        routed.routing = Some(routing.clone());
        let as_value = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).unwrap();
        assert_eq!(
            as_value(&spliced),
            as_value(&omnigate_model::to_json(&routed))
        );
        assert_eq!(omnigate_model::from_json(&spliced).unwrap(), routed);
        assert!(spliced.starts_with(&inbound[..inbound.len() - 1]));
    }
    let empty = omnigate_model::with_routing_json(b"{ } \n", &pb::Routing::default()).unwrap();
    assert_eq!(empty, br#"{ "routing":{}}"#);
    assert_eq!(omnigate_model::with_routing_json(b"[1]", &routing), None);
}
