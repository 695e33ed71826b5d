//! Table-driven tests of the pure routing policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use omnigate_router::{
    Assignment, Facts, Input, OpenConversation, Outcome, PolicySettings, Rules, decide,
};

fn rules() -> Rules {
    Rules::from_toml(include_str!("../../../config/routing.toml")).unwrap()
}

fn facts(kind: &str, email: &str, phone: &str, subject: &str, text: &str) -> Facts {
    let mut facts = Facts::default();
    facts.tenant = "acme".into();
    facts.channel_kind = kind.into();
    facts.channel_id = format!("{kind}-main");
    facts.email = email.into();
    facts.phone = phone.into();
    facts.subject = subject.into();
    facts.text = text.into();
    facts
}

/// A Wednesday, 12:00 in Berlin (CEST), inside billing's hours.
fn wednesday_noon() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 10, 10, 0, 0).unwrap()
}

#[test]
fn matchers_and_precedence() {
    let rules = rules();
    let cases: Vec<(&str, Facts, &str, &str)> = vec![
        (
            "vip list beats keywords",
            facts("email", "ceo@bigcustomer.example", "", "Invoice", ""),
            "vip",
            "vip",
        ),
        (
            "vip by phone",
            facts("voice", "", "+4915112345678", "", ""),
            "vip",
            "vip",
        ),
        (
            "keyword in subject",
            facts("email", "a@x.example", "", "Your INVOICE 42", ""),
            "billing",
            "billing",
        ),
        (
            "keyword in text",
            facts("livechat", "", "", "", "I want a refund please"),
            "billing",
            "billing",
        ),
        (
            "german phone on whatsapp",
            facts("whatsapp", "", "+491701234567", "", "hi"),
            "germany",
            "german-phones",
        ),
        (
            "german phone by email is not a phone rule",
            facts("email", "a@x.example", "+491701234567", "", "hi"),
            "general",
            "default",
        ),
        (
            "other whatsapp",
            facts("whatsapp", "", "+16505551234", "", "hi"),
            "whatsapp-sales",
            "whatsapp-sales",
        ),
        (
            "nothing matches",
            facts("email", "a@x.example", "", "Hello", "question"),
            "general",
            "default",
        ),
    ];
    for (name, f, inbox, rule) in cases {
        let choice = rules.choose(&f, wednesday_noon());
        assert_eq!(
            (choice.inbox.as_str(), choice.rule.as_str()),
            (inbox, rule),
            "{name}: {choice:?}"
        );
    }
}

#[test]
fn language_is_detected_from_text() {
    let rules = rules();
    let event = omnigate_model::pb::Event {
        tenant: "acme".into(),
        payload: Some(omnigate_model::pb::event::Payload::Message(omnigate_model::pb::Message {
            channel: Some(omnigate_model::pb::Channel {
                kind: omnigate_model::pb::ChannelKind::Email as i32,
                channel_id: "mail".into(),
                address: String::new(),
            }),
            parts: vec![omnigate_model::pb::ContentPart {
                part: Some(omnigate_model::pb::content_part::Part::Text(
                    "Guten Tag, meine Bestellung ist noch nicht angekommen. Können Sie mir bitte helfen?".into(),
                )),
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    let f = Facts::of(&event);
    assert_eq!(f.language(), Some("de"));
    assert_eq!(f.channel_kind, "email");
    assert_eq!(rules.choose(&f, wednesday_noon()).inbox, "germany");
}

#[test]
fn business_hours_follow_the_time_zone_across_dst() {
    let rules = rules();
    let f = facts("email", "a@x.example", "", "refund", "");
    // Berlin switches to CEST on 2026-03-29. 08:30 UTC is 09:30 CEST after the switch
    // (open) but was 09:30 CET... one week before, 08:30 UTC was 09:30 CET too; pick
    // times that fall on different sides of opening depending on the offset.
    let cases = [
        // Friday 2026-03-27, 07:30 UTC = 08:30 CET: closed.
        (
            Utc.with_ymd_and_hms(2026, 3, 27, 7, 30, 0).unwrap(),
            "night-shift",
        ),
        // Friday 2026-03-27, 08:30 UTC = 09:30 CET: open.
        (
            Utc.with_ymd_and_hms(2026, 3, 27, 8, 30, 0).unwrap(),
            "billing",
        ),
        // Monday 2026-03-30, 07:30 UTC = 09:30 CEST: open (the same UTC time was closed before DST).
        (
            Utc.with_ymd_and_hms(2026, 3, 30, 7, 30, 0).unwrap(),
            "billing",
        ),
        // Monday 2026-03-30, 15:30 UTC = 17:30 CEST: closed.
        (
            Utc.with_ymd_and_hms(2026, 3, 30, 15, 30, 0).unwrap(),
            "night-shift",
        ),
        // Saturday noon: closed.
        (
            Utc.with_ymd_and_hms(2026, 3, 28, 11, 0, 0).unwrap(),
            "night-shift",
        ),
    ];
    for (at, inbox) in cases {
        let choice = rules.choose(&f, at);
        assert_eq!(choice.inbox, inbox, "at {at}: {choice:?}");
    }
}

#[test]
fn invalid_rules_name_the_rule_and_field() {
    let cases = [
        (
            "default_inbox = \"g\"\n[[rules]]\nname = \"r1\"\ninbox = \"nope\"\n",
            "rule `r1` field `inbox`",
        ),
        (
            "default_inbox = \"g\"\n[[rules]]\nname = \"r2\"\ninbox = \"g\"\nmatch = { regex = \"(\" }\n",
            "rule `r2` field `match.regex`",
        ),
        (
            "default_inbox = \"g\"\n[[rules]]\nname = \"r3\"\ninbox = \"g\"\nmatch = { channel_kinds = [\"fax\"] }\n",
            "rule `r3` field `match.channel_kinds`",
        ),
        (
            "default_inbox = \"g\"\n[[rules]]\nname = \"r4\"\ninbox = \"g\"\nmatch = { vip_list = \"x\" }\n",
            "rule `r4` field `match.vip_list`",
        ),
        (
            "default_inbox = \"g\"\n[[rules]]\nname = \"r6\"\ninbox = \"g\"\nmatch = { languages = [\"xx\"] }\n",
            "rule `r6` field `match.languages`",
        ),
        (
            "default_inbox = \"g\"\n[inboxes.b]\ntimezone = \"Mars/Olympus\"\n",
            "inbox `b` field `timezone`",
        ),
        (
            "default_inbox = \"g\"\n[inboxes.b]\nhours = [{ days = [\"mon\"], from = \"9\", to = \"17:00\" }]\n",
            "inbox `b` field `hours.from`",
        ),
        (
            "default_inbox = \"g\"\n[[rules]]\nname = \"r5\"\ninbox = \"g\"\nmatch = { colour = \"red\" }\n",
            "rules file",
        ),
    ];
    for (text, place) in cases {
        let err = Rules::from_toml(text).unwrap_err();
        assert!(err.to_string().starts_with(place), "{place}: got {err}");
    }
}

fn settings() -> PolicySettings {
    PolicySettings {
        reopen_after: Duration::days(3),
        continuity: true,
    }
}

fn input<'a>(
    event_id: &'a str,
    key: &'a str,
    at: DateTime<Utc>,
    facts: &'a Facts,
    existing: Option<&'a Assignment>,
    elsewhere: Option<&'a OpenConversation>,
) -> Input<'a> {
    Input {
        event_id,
        conversation_key: key,
        at,
        facts,
        contact_id: "contact-1",
        existing,
        open_elsewhere: elsewhere,
    }
}

#[test]
fn stickiness_reopening_duplicates_and_removed_inboxes() {
    let rules = rules();
    let t0 = wednesday_noon();
    let refund = facts("email", "a@x.example", "", "refund", "");
    let first = decide(
        &input("e1", "email:m:<root@x>", t0, &refund, None, None),
        &rules,
        settings(),
    );
    assert_eq!(first.outcome, Outcome::Opened);
    assert_eq!(first.assignment.inbox, "billing");

    // A follow-up that matches no rule stays in billing.
    let plain = facts("email", "a@x.example", "", "thanks", "");
    let follow = decide(
        &input(
            "e2",
            "email:m:<root@x>",
            t0 + Duration::hours(1),
            &plain,
            Some(&first.assignment),
            None,
        ),
        &rules,
        settings(),
    );
    assert_eq!(follow.outcome, Outcome::Continued);
    assert_eq!(follow.assignment.inbox, "billing");
    assert_eq!(
        follow.assignment.conversation_id,
        first.assignment.conversation_id
    );

    // Stickiness survives a rules change that would route elsewhere.
    let changed = Rules::from_toml("default_inbox = \"general\"\n[inboxes.billing]\n").unwrap();
    let sticky = decide(
        &input(
            "e3",
            "email:m:<root@x>",
            t0 + Duration::hours(2),
            &refund,
            Some(&follow.assignment),
            None,
        ),
        &changed,
        settings(),
    );
    assert_eq!(
        (sticky.outcome.clone(), sticky.assignment.inbox.as_str()),
        (Outcome::Continued, "billing")
    );

    // The opening event consumed again after a restart (the state was loaded from the
    // state topic, without fingerprints): opened again, in the same conversation, so
    // `conversation.assigned` is published again.
    let mut loaded = sticky.assignment.clone();
    loaded.recent_events.clear();
    let replayed = decide(
        &input("e1", "email:m:<root@x>", t0, &refund, Some(&loaded), None),
        &rules,
        settings(),
    );
    assert_eq!(replayed.outcome, Outcome::Opened);
    assert_eq!(
        (
            replayed.assignment.conversation_id.as_str(),
            replayed.assignment.inbox.as_str()
        ),
        (first.assignment.conversation_id.as_str(), "billing")
    );

    // The same event again is a duplicate.
    let dup = decide(
        &input(
            "e2",
            "email:m:<root@x>",
            t0 + Duration::hours(2),
            &plain,
            Some(&sticky.assignment),
            None,
        ),
        &rules,
        settings(),
    );
    assert_eq!(dup.outcome, Outcome::Duplicate);

    // Its inbox removed from the rules: the conversation moves.
    let removed = Rules::from_toml("default_inbox = \"general\"\n").unwrap();
    let moved = decide(
        &input(
            "e4",
            "email:m:<root@x>",
            t0 + Duration::hours(3),
            &plain,
            Some(&sticky.assignment),
            None,
        ),
        &removed,
        settings(),
    );
    assert_eq!(
        moved.outcome,
        Outcome::Reassigned {
            previous_inbox: "billing".into()
        }
    );
    assert_eq!(moved.assignment.inbox, "general");

    // After the reopen window, a new conversation with a new id.
    let later = decide(
        &input(
            "e5",
            "email:m:<root@x>",
            t0 + Duration::days(4),
            &plain,
            Some(&sticky.assignment),
            None,
        ),
        &rules,
        settings(),
    );
    assert_eq!(later.outcome, Outcome::Opened);
    assert_ne!(
        later.assignment.conversation_id,
        first.assignment.conversation_id
    );
}

#[test]
fn cross_channel_continuity_links_the_open_conversation() {
    let rules = rules();
    let t0 = wednesday_noon();
    let call = facts("voice", "", "+16505551234", "", "");
    let open_email = OpenConversation {
        conversation_id: "conv-email".into(),
        inbox: "billing".into(),
        last_event_at: (t0 - Duration::hours(5)).timestamp(),
    };
    let decision = decide(
        &input(
            "c1",
            "voice:pbx:+16505551234",
            t0,
            &call,
            None,
            Some(&open_email),
        ),
        &rules,
        settings(),
    );
    assert_eq!(decision.outcome, Outcome::Opened);
    assert_eq!(decision.assignment.inbox, "billing");
    assert_eq!(decision.assignment.rule, "continuity");
    assert_eq!(decision.assignment.linked, vec!["conv-email".to_string()]);

    let off = PolicySettings {
        continuity: false,
        ..settings()
    };
    let decision = decide(
        &input(
            "c1",
            "voice:pbx:+16505551234",
            t0,
            &call,
            None,
            Some(&open_email),
        ),
        &rules,
        off,
    );
    assert_eq!(
        decision.assignment.inbox, "general",
        "switch off: rules decide"
    );

    let stale = OpenConversation {
        last_event_at: (t0 - Duration::days(10)).timestamp(),
        ..open_email
    };
    let decision = decide(
        &input(
            "c1",
            "voice:pbx:+16505551234",
            t0,
            &call,
            None,
            Some(&stale),
        ),
        &rules,
        settings(),
    );
    assert_eq!(
        decision.assignment.inbox, "general",
        "a closed conversation does not pull"
    );
}

#[test]
fn decisions_are_deterministic() {
    let rules = rules();
    let f = facts("whatsapp", "", "+16505551234", "", "hello");
    let a = decide(
        &input(
            "w1",
            "whatsapp:1:16505551234",
            wednesday_noon(),
            &f,
            None,
            None,
        ),
        &rules,
        settings(),
    );
    let b = decide(
        &input(
            "w1",
            "whatsapp:1:16505551234",
            wednesday_noon(),
            &f,
            None,
            None,
        ),
        &rules,
        settings(),
    );
    assert_eq!(a, b);
}
