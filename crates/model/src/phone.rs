//! Phone-number canonicalisation shared by WhatsApp, voice and the router.

/// Canonicalises a phone number to E.164 (`+` and 8 to 15 digits).
///
/// Accepts what providers send: WhatsApp wa_ids (digits, no `+`), `+1 (650) 555-1234`,
/// `0049…` international prefixes. Returns `None` when the result cannot be E.164,
/// because a wrong number would link two strangers.
pub fn to_e164(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let rest = trimmed
        .strip_prefix('+')
        .or_else(|| trimmed.strip_prefix("00"))
        .unwrap_or(trimmed);
    let mut digits = String::with_capacity(16);
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    let valid = (8..=15).contains(&digits.len()) && !digits.starts_with('0');
    valid.then(|| format!("+{digits}"))
}

#[cfg(test)]
mod tests {
    use super::to_e164;

    #[test]
    fn canonicalises_provider_forms() {
        assert_eq!(to_e164("16505551234").as_deref(), Some("+16505551234"));
        assert_eq!(
            to_e164("+1 (650) 555-1234").as_deref(),
            Some("+16505551234")
        );
        assert_eq!(to_e164("0049 30 1234567").as_deref(), Some("+49301234567"));
        assert_eq!(to_e164("12345"), None);
        assert_eq!(to_e164("+1650555abcd"), None);
        assert_eq!(to_e164("0650555123"), None);
    }
}
