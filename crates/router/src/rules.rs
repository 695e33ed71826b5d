//! Routing rules, loaded from TOML (`config/routing.toml`) and validated at load.

use crate::facts::Facts;
use chrono::{DateTime, Datelike, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use regex::Regex;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

/// A rules file that cannot be used, naming the rule (or inbox) and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {problem}")]
pub struct RulesError {
    /// e.g. ``rule `vip` field `regex` ``.
    pub place: String,
    /// What is wrong.
    pub problem: String,
}

fn err(place: impl Into<String>, problem: impl Into<String>) -> RulesError {
    RulesError {
        place: place.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    default_inbox: String,
    #[serde(default)]
    inboxes: BTreeMap<String, InboxFile>,
    #[serde(default)]
    vip_lists: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InboxFile {
    timezone: Option<String>,
    #[serde(default)]
    hours: Vec<HoursFile>,
    after_hours: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoursFile {
    days: Vec<String>,
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    inbox: String,
    #[serde(rename = "match", default)]
    matcher: MatchFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchFile {
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    channel_kinds: Vec<String>,
    #[serde(default)]
    channel_ids: Vec<String>,
    #[serde(default)]
    senders: Vec<String>,
    #[serde(default)]
    sender_domains: Vec<String>,
    #[serde(default)]
    country_codes: Vec<String>,
    #[serde(default)]
    languages: Vec<String>,
    #[serde(default)]
    keywords: Vec<String>,
    regex: Option<String>,
    vip_list: Option<String>,
}

/// Opening hours of an inbox, in its time zone.
#[derive(Debug, Clone)]
struct Hours {
    days: HashSet<Weekday>,
    from: NaiveTime,
    to: NaiveTime,
}

/// An inbox with optional business hours.
#[derive(Debug, Clone)]
struct Inbox {
    timezone: Tz,
    hours: Vec<Hours>,
    after_hours: Option<String>,
}

/// One validated rule.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    inbox: String,
    tenants: Vec<String>,
    channel_kinds: Vec<String>,
    channel_ids: Vec<String>,
    senders: Vec<String>,
    sender_domains: Vec<String>,
    country_codes: Vec<String>,
    languages: Vec<String>,
    keywords: Vec<String>,
    regex: Option<Regex>,
    vip: Option<HashSet<String>>,
}

/// Validated routing rules. First match wins; then the default inbox.
#[derive(Debug, Clone)]
pub struct Rules {
    default_inbox: String,
    inboxes: BTreeMap<String, Inbox>,
    rules: Vec<Rule>,
}

/// The inbox the rules chose, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The inbox.
    pub inbox: String,
    /// The rule that matched, or `default`; with ` (after hours)` when the fallback applied.
    pub rule: String,
    /// For every rule before the match: why it did not match.
    pub skipped: Vec<(String, String)>,
}

const KINDS: [&str; 4] = ["email", "whatsapp", "livechat", "voice"];

fn parse_day(day: &str) -> Option<Weekday> {
    day.parse::<Weekday>().ok()
}

fn lower(list: Vec<String>) -> Vec<String> {
    list.into_iter().map(|s| s.trim().to_lowercase()).collect()
}

impl Rules {
    /// Parses and validates a rules file.
    pub fn from_toml(text: &str) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text).map_err(|e| err("rules file", e.to_string()))?;
        let mut inboxes = BTreeMap::new();
        for (name, inbox) in &file.inboxes {
            let place = |field: &str| format!("inbox `{name}` field `{field}`");
            let timezone: Tz = match &inbox.timezone {
                Some(tz) => tz
                    .parse()
                    .map_err(|_| err(place("timezone"), format!("unknown time zone `{tz}`")))?,
                None => Tz::UTC,
            };
            let mut hours = Vec::new();
            for h in &inbox.hours {
                let days = h
                    .days
                    .iter()
                    .map(|d| {
                        parse_day(d).ok_or_else(|| {
                            err(
                                place("hours.days"),
                                format!("`{d}` is not a day (mon..sun)"),
                            )
                        })
                    })
                    .collect::<Result<HashSet<_>, _>>()?;
                let time = |t: &str, field: &str| {
                    NaiveTime::parse_from_str(t, "%H:%M")
                        .map_err(|_| err(place(field), format!("`{t}` is not HH:MM")))
                };
                let (from, to) = (time(&h.from, "hours.from")?, time(&h.to, "hours.to")?);
                if from >= to {
                    return Err(err(place("hours"), "`from` must be before `to`"));
                }
                hours.push(Hours { days, from, to });
            }
            if let Some(fallback) = &inbox.after_hours
                && (fallback == name
                    || !(file.inboxes.contains_key(fallback) || *fallback == file.default_inbox))
            {
                return Err(err(
                    place("after_hours"),
                    format!("`{fallback}` is not another declared inbox"),
                ));
            }
            inboxes.insert(
                name.clone(),
                Inbox {
                    timezone,
                    hours,
                    after_hours: inbox.after_hours.clone(),
                },
            );
        }
        if !inboxes.contains_key(&file.default_inbox) {
            inboxes.insert(
                file.default_inbox.clone(),
                Inbox {
                    timezone: Tz::UTC,
                    hours: Vec::new(),
                    after_hours: None,
                },
            );
        }
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for (index, rule) in file.rules.into_iter().enumerate() {
            let label = if rule.name.is_empty() {
                format!("#{}", index + 1)
            } else {
                rule.name.clone()
            };
            let place = |field: &str| format!("rule `{label}` field `{field}`");
            if !names.insert(rule.name.clone()) {
                return Err(err(place("name"), "two rules have this name"));
            }
            if !inboxes.contains_key(&rule.inbox) {
                return Err(err(
                    place("inbox"),
                    format!("`{}` is not declared under [inboxes]", rule.inbox),
                ));
            }
            let m = rule.matcher;
            let channel_kinds = lower(m.channel_kinds);
            if let Some(bad) = channel_kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
                return Err(err(
                    place("match.channel_kinds"),
                    format!("`{bad}` is not one of {KINDS:?}"),
                ));
            }
            if let Some(bad) = m
                .country_codes
                .iter()
                .find(|c| c.is_empty() || !c.chars().all(|d| d.is_ascii_digit()))
            {
                return Err(err(
                    place("match.country_codes"),
                    format!("`{bad}` is not a calling code like \"49\""),
                ));
            }
            let languages = lower(m.languages);
            let detected = crate::facts::language_codes();
            if let Some(bad) = languages.iter().find(|l| !detected.contains(&l.as_str())) {
                return Err(err(
                    place("match.languages"),
                    format!("`{bad}` is not a language the router detects: {detected:?}"),
                ));
            }
            let regex = match m.regex {
                Some(r) => {
                    Some(Regex::new(&r).map_err(|e| err(place("match.regex"), e.to_string()))?)
                }
                None => None,
            };
            let vip = match m.vip_list {
                Some(list) => Some(
                    file.vip_lists
                        .get(&list)
                        .ok_or_else(|| {
                            err(
                                place("match.vip_list"),
                                format!("no list `{list}` under [vip_lists]"),
                            )
                        })?
                        .iter()
                        .map(|s| s.trim().to_lowercase())
                        .collect(),
                ),
                None => None,
            };
            rules.push(Rule {
                name: label,
                inbox: rule.inbox,
                tenants: m.tenants,
                channel_kinds,
                channel_ids: m.channel_ids,
                senders: lower(m.senders),
                sender_domains: lower(m.sender_domains),
                country_codes: m.country_codes,
                languages,
                keywords: lower(m.keywords),
                regex,
                vip,
            });
        }
        Ok(Self {
            default_inbox: file.default_inbox,
            inboxes,
            rules,
        })
    }

    /// True when `inbox` is declared (a sticky conversation in a removed inbox moves).
    pub fn has_inbox(&self, inbox: &str) -> bool {
        self.inboxes.contains_key(inbox)
    }

    /// Picks the inbox for `facts` at `now`: first matching rule, else the default;
    /// then the inbox's after-hours fallback if it is closed.
    pub fn choose(&self, facts: &Facts, now: DateTime<Utc>) -> Choice {
        let mut skipped = Vec::new();
        let mut chosen = None;
        for rule in &self.rules {
            match rule.mismatch(facts) {
                Some(why) => skipped.push((rule.name.clone(), why)),
                None => {
                    chosen = Some((rule.inbox.clone(), rule.name.clone()));
                    break;
                }
            }
        }
        let (inbox, rule) =
            chosen.unwrap_or_else(|| (self.default_inbox.clone(), "default".into()));
        match self.inboxes.get(&inbox) {
            Some(i) if !i.is_open(now) && i.after_hours.is_some() => Choice {
                inbox: i.after_hours.clone().unwrap_or_default(),
                rule: format!("{rule} (after hours)"),
                skipped,
            },
            _ => Choice {
                inbox,
                rule,
                skipped,
            },
        }
    }
}

impl Inbox {
    fn is_open(&self, now: DateTime<Utc>) -> bool {
        if self.hours.is_empty() {
            return true;
        }
        let local = now.with_timezone(&self.timezone);
        let (day, time) = (local.weekday(), local.time());
        self.hours
            .iter()
            .any(|h| h.days.contains(&day) && h.from <= time && time < h.to)
    }
}

impl Rule {
    /// `None` when every condition holds; otherwise the first that does not.
    fn mismatch(&self, f: &Facts) -> Option<String> {
        let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|x| x == value);
        if !any(&self.tenants, &f.tenant) {
            return Some(format!("tenant `{}` not in {:?}", f.tenant, self.tenants));
        }
        if !any(&self.channel_kinds, &f.channel_kind) {
            return Some(format!(
                "channel kind `{}` not in {:?}",
                f.channel_kind, self.channel_kinds
            ));
        }
        if !any(&self.channel_ids, &f.channel_id) {
            return Some(format!(
                "channel `{}` not in {:?}",
                f.channel_id, self.channel_ids
            ));
        }
        if !self.senders.is_empty() && !f.senders().any(|s| self.senders.contains(&s)) {
            return Some("sender not listed".into());
        }
        if !self.sender_domains.is_empty()
            && !f
                .email_domain()
                .is_some_and(|d| self.sender_domains.iter().any(|x| x == &d))
        {
            return Some("sender domain not listed".into());
        }
        if !self.country_codes.is_empty()
            && !f.phone_digits().is_some_and(|digits| {
                self.country_codes
                    .iter()
                    .any(|c| digits.starts_with(c.as_str()))
            })
        {
            return Some("phone country code not listed".into());
        }
        if !self.languages.is_empty()
            && !f
                .language()
                .is_some_and(|l| self.languages.iter().any(|x| x == l))
        {
            return Some(format!(
                "language {:?} not in {:?}",
                f.language(),
                self.languages
            ));
        }
        if !self.keywords.is_empty() {
            let text = f.searchable_text().to_lowercase();
            if !self.keywords.iter().any(|k| text.contains(k.as_str())) {
                return Some("no keyword in subject or text".into());
            }
        }
        if let Some(regex) = &self.regex
            && !regex.is_match(&f.searchable_text())
        {
            return Some(format!("regex `{}` does not match", regex.as_str()));
        }
        if let Some(vip) = &self.vip
            && !f.senders().any(|s| vip.contains(&s))
        {
            return Some("sender not on the VIP list".into());
        }
        None
    }
}
