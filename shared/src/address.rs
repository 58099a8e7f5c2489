//! Email address checks, normalisation and masking for logs.

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid email address: {0}")]
pub struct InvalidAddress(pub &'static str);

/// Checks an address the way SES will accept it (a practical subset of RFC 5321) and returns it
/// trimmed. Display names (`Name <a@b>`) are refused: Herald takes bare addresses.
pub fn validate(raw: &str) -> Result<String, InvalidAddress> {
    let addr = raw.trim();
    if addr.is_empty() {
        return Err(InvalidAddress("empty"));
    }
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
            && label.chars().all(|c| c.is_alphanumeric() || c == '-');
        if !ok {
            return Err(InvalidAddress("bad domain"));
        }
    }
    Ok(addr.to_owned())
}

/// The form suppressions are stored and matched in: trimmed, lower case.
pub fn normalize(addr: &str) -> String {
    addr.trim().to_lowercase()
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
