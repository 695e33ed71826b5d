//! Every connector this binary can run. Adding a connector is one line here (and its
//! crate, and its table in `config/default.toml`); see `omnigate_core::connector`.

use omnigate_core::connector::ConnectorKind;

/// The connector kinds, each with its config table and role name.
pub fn kinds() -> Vec<Box<dyn ConnectorKind>> {
    vec![
        Box::new(omnigate_connector_whatsapp::WhatsappKind),
        Box::new(omnigate_connector_voice::VoiceKind),
        Box::new(omnigate_connector_email::EmailKind),
        Box::new(omnigate_connector_livechat::LivechatKind),
    ]
}
