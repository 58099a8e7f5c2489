//! Email address checks, normalisation and masking for logs.

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid email address: {0}")]
pub struct InvalidAddress(pub &'static str);

/// Invisible and direction-changing characters (Unicode format characters and friends): they make
/// two different addresses look the same, or one look like another.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E007F}')
}

/// An address that passed [`validate`]: checked once where it enters, then carried as this type
/// (its text is the validated form). No `Display`, so that it is not logged by accident: log
/// [`mask`] of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::ops::Deref for EmailAddress {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EmailAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for EmailAddress {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Checks an address the way SES will accept it (a practical subset of RFC 5321) and returns it
/// trimmed, its domain in ASCII (a Unicode domain becomes Punycode, as SES and DNS want it).
/// Display names (`Name <a@b>`), invisible characters and non-ASCII local parts (which need
/// SMTPUTF8, not supported) are refused. [`normalize`] then matches SQL's `lower(btrim(..))`.
pub fn validate(raw: &str) -> Result<EmailAddress, InvalidAddress> {
    let addr = raw.trim();
    if addr.is_empty() {
        return Err(InvalidAddress("empty"));
    }
    if addr.chars().any(is_invisible) {
        return Err(InvalidAddress(
            "contains an invisible or direction-changing character",
        ));
    }
    let (local, domain) = addr.rsplit_once('@').ok_or(InvalidAddress("no @"))?;
    if !local.is_ascii() {
        return Err(InvalidAddress(
            "the local part is not ASCII (internationalised mailboxes need SMTPUTF8)",
        ));
    }
    let ascii_domain;
    let addr = if domain.is_ascii() {
        addr
    } else {
        let converted = idna::domain_to_ascii(domain)
            .map_err(|_| InvalidAddress("the domain is not a valid internationalised name"))?;
        ascii_domain = format!("{local}@{converted}");
        ascii_domain.as_str()
    };
    if addr.len() > 254 {
        return Err(InvalidAddress("longer than 254 characters"));
    }
    if addr
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"".contains(c))
    {
        return Err(InvalidAddress("contains a character addresses cannot hold"));
    }
    let (local, domain) = addr.rsplit_once('@').ok_or(InvalidAddress("no @"))?;
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return Err(InvalidAddress("bad local part"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(InvalidAddress("bad dots in the local part"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(InvalidAddress("the domain needs a dot"));
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(InvalidAddress("bad domain"));
        }
    }
    Ok(EmailAddress(addr.to_owned()))
}

/// The form suppressions are stored and matched in: trimmed, lower case.
pub fn normalize(addr: &str) -> String {
    addr.trim().to_lowercase()
}

/// Masks every address in a text (an error message from a provider, say), word by word.
pub fn mask_all(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let trimmed = word.trim_matches(|c: char| "<>()[]\"',;:.".contains(c));
        if trimmed.contains('@') {
            let start = word.find(trimmed).unwrap_or(0);
            out.push_str(&word[..start]);
            out.push_str(&mask(trimmed));
            out.push_str(&word[start + trimmed.len()..]);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `j***@example.com`: enough to tell messages apart in logs, not enough to identify someone.
pub fn mask(addr: &str) -> String {
    match addr.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_tricks_are_refused_and_unicode_domains_become_punycode() {
        for bad in [
            "ada\u{200B}@example.com",
            "ada@exa\u{200B}mple.com",
            "\u{202E}moc.elpmaxe@ada",
            "ada@example.com\u{FEFF}x",
            "ad\u{00AD}a@example.com",
            "adä@example.com",
            "ада@example.com",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate("ada@Bücher.example").as_deref(),
            Ok("ada@xn--bcher-kva.example")
        );
        assert_eq!(
            validate("bo@пример.испытание").as_deref(),
            Ok("bo@xn--e1afmkfd.xn--80akhbyknj4f")
        );
        // ASCII domains are kept as given (case included); normalize lower-cases later.
        assert_eq!(
            validate("Ada@Example.COM").as_deref(),
            Ok("Ada@Example.COM")
        );
    }

    #[test]
    fn addresses_in_a_text_are_masked() {
        assert_eq!(
            mask_all(
                "MessageRejected: Email address is not verified. The following identities failed the check in region US-EAST-1: ada@example.com, <bo@x.org>."
            ),
            "MessageRejected: Email address is not verified. The following identities failed the check in region US-EAST-1: a***@example.com, <b***@x.org>."
        );
        assert_eq!(mask_all("no address here"), "no address here");
    }

    #[test]
    fn ordinary_addresses_pass_and_are_trimmed() {
        assert_eq!(
            validate(" Ada.L+news@Example.co.uk ").as_deref(),
            Ok("Ada.L+news@Example.co.uk")
        );
    }

    #[test]
    fn broken_addresses_are_refused() {
        for bad in [
            "",
            "plain",
            "a@b",
            "@x.com",
            "a@.com",
            "a b@x.com",
            "a@x..com",
            "A <a@x.com>",
            "a@-x.com",
            ".a@x.com",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn masking_keeps_the_domain_and_one_letter() {
        assert_eq!(mask("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask("nonsense"), "***");
        assert_eq!(normalize(" Gone@X.COM "), "gone@x.com");
    }
}
