//! The new text of a reply: what the customer wrote, without the quoted history their
//! mail client appended and without their signature. Mail clients mark the history
//! in a few well-known ways; the first marker found ends the new text.

/// `text` up to the first quoted-history marker or signature separator, trimmed.
/// Text with no marker is returned whole (trimmed).
pub fn new_text(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| starts_history(&lines, i))
        .unwrap_or(lines.len());
    lines[..end].join("\n").trim().to_string()
}

/// Whether line `i` begins the quoted history or the signature.
fn starts_history(lines: &[&str], i: usize) -> bool {
    let line = lines[i].trim_end();
    let trimmed = line.trim();
    // RFC 3676 signature separator ("-- "); some clients drop the trailing space.
    if line == "-- " || line == "--" {
        return true;
    }
    // Quoted lines (Apple Mail puts even its "On ... wrote:" line in the quote).
    if trimmed.starts_with('>') {
        return true;
    }
    // Outlook and older clients.
    if trimmed.starts_with("-----Original Message-----")
        || trimmed.starts_with("----- Original Message -----")
        || (trimmed.len() >= 20 && trimmed.chars().all(|c| c == '_'))
    {
        return true;
    }
    // Outlook's header block: "From: ..." followed within a few lines by "Sent:" or
    // "Date:" and "Subject:".
    if trimmed.starts_with("From:") {
        let following = &lines[i + 1..lines.len().min(i + 5)];
        let has = |prefix: &str| following.iter().any(|l| l.trim().starts_with(prefix));
        if (has("Sent:") || has("Date:")) && has("Subject:") {
            return true;
        }
    }
    // Gmail and most others: "On <date>, <name> wrote:", which Gmail may wrap over two
    // lines.
    if trimmed.starts_with("On ") {
        if trimmed.ends_with("wrote:") {
            return true;
        }
        if let Some(next) = lines.get(i + 1)
            && next.trim().ends_with("wrote:")
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::new_text;

    #[test]
    fn gmail_history_is_cut_at_its_wrote_line_even_when_wrapped() {
        let text = "Thanks, that works.\n\nOn Mon, 9 Nov 2026 at 10:02, Omnigate Support <support@omnigate.test>\nwrote:\n> Try again\n";
        assert_eq!(new_text(text), "Thanks, that works.");
    }

    #[test]
    fn outlook_history_is_cut_at_its_header_block_and_signature_at_the_separator() {
        let text = "Still broken.\n\nBest,\nAnn\n\n________________________________\nFrom: Support <support@omnigate.test>\nSent: Monday\nSubject: Re: order\n\nold text";
        assert_eq!(new_text(text), "Still broken.\n\nBest,\nAnn");
        let signed = "Hello\n-- \nAnn Smith\nACME";
        assert_eq!(new_text(signed), "Hello");
    }

    #[test]
    fn text_without_history_is_kept_whole() {
        assert_eq!(
            new_text("  Just a question.\nTwo lines.\n"),
            "Just a question.\nTwo lines."
        );
    }
}
