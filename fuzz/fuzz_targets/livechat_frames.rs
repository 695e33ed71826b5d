//! Any bytes as a visitor's frame, token and identity: never a panic, and a token
//! that checks out is one the channel issued.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnigate_connector_livechat::protocol::{self, ClientFrame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientFrame::Hello {
        visitor_token,
        identity,
        ..
    }) = protocol::parse_client(text)
    {
        if let Some(identity) = identity {
            let _ = protocol::check_identity(b"secret", &identity);
            let _ = protocol::verified_visitor(&identity);
        }
        if let Some(token) = visitor_token
            && let Some(visitor) = protocol::check_token(b"secret", "shop", &token)
        {
            assert_eq!(protocol::issue_token(b"secret", "shop", &visitor), token);
        }
    }
    let _ = protocol::check_token(b"secret", "shop", text);
});
