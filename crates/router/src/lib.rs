//! The router. Its core is pure: routing rules, the facts an event offers them, and the
//! decision that combines rules with conversation state (stickiness, reopening,
//! cross-channel continuity). No I/O and no clock: time is passed in.

pub mod config;
pub mod contacts;
pub mod facts;
pub mod policy;
pub mod rules;
pub mod service;

pub use config::RouterConfig;
pub use facts::Facts;
pub use policy::{Assignment, Decision, Input, OpenConversation, Outcome, PolicySettings, decide};
pub use rules::{Choice, Rules, RulesError};
