//! The envelope of an email beyond one plain recipient: named recipients (`to`, `cc`, `bcc`), a
//! sender, `reply_to`, custom headers and tags. Checked once here, where a request enters, and
//! carried in the job as an [`Envelope`]; the worker builds the MIME message from it.
//!
//! An email to one address without a name and nothing else keeps an empty envelope, so the
//! common job's payload and path are what they were.
//!
//! Longer than 450 lines on purpose: 170 of them are the tests of these rules, which are one
//! concern (what an envelope may hold).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::address;

/// SES's limit of recipients per message (to, cc and bcc together).
pub const MAX_RECIPIENTS: usize = 50;
/// Tags per email (SES allows 50; ten leave room for Herald's own and keep events small).
pub const MAX_TAGS: usize = 10;
/// Custom headers per email.
pub const MAX_HEADERS: usize = 20;
/// Characters of a display name.
pub const MAX_NAME_CHARS: usize = 200;
/// Characters of a header name (RFC 5322 lines are 78 characters; a name must fit on one).
pub const MAX_HEADER_NAME: usize = 64;
/// Characters of a header value: with its name, it fits RFC 5322's 998-character line.
pub const MAX_HEADER_VALUE: usize = 900;
/// Characters of a tag's name or value (SES's limit).
pub const MAX_TAG_CHARS: usize = 256;

/// Headers Herald writes itself; a caller's `headers` may not name them (any case).
pub const OWNED_HEADERS: [&str; 14] = [
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "return-path",
    "reply-to",
    "sender",
    "content-*",
];

/// A refused part of a request: the field (`cc[1]`, `headers.X-Foo`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct MessageError {
    /// The field as the request names it.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> MessageError {
    MessageError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An address with an optional display name, as stored in the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Mailbox {
    /// The address (validated).
    pub email: String,
    /// The display name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A mailbox as a caller writes it: `"Ada Lovelace <ada@example.com>"`, `"ada@example.com"`, or
/// `{"email": "ada@example.com", "name": "Ada Lovelace"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MailboxInput {
    /// `"Name <address>"` or a bare address.
    Text(String),
    /// An address and a name.
    Object(MailboxObject),
}

/// `{"email", "name"}`: read from a JSON object only (serde would take an array too).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MailboxObject {
    /// The address.
    pub email: String,
    /// The display name.
    pub name: Option<String>,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for MailboxObject {
    type Error = String;
    fn try_from(mut map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let email = match map.remove("email") {
            Some(serde_json::Value::String(e)) => e,
            _ => return Err("a mailbox object needs \"email\" (a string)".into()),
        };
        let name = match map.remove("name") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(n)) => Some(n),
            Some(_) => return Err("a mailbox's \"name\" is a string".into()),
        };
        match map.keys().next() {
            Some(other) => Err(format!("unknown field {other:?} in a mailbox")),
            None => Ok(Self { email, name }),
        }
    }
}

/// One mailbox or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OneOrMany {
    /// Several. First: serde would read a two-element array as a `{"email", "name"}` object.
    Many(Vec<MailboxInput>),
    /// A single mailbox.
    One(MailboxInput),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<MailboxInput> {
        match self {
            Self::One(m) => vec![m],
            Self::Many(v) => v,
        }
    }
}

/// Checks a display name: trimmed, no control characters (a CR/LF would start a new header),
/// bounded; an empty name is no name.
fn check_name(field: &str, name: &str) -> Result<Option<String>, MessageError> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    if name
        .chars()
        .any(|c| c.is_control() || address::is_invisible(c))
    {
        return Err(refuse(
            field,
            "the name contains a line break or another control or invisible character",
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(refuse(
            field,
            format!("the name is longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(Some(name.to_owned()))
}

/// Parses one mailbox; `field` names it in errors.
pub fn parse_mailbox(field: &str, input: &MailboxInput) -> Result<Mailbox, MessageError> {
    let (raw_address, raw_name) = match input {
        MailboxInput::Object(o) => (o.email.as_str(), o.name.as_deref()),
        MailboxInput::Text(text) => {
            let text = text.trim();
            match (text.rfind('<'), text.ends_with('>')) {
                (Some(open), true) => {
                    let name = text[..open].trim();
                    let name = name
                        .strip_prefix('"')
                        .and_then(|n| n.strip_suffix('"'))
                        .unwrap_or(name);
                    (&text[open + 1..text.len() - 1], Some(name))
                }
                _ => (text, None),
            }
        }
    };
    let email = address::validate(raw_address).map_err(|e| refuse(field, e.to_string()))?;
    let name = match raw_name {
        Some(n) => check_name(field, n)?,
        None => None,
    };
    Ok(Mailbox {
        email: email.into_string(),
        name,
    })
}

/// Which senders `from` may name: `EMAIL_FROM_ALLOWED`, addresses and `@domain` entries (the
/// identities verified in SES); by default just `EMAIL_FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedSenders {
    addresses: Vec<String>,
    domains: Vec<String>,
}

impl AllowedSenders {
    /// Parses a comma-separated list; an entry that is neither an address nor `@domain` is an
    /// error naming it.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut out = Self {
            addresses: Vec::new(),
            domains: Vec::new(),
        };
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some(domain) = entry.strip_prefix('@') {
                let probe = format!("x@{domain}");
                let checked = address::validate(&probe)
                    .map_err(|e| format!("{entry:?} is not a domain ({e})"))?;
                let domain = checked.rsplit_once('@').map(|(_, d)| d).unwrap_or(domain);
                out.domains.push(domain.to_ascii_lowercase());
            } else {
                let checked = address::validate(entry)
                    .map_err(|e| format!("{entry:?} is not an address or @domain ({e})"))?;
                out.addresses.push(address::normalize(&checked));
            }
        }
        if out.addresses.is_empty() && out.domains.is_empty() {
            return Err("lists no sender".into());
        }
        Ok(out)
    }

    /// Only this address.
    pub fn only(email_from: &str) -> Self {
        Self {
            addresses: vec![address::normalize(email_from)],
            domains: Vec::new(),
        }
    }

    /// Whether `email` may be the sender.
    pub fn allows(&self, email: &str) -> bool {
        let email = address::normalize(email);
        self.addresses.contains(&email)
            || email
                .rsplit_once('@')
                .is_some_and(|(_, domain)| self.domains.iter().any(|d| d == domain))
    }
}

/// Whether a header name is one Herald writes itself.
pub fn is_owned_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("content-") || OWNED_HEADERS.contains(&lower.as_str())
}

/// Checks custom headers: names of printable ASCII without `:`, values without line breaks or
/// control characters, both bounded; Herald's own headers refused.
pub fn check_headers(
    headers: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, MessageError> {
    if headers.len() > MAX_HEADERS {
        return Err(refuse("headers", format!("at most {MAX_HEADERS} headers")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in headers {
        let field = format!("headers.{name}");
        if name.is_empty()
            || name.len() > MAX_HEADER_NAME
            || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
        {
            return Err(refuse(
                field,
                format!(
                    "a header name is 1 to {MAX_HEADER_NAME} printable ASCII characters, without ':' or spaces"
                ),
            ));
        }
        if is_owned_header(name) {
            return Err(refuse(
                field,
                "Herald writes this header itself (From, To, Cc, Bcc, Reply-To, Subject, Date, \
                 Message-ID, MIME-Version, Content-*, List-Unsubscribe, List-Unsubscribe-Post, \
                 Return-Path, Sender): use the request's own fields",
            ));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(refuse(
                field,
                "the header is given twice (names ignore case)",
            ));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(refuse(
                field,
                "the value contains a line break or another control character",
            ));
        }
        if value.trim().is_empty() || value.chars().count() > MAX_HEADER_VALUE {
            return Err(refuse(
                field,
                format!("the value is 1 to {MAX_HEADER_VALUE} characters"),
            ));
        }
    }
    Ok(headers.clone())
}

fn tag_text_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TAG_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks tags: at most [`MAX_TAGS`], names and values in SES's tag alphabet (ASCII letters,
/// digits, `_` and `-`, 1 to 256); names beginning `herald_` are Herald's own.
pub fn check_tags(
    tags: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, MessageError> {
    if tags.len() > MAX_TAGS {
        return Err(refuse("tags", format!("at most {MAX_TAGS} tags")));
    }
    for (name, value) in tags {
        let field = format!("tags.{name}");
        if !tag_text_ok(name) {
            return Err(refuse(
                field,
                "a tag name is 1 to 256 ASCII letters, digits, '_' or '-'",
            ));
        }
        if name.to_ascii_lowercase().starts_with("herald_") {
            return Err(refuse(
                field,
                "tag names beginning herald_ are Herald's own",
            ));
        }
        if !tag_text_ok(value) {
            return Err(refuse(
                field,
                "a tag value is 1 to 256 ASCII letters, digits, '_' or '-'",
            ));
        }
    }
    Ok(tags.clone())
}

/// What a request gives about the envelope, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct EnvelopeInput {
    /// `to`: one mailbox or several (at least one).
    pub to: Option<OneOrMany>,
    /// `cc`.
    pub cc: Vec<MailboxInput>,
    /// `bcc`.
    pub bcc: Vec<MailboxInput>,
    /// `from`.
    pub from: Option<MailboxInput>,
    /// `reply_to`: one or several.
    pub reply_to: Option<OneOrMany>,
    /// `headers`.
    pub headers: BTreeMap<String, String>,
    /// `tags`.
    pub tags: BTreeMap<String, String>,
    /// `attachments`.
    pub attachments: Vec<super::attachments::AttachmentInput>,
}

/// The checked envelope an email job carries. Empty for one plain recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Every `to` recipient (the job's `to` is the first one not suppressed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Mailbox>,
    /// `cc` recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Mailbox>,
    /// `bcc` recipients: in SES's envelope only, never in a header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Mailbox>,
    /// The sender, when not `EMAIL_FROM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Mailbox>,
    /// `Reply-To`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<Mailbox>,
    /// Custom headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Tags: SES message tags, and in every event and answer about the email.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Attachments, by hash: the bytes are in `email_attachment_blobs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<super::attachments::AttachmentRef>,
}

/// A checked envelope: the first recipient, the envelope, and the attachments' bytes (to be
/// stored before the email is queued).
#[derive(Debug, Clone)]
pub struct Checked {
    /// The first recipient's address (the ledger's `recipient`).
    pub to: String,
    /// The envelope the job carries.
    pub envelope: Envelope,
    /// Each attachment with its bytes.
    pub blobs: Vec<(super::attachments::AttachmentRef, Vec<u8>)>,
}

impl Envelope {
    /// Whether this is the plain case: one recipient without a name, nothing else.
    pub fn is_plain(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the recipients are listed here (else the job's `to` is the one recipient).
    pub fn lists_recipients(&self) -> bool {
        !(self.to.is_empty() && self.cc.is_empty() && self.bcc.is_empty())
    }

    /// Every recipient's address, to then cc then bcc.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(|m| m.email.as_str())
    }

    /// Leaves out the recipients whose normalised address is in `gone`.
    pub fn without(&mut self, gone: &[String]) {
        let keep = |m: &Mailbox| !gone.contains(&address::normalize(&m.email));
        self.to.retain(keep);
        self.cc.retain(keep);
        self.bcc.retain(keep);
    }

    /// The first recipient left (to, else cc, else bcc): the ledger's `recipient`.
    pub fn primary(&self) -> Option<&str> {
        self.addresses().next()
    }
}

/// Checks an envelope: recipients (at least one `to`, at most [`MAX_RECIPIENTS`] in all, an
/// address given twice kept once), the sender against `senders`, `reply_to`, headers and tags.
/// Attachments are checked and decoded. The envelope is empty for one plain recipient.
pub fn check(input: EnvelopeInput, senders: &AllowedSenders) -> Result<Checked, MessageError> {
    let to = input.to.map(OneOrMany::into_vec).unwrap_or_default();
    if to.is_empty() {
        return Err(refuse("to", "give at least one recipient"));
    }
    let total = to.len() + input.cc.len() + input.bcc.len();
    if total > MAX_RECIPIENTS {
        return Err(refuse(
            "to",
            format!(
                "{total} recipients in to, cc and bcc; SES takes at most {MAX_RECIPIENTS} per message"
            ),
        ));
    }
    let plain_single = to.len() == 1
        && input.cc.is_empty()
        && input.bcc.is_empty()
        && matches!(&to[0], MailboxInput::Text(t) if !t.contains('<'));
    let mut seen = std::collections::HashSet::new();
    let mut lists: [Vec<Mailbox>; 3] = Default::default();
    for (i, (name, given)) in [("to", to), ("cc", input.cc), ("bcc", input.bcc)]
        .into_iter()
        .enumerate()
    {
        let indexed = given.len() > 1 || name != "to";
        for (n, m) in given.iter().enumerate() {
            let field = if indexed {
                format!("{name}[{n}]")
            } else {
                name.to_owned()
            };
            let mailbox = parse_mailbox(&field, m)?;
            if seen.insert(address::normalize(&mailbox.email)) {
                lists[i].push(mailbox);
            }
        }
    }
    let [to, cc, bcc] = lists;
    let from = match &input.from {
        None => None,
        Some(m) => {
            let mailbox = parse_mailbox("from", m)?;
            if !senders.allows(&mailbox.email) {
                return Err(refuse(
                    "from",
                    "not an allowed sender: EMAIL_FROM_ALLOWED lists the addresses and @domains \
                     Herald may send from",
                ));
            }
            Some(mailbox)
        }
    };
    let reply_to = input
        .reply_to
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(n, m)| parse_mailbox(&format!("reply_to[{n}]"), m))
        .collect::<Result<Vec<_>, _>>()?;
    if reply_to.len() > MAX_RECIPIENTS {
        return Err(refuse(
            "reply_to",
            format!("at most {MAX_RECIPIENTS} addresses"),
        ));
    }
    let headers = check_headers(&input.headers)?;
    let tags = check_tags(&input.tags)?;
    let blobs = super::attachments::check(&input.attachments)?;
    let primary = to
        .first()
        .map(|m| m.email.clone())
        .ok_or_else(|| refuse("to", "give at least one recipient"))?;
    let mut envelope = Envelope {
        to,
        cc,
        bcc,
        from,
        reply_to,
        headers,
        tags,
        attachments: blobs.iter().map(|(r, _)| r.clone()).collect(),
    };
    if plain_single {
        envelope.to.clear();
    }
    Ok(Checked {
        to: primary,
        envelope,
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> MailboxInput {
        MailboxInput::Text(s.into())
    }

    fn senders() -> AllowedSenders {
        AllowedSenders::parse("noreply@herald.test, @mail.herald.test").expect("list")
    }

    #[test]
    fn names_addresses_and_objects_parse() {
        let m = parse_mailbox("to", &text("  \"Ada Lovelace\" <Ada@Example.com> ")).expect("ok");
        assert_eq!(m.email, "Ada@Example.com");
        assert_eq!(m.name.as_deref(), Some("Ada Lovelace"));
        let m = parse_mailbox("to", &text("Zoë Ångström <zoe@example.com>")).expect("ok");
        assert_eq!(m.name.as_deref(), Some("Zoë Ångström"));
        let m = parse_mailbox(
            "cc[0]",
            &MailboxInput::Object(MailboxObject {
                email: "b@example.com".into(),
                name: Some(" ".into()),
            }),
        )
        .expect("ok");
        assert_eq!(m.name, None);
        let err = parse_mailbox("cc[1]", &text("Eve\r\nBcc: x@evil.test <e@example.com>"))
            .expect_err("crlf");
        assert_eq!(err.field, "cc[1]");
        assert!(parse_mailbox("to", &text("Ada <not-an-address>")).is_err());
    }

    #[test]
    fn an_array_of_two_is_two_recipients_not_an_address_and_a_name() {
        let parsed: OneOrMany =
            serde_json::from_str(r#"["Ada <ada@example.com>", "b@example.com"]"#).expect("json");
        assert_eq!(parsed.into_vec().len(), 2);
        let parsed: OneOrMany =
            serde_json::from_str(r#"{"email": "a@example.com", "name": "A"}"#).expect("json");
        assert!(matches!(parsed, OneOrMany::One(MailboxInput::Object(_))));
        assert!(serde_json::from_str::<MailboxInput>(r#"["a@example.com", "A"]"#).is_err());
        assert!(
            serde_json::from_str::<MailboxInput>(r#"{"email": "a@example.com", "x": 1}"#).is_err()
        );
    }

    #[test]
    fn a_plain_single_recipient_keeps_an_empty_envelope() {
        let Checked {
            to, envelope: env, ..
        } = check(
            EnvelopeInput {
                to: Some(OneOrMany::One(text("ada@example.com"))),
                ..Default::default()
            },
            &senders(),
        )
        .expect("ok");
        assert_eq!(to, "ada@example.com");
        assert!(env.is_plain());
        let env = check(
            EnvelopeInput {
                to: Some(OneOrMany::One(text("Ada <ada@example.com>"))),
                ..Default::default()
            },
            &senders(),
        )
        .expect("ok")
        .envelope;
        assert_eq!(env.to.len(), 1);
    }

    #[test]
    fn recipients_are_bounded_and_deduplicated() {
        let many: Vec<_> = (0..51)
            .map(|i| text(&format!("r{i}@example.com")))
            .collect();
        let err = check(
            EnvelopeInput {
                to: Some(OneOrMany::Many(many)),
                ..Default::default()
            },
            &senders(),
        )
        .expect_err("51");
        assert_eq!(err.field, "to");
        let env = check(
            EnvelopeInput {
                to: Some(OneOrMany::Many(vec![
                    text("a@example.com"),
                    text("b@example.com"),
                ])),
                cc: vec![text("A@EXAMPLE.com")],
                bcc: vec![text("c@example.com")],
                ..Default::default()
            },
            &senders(),
        )
        .expect("ok")
        .envelope;
        assert_eq!(
            env.addresses().collect::<Vec<_>>(),
            ["a@example.com", "b@example.com", "c@example.com"]
        );
        let err = check(
            EnvelopeInput {
                to: Some(OneOrMany::Many(Vec::new())),
                ..Default::default()
            },
            &senders(),
        )
        .expect_err("empty");
        assert_eq!(err.field, "to");
    }

    #[test]
    fn senders_must_be_allowed() {
        let s = senders();
        assert!(s.allows("NoReply@herald.test"));
        assert!(s.allows("billing@mail.herald.test"));
        assert!(!s.allows("billing@herald.test"));
        assert!(!s.allows("x@evil.test"));
        assert!(AllowedSenders::parse("@").is_err());
        assert!(AllowedSenders::parse(" , ").is_err());
        let err = check(
            EnvelopeInput {
                to: Some(OneOrMany::One(text("a@example.com"))),
                from: Some(text("Boss <boss@evil.test>")),
                ..Default::default()
            },
            &s,
        )
        .expect_err("sender");
        assert_eq!(err.field, "from");
        assert!(err.reason.contains("EMAIL_FROM_ALLOWED"), "{err}");
    }

    #[test]
    fn headers_refuse_owned_names_line_breaks_and_bad_names() {
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(check_headers(&one("X-Campaign", "spring")).is_ok());
        for owned in [
            "From",
            "bcc",
            "Content-Type",
            "List-Unsubscribe-Post",
            "Message-ID",
        ] {
            let err = check_headers(&one(owned, "x")).expect_err(owned);
            assert_eq!(err.field, format!("headers.{owned}"));
        }
        assert!(check_headers(&one("X-A", "a\r\nBcc: evil@x.test")).is_err());
        assert!(check_headers(&one("X A", "a")).is_err());
        assert!(check_headers(&one("X-Ä", "a")).is_err());
        assert!(check_headers(&one("X-A", &"a".repeat(MAX_HEADER_VALUE + 1))).is_err());
    }

    #[test]
    fn tags_use_ses_alphabet_and_are_bounded() {
        let tags = |n: usize| -> BTreeMap<String, String> {
            (0..n).map(|i| (format!("t{i}"), "v".to_owned())).collect()
        };
        assert!(check_tags(&tags(10)).is_ok());
        assert_eq!(check_tags(&tags(11)).expect_err("11").field, "tags");
        let bad = BTreeMap::from([("plan".to_owned(), "pro plan".to_owned())]);
        assert_eq!(check_tags(&bad).expect_err("space").field, "tags.plan");
        let own = BTreeMap::from([("herald_job_id".to_owned(), "x".to_owned())]);
        assert!(check_tags(&own).is_err());
    }
}
