//! Attachments: checked where a request enters (base64, size, type, filename, inline id), their
//! bytes stored once per content in `email_attachment_blobs`, outside the queue's rows; a job's
//! payload names them by SHA-256. The owner of `email_attachment_blobs`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::message::MessageError;

/// Decoded bytes of all attachments of one email. SES takes messages up to 40 MB, but the API
/// holds a request whole in memory (as base64, a third larger) and the worker builds the MIME
/// message in memory: 10 MB keeps both bounded per request.
pub const MAX_TOTAL_BYTES: usize = 10 * 1024 * 1024;
/// Attachments per email.
pub const MAX_ATTACHMENTS: usize = 20;
/// Characters of a sanitised filename.
pub const MAX_FILENAME_CHARS: usize = 150;

/// File extensions SES refuses in attachments (its "unsupported attachment types").
pub const REFUSED_EXTENSIONS: &[&str] = &[
    "ade", "adp", "app", "asp", "bas", "bat", "cer", "chm", "cmd", "com", "cpl", "crt", "csh",
    "der", "exe", "fxp", "gadget", "hlp", "hta", "inf", "ins", "isp", "its", "js", "jse", "ksh",
    "lib", "lnk", "mad", "maf", "mag", "mam", "maq", "mar", "mas", "mat", "mau", "mav", "maw",
    "mda", "mdb", "mde", "mdt", "mdw", "mdz", "msc", "msh", "msh1", "msh2", "mshxml", "msh1xml",
    "msh2xml", "msi", "msp", "mst", "ops", "pcd", "pif", "plg", "prf", "prg", "reg", "scf", "scr",
    "sct", "shb", "shs", "sys", "ps1", "ps1xml", "ps2", "ps2xml", "psc1", "psc2", "tmp", "url",
    "vb", "vbe", "vbs", "vps", "vsmacros", "vss", "vst", "vsw", "vws", "xnk",
];

/// An attachment as a request gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttachmentInput {
    /// The file's name as the reader sees it (sanitised: no paths, quotes or control characters).
    pub filename: String,
    /// The bytes, base64 (line breaks allowed).
    pub content: String,
    /// `type/subtype`; by default guessed from the filename's extension.
    pub content_type: Option<String>,
    /// Makes the attachment inline, for `<img src="cid:…">` in the HTML part.
    pub content_id: Option<String>,
}

/// An attachment as a job names it; its bytes are in `email_attachment_blobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttachmentRef {
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// Sanitised filename.
    pub filename: String,
    /// `type/subtype`.
    pub content_type: String,
    /// Inline id (`cid:`), if inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    /// Bytes.
    pub size: usize,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> MessageError {
    MessageError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A filename fit for a header: the last path component, without control characters, quotes,
/// slashes or backslashes, trimmed of dots and spaces, at most [`MAX_FILENAME_CHARS`].
pub fn sanitize_filename(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_control() || crate::address::is_invisible(c) || matches!(c, '"' | '\\' | '/') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    let bounded: String = trimmed.chars().take(MAX_FILENAME_CHARS).collect();
    if bounded.is_empty() {
        "attachment".to_owned()
    } else {
        bounded
    }
}

fn extension(filename: &str) -> Option<String> {
    filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
}

fn guess_type(filename: &str) -> &'static str {
    match extension(filename).as_deref() {
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("txt") => "text/plain",
        Some("csv") => "text/csv",
        Some("ics") => "text/calendar",
        Some("html" | "htm") => "text/html",
        Some("json") => "application/json",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

fn token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
}

fn content_type_ok(t: &str) -> bool {
    t.len() <= 127
        && t.split_once('/')
            .is_some_and(|(a, b)| token_ok(a) && token_ok(b))
}

fn content_id_ok(id: &str) -> bool {
    (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// Checks and decodes attachments: each its reference and its bytes, in order.
pub fn check(inputs: &[AttachmentInput]) -> Result<Vec<(AttachmentRef, Vec<u8>)>, MessageError> {
    use base64::Engine;
    if inputs.len() > MAX_ATTACHMENTS {
        return Err(refuse(
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments"),
        ));
    }
    let mut total = 0usize;
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(inputs.len());
    for (i, a) in inputs.iter().enumerate() {
        let field = format!("attachments[{i}]");
        let filename = sanitize_filename(&a.filename);
        if let Some(ext) = extension(&filename)
            && REFUSED_EXTENSIONS.contains(&ext.as_str())
        {
            return Err(refuse(
                format!("{field}.filename"),
                format!("SES refuses .{ext} attachments"),
            ));
        }
        let content_type = match &a.content_type {
            None => guess_type(&filename).to_owned(),
            Some(t) if content_type_ok(t.trim()) => t.trim().to_ascii_lowercase(),
            Some(_) => {
                return Err(refuse(
                    format!("{field}.content_type"),
                    "a content type is type/subtype (no parameters)",
                ));
            }
        };
        if let Some(id) = &a.content_id
            && (!content_id_ok(id) || !ids.insert(id.clone()))
        {
            return Err(refuse(
                format!("{field}.content_id"),
                "a content id is 1 to 100 letters, digits, '.', '_', '@' or '-', unique in the email",
            ));
        }
        // Clients wrap base64 at 76 characters (MIME style): line breaks and spaces are allowed.
        let compact: Vec<u8> = a
            .content
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if compact.len() / 4 * 3 > MAX_TOTAL_BYTES.saturating_sub(total) + 3 {
            return Err(refuse(
                "attachments",
                format!(
                    "at most {} MB in all, decoded",
                    MAX_TOTAL_BYTES / 1024 / 1024
                ),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&compact)
            .map_err(|_| refuse(format!("{field}.content"), "not valid base64"))?;
        total += bytes.len();
        if total > MAX_TOTAL_BYTES {
            return Err(refuse(
                "attachments",
                format!(
                    "at most {} MB in all, decoded",
                    MAX_TOTAL_BYTES / 1024 / 1024
                ),
            ));
        }
        let reference = AttachmentRef {
            sha256: hex::encode(Sha256::digest(&bytes)),
            filename,
            content_type,
            content_id: a.content_id.clone(),
            size: bytes.len(),
        };
        out.push((reference, bytes));
    }
    Ok(out)
}

/// Checks that every `cid:` the HTML part refers to is an inline attachment's content id.
pub fn check_cid_references(html: &str, attachments: &[AttachmentRef]) -> Result<(), MessageError> {
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("cid:") {
        let start = from + at + 4;
        let id: String = html[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "._@-".contains(*c))
            .collect();
        from = start;
        if id.is_empty() {
            continue;
        }
        if !attachments
            .iter()
            .any(|a| a.content_id.as_deref() == Some(id.as_str()))
        {
            return Err(refuse(
                "html",
                format!("cid:{id} names no inline attachment (give one with content_id {id:?})"),
            ));
        }
    }
    Ok(())
}

/// Stores the bytes of attachments once per content (an upload of the same bytes marks them used
/// again). Runs before the email is queued: bytes whose email never got queued are pruned with
/// the others.
pub async fn store(
    conn: &mut PgConnection,
    attachments: &[(AttachmentRef, Vec<u8>)],
) -> Result<(), sqlx::Error> {
    if attachments.is_empty() {
        return Ok(());
    }
    let mut hashes = Vec::with_capacity(attachments.len());
    let mut contents = Vec::with_capacity(attachments.len());
    let mut sizes = Vec::with_capacity(attachments.len());
    let mut seen = HashSet::new();
    for (r, bytes) in attachments {
        if !seen.insert(r.sha256.clone()) {
            continue;
        }
        hashes.push(hex::decode(&r.sha256).map_err(|e| sqlx::Error::Decode(Box::new(e)))?);
        contents.push(bytes.clone());
        sizes.push(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
    }
    sqlx::query!(
        "INSERT INTO email_attachment_blobs (sha256, content, size)
         SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int[])
         ON CONFLICT (sha256) DO UPDATE SET last_used_at = now()",
        &hashes,
        &contents,
        &sizes
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The bytes of each attachment, in order; `Err` names the first one whose bytes are gone.
pub async fn load(
    conn: &mut PgConnection,
    attachments: &[AttachmentRef],
) -> Result<Result<Vec<Vec<u8>>, String>, sqlx::Error> {
    let mut hashes = Vec::with_capacity(attachments.len());
    for a in attachments {
        match hex::decode(&a.sha256) {
            Ok(h) => hashes.push(h),
            Err(_) => {
                return Ok(Err(format!(
                    "attachment {:?} has no valid hash",
                    a.filename
                )));
            }
        }
    }
    let rows = sqlx::query!(
        "SELECT sha256, content FROM email_attachment_blobs WHERE sha256 = ANY($1)",
        &hashes
    )
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(attachments.len());
    for (a, hash) in attachments.iter().zip(&hashes) {
        match rows.iter().find(|r| &r.sha256 == hash) {
            Some(r) => out.push(r.content.clone()),
            None => {
                return Ok(Err(format!(
                    "the bytes of attachment {:?} are gone (retention)",
                    a.filename
                )));
            }
        }
    }
    Ok(Ok(out))
}

/// Deletes up to `limit` blobs no email has used since `before` (retention); returns how many.
pub async fn prune(
    pool: &sqlx::PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "WITH doomed AS (SELECT id FROM email_attachment_blobs WHERE last_used_at < $1
                         ORDER BY last_used_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         DELETE FROM email_attachment_blobs b USING doomed WHERE b.id = doomed.id",
        before,
        limit
    )
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn input(name: &str, bytes: &[u8]) -> AttachmentInput {
        AttachmentInput {
            filename: name.into(),
            content: base64::engine::general_purpose::STANDARD.encode(bytes),
            content_type: None,
            content_id: None,
        }
    }

    #[test]
    fn filenames_lose_paths_quotes_and_control_characters() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(
            sanitize_filename("C:\\Users\\a\\invoice.pdf"),
            "invoice.pdf"
        );
        assert_eq!(sanitize_filename("in\"voice\r\n.pdf"), "in_voice__.pdf");
        assert_eq!(sanitize_filename(" .. "), "attachment");
        assert_eq!(
            sanitize_filename(&"a".repeat(400)).len(),
            MAX_FILENAME_CHARS
        );
    }

    #[test]
    fn bytes_types_ids_and_sizes_are_checked() {
        let ok = check(&[input("invoice.pdf", b"%PDF-1.4")]).expect("ok");
        assert_eq!(ok[0].0.content_type, "application/pdf");
        assert_eq!(ok[0].0.size, 8);
        assert_eq!(ok[0].1, b"%PDF-1.4");
        let err = check(&[input("setup.EXE", b"MZ")]).expect_err("exe");
        assert_eq!(err.field, "attachments[0].filename");
        let mut bad = input("a.txt", b"x");
        bad.content = "not base64!".into();
        assert_eq!(
            check(&[bad]).expect_err("b64").field,
            "attachments[0].content"
        );
        let mut wrapped = input("a.txt", &[7u8; 200]);
        wrapped.content = wrapped
            .content
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(check(&[wrapped]).expect("wrapped")[0].1.len(), 200);
        let big = input("big.bin", &vec![0u8; MAX_TOTAL_BYTES + 1]);
        assert_eq!(check(&[big]).expect_err("big").field, "attachments");
        let mut typed = input("a.bin", b"x");
        typed.content_type = Some("text/plain; charset=utf-8".into());
        assert_eq!(
            check(&[typed]).expect_err("params").field,
            "attachments[0].content_type"
        );
        let mut a = input("a.png", b"x");
        a.content_id = Some("logo".into());
        let mut b = input("b.png", b"y");
        b.content_id = Some("logo".into());
        assert_eq!(
            check(&[a, b]).expect_err("dup").field,
            "attachments[1].content_id"
        );
    }

    #[test]
    fn every_cid_needs_an_inline_part() {
        let mut a = input("logo.png", b"x");
        a.content_id = Some("logo".into());
        let refs: Vec<_> = check(&[a])
            .expect("ok")
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert!(check_cid_references("<img src=\"cid:logo\">", &refs).is_ok());
        let err = check_cid_references("<img src=\"CID:banner\">", &refs).expect_err("missing");
        assert_eq!(err.field, "html");
    }
}
