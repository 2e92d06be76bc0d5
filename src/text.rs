//! One rule for free text that people type and other people read (store
//! names, token labels, reservation fields): no control characters, which
//! would add fake lines to `bizcall store list` or a log, and no
//! bidirectional overrides or isolates, which reorder what a tablet shows
//! (U+202E turns a car number around).

/// The first character `value` may not hold, described for an error
/// message; `None` when it is fine. `multiline` allows line feeds and
/// tabs (a memo).
pub fn refused_char(value: &str, multiline: bool) -> Option<String> {
    let bad = value.chars().find(|&c| {
        let layout = c == '\n' || c == '\t' || (multiline && c == '\r');
        (c.is_control() && !(multiline && layout))
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
            || c == '\u{200E}'
            || c == '\u{200F}'
            || c == '\u{061C}'
    })?;
    Some(format!(
        "must not contain control or text-direction characters (found U+{:04X})",
        u32::from(bad)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_direction_overrides_are_refused() {
        assert_eq!(refused_char("강남 세차 Gangnam-1", false), None);
        assert_eq!(refused_char("line one\nline two\ttab", true), None);
        for bad in [
            "a\nb",
            "a\rb",
            "a\u{0}b",
            "a\u{1b}[31mb",
            "a\u{7f}",
            "a\u{85}b",
            "12가\u{202E}3456",
            "\u{2066}x",
            "\u{2069}",
            "\u{200F}x",
            "\u{061C}",
        ] {
            assert!(refused_char(bad, false).is_some(), "{bad:?}");
        }
        assert!(refused_char("memo\u{202E}", true).is_some());
        assert!(refused_char("memo\u{0}", true).is_some());
        assert_eq!(
            refused_char("x\u{202E}", false).as_deref(),
            Some("must not contain control or text-direction characters (found U+202E)")
        );
    }
}
