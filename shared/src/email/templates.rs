//! Email templates (minijinja) as data: a subject, a text and an HTML part per name, locale and
//! version, stored in `email_templates` (see [`store`]), compiled once per version and cached.
//! HTML parts autoescape; a variable the data lacks is an error, never an empty string.
//! One file on purpose (about 500 lines with its tests): compile, check, bounded render and the
//! cache are the life of one template version; storage is in `store`.

pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Templates only Herald's own flows use (they need a link with a fresh token); `POST /v1/emails`
/// may not name them.
pub const INTERNAL_TEMPLATES: [&str; 2] = [VERIFICATION, PASSWORD_RESET];
/// The email-verification template.
pub const VERIFICATION: &str = "verification";
/// The password-reset template.
pub const PASSWORD_RESET: &str = "password_reset";
/// The locale every template has, the end of every fallback chain.
pub const DEFAULT_LOCALE: &str = "en";
/// Variables Herald gives every template itself: `unsubscribe_url` (the one-click link of
/// marketing mail, empty in transactional mail).
pub const PROVIDED_VARIABLES: [&str; 1] = ["unsubscribe_url"];

/// Template instructions one part's render may execute (minijinja's fuel). A loop over 1,000
/// items with a dozen statements each uses about 60,000; at this bound a render stops within about
/// 0.1 s on our machines (docs/templates.md).
pub const FUEL: u64 = 2_000_000;

/// Bytes one rendered part may hold: 1 MiB. Mail clients clip far less (Gmail cuts HTML past
/// 102 KB) and SES refuses messages over 40 MB; the bound keeps one render's memory small.
pub const MAX_PART_BYTES: usize = 1024 * 1024;

/// The three parts, as their file names, which also choose autoescaping (`.html` escapes).
const PARTS: [&str; 3] = ["subject.txt", "body.txt", "body.html"];

/// A template version's sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// Subject line.
    pub subject: String,
    /// Plain-text part.
    pub text: String,
    /// HTML part (autoescaped).
    pub html: String,
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// Plain-text part.
    pub text: String,
    /// HTML part.
    pub html: String,
}

/// Why a template could not be stored or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// No template has that name (in any locale), or not that version.
    #[error("unknown template {0:?}")]
    Unknown(String),
    /// `data` must be a JSON object.
    #[error("template data must be a JSON object")]
    DataNotObject,
    /// A part does not parse.
    #[error("{part}, line {line}: {detail}")]
    Syntax {
        /// `subject`, `text` or `html`.
        part: &'static str,
        /// 1-based line in that part.
        line: usize,
        /// minijinja's description.
        detail: String,
    },
    /// `data` lacks a variable the template uses (or declares required).
    #[error("{}", missing(part, *line, variable))]
    MissingVariable {
        /// The first part that uses it.
        part: &'static str,
        /// 1-based line of its first use there (0 when it cannot be told).
        line: usize,
        /// The variable's name.
        variable: String,
    },
    /// The render took more than [`FUEL`] instructions (a loop too long for an email).
    #[error(
        "{part}: rendering stopped after {FUEL} template instructions (an email template must render in fewer)"
    )]
    OutOfFuel {
        /// `subject`, `text` or `html`.
        part: &'static str,
    },
    /// A part rendered to more than [`MAX_PART_BYTES`].
    #[error("{part}: renders to more than {MAX_PART_BYTES} bytes")]
    TooLarge {
        /// `subject`, `text` or `html`.
        part: &'static str,
    },
    /// Any other rendering failure.
    #[error("{part}, line {line}: {detail}")]
    Render {
        /// `subject`, `text` or `html`.
        part: &'static str,
        /// 1-based line.
        line: usize,
        /// minijinja's description.
        detail: String,
    },
}

fn missing(part: &str, line: usize, variable: &str) -> String {
    if line == 0 {
        format!("{part}: data lacks the variable {variable:?}")
    } else {
        format!("{part}, line {line}: data lacks the variable {variable:?}")
    }
}

fn part_label(file: &str) -> &'static str {
    match file {
        "subject.txt" => "subject",
        "body.txt" => "text",
        _ => "html",
    }
}

/// A template version compiled once: its parts and the variables its data must hold.
#[derive(Debug)]
pub struct Compiled {
    env: Environment<'static>,
    /// Variables the sources use that Herald does not provide, sorted.
    pub required: Vec<String>,
}

impl Compiled {
    /// Adds variables declared required beyond those the sources use (kept sorted, unique).
    pub fn require(&mut self, declared: &[String]) {
        self.required.extend(declared.iter().cloned());
        self.required.sort();
        self.required.dedup();
    }

    /// Parses the three parts; a syntax error names the part and the line.
    pub fn compile(sources: &Sources) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        let texts = [&sources.subject, &sources.text, &sources.html];
        let mut used = BTreeSet::new();
        for (file, text) in PARTS.iter().zip(texts) {
            env.add_template_owned(*file, text.clone())
                .map_err(|e| TemplateError::Syntax {
                    part: part_label(file),
                    line: e.line().unwrap_or(0),
                    detail: e.detail().unwrap_or("syntax error").to_owned(),
                })?;
            let template = env.get_template(file).map_err(|e| TemplateError::Syntax {
                part: part_label(file),
                line: e.line().unwrap_or(0),
                detail: e.to_string(),
            })?;
            used.extend(template.undeclared_variables(false));
        }
        // minijinja's own functions (`range`, `dict`, …) are globals, not data.
        let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
        let required = used
            .into_iter()
            .filter(|v| !PROVIDED_VARIABLES.contains(&v.as_str()) && !globals.contains(v.as_str()))
            .collect();
        Ok(Self { env, required })
    }

    /// The first variable of [`Self::required`] that `data` lacks, with where it is used.
    pub fn check_data(&self, data: &Value) -> Result<(), TemplateError> {
        let fields = data.as_object().ok_or(TemplateError::DataNotObject)?;
        let Some(missing) = self.required.iter().find(|v| !fields.contains_key(*v)) else {
            return Ok(());
        };
        // Render without it to learn the part and line minijinja stops at.
        for file in PARTS {
            if let Ok(template) = self.env.get_template(file)
                && template.undeclared_variables(false).contains(missing)
            {
                let line = template
                    .render_captured_to(data, Capped::default())
                    .err()
                    .and_then(|e| e.line())
                    .unwrap_or(0);
                return Err(TemplateError::MissingVariable {
                    part: part_label(file),
                    line,
                    variable: missing.clone(),
                });
            }
        }
        // Declared required, not used by the sources.
        Err(TemplateError::MissingVariable {
            part: "required_variables",
            line: 0,
            variable: missing.clone(),
        })
    }

    /// Renders the three parts with `data` (a JSON object) and Herald's own variables.
    pub fn render(&self, data: &Value, unsubscribe_url: &str) -> Result<Rendered, TemplateError> {
        self.check_data(data)?;
        let mut fields = data.as_object().cloned().unwrap_or_default();
        fields.insert("unsubscribe_url".into(), unsubscribe_url.into());
        let context = Value::Object(fields);
        let part = |file: &str| -> Result<String, TemplateError> {
            let template = self
                .env
                .get_template(file)
                .map_err(|_| TemplateError::Unknown(file.to_owned()))?;
            let mut out = Capped::default();
            match template.render_captured_to(&context, &mut out) {
                Ok(_) => String::from_utf8(out.bytes).map_err(|e| TemplateError::Render {
                    part: part_label(file),
                    line: 0,
                    detail: e.to_string(),
                }),
                Err(_) if out.overflowed => Err(TemplateError::TooLarge {
                    part: part_label(file),
                }),
                Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
                    Err(TemplateError::OutOfFuel {
                        part: part_label(file),
                    })
                }
                Err(e) => Err(TemplateError::Render {
                    part: part_label(file),
                    line: e.line().unwrap_or(0),
                    detail: e.detail().map_or_else(|| e.to_string(), str::to_owned),
                }),
            }
        };
        Ok(Rendered {
            subject: part("subject.txt")?.trim().to_owned(),
            text: part("body.txt")?,
            html: part("body.html")?,
        })
    }
}

/// Renders on a blocking thread, so that a long render never holds an async worker thread (the
/// request's timeout still answers, other requests go on); bounded by [`FUEL`] and
/// [`MAX_PART_BYTES`].
pub async fn render_blocking(
    compiled: Arc<Compiled>,
    data: Value,
    unsubscribe_url: String,
) -> Result<Rendered, TemplateError> {
    tokio::task::spawn_blocking(move || compiled.render(&data, &unsubscribe_url))
        .await
        .unwrap_or_else(|e| {
            Err(TemplateError::Render {
                part: "html",
                line: 0,
                detail: format!("the render did not finish: {e}"),
            })
        })
}

/// A writer that takes at most [`MAX_PART_BYTES`] and then fails the render.
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_PART_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered part too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The fallback chain of a locale: `de-AT` → `de-AT`, `de`, `en`.
pub fn locale_chain(locale: &str) -> Vec<String> {
    let mut chain = Vec::new();
    let mut current = locale.trim().to_owned();
    while !current.is_empty() {
        if !chain.contains(&current) {
            chain.push(current.clone());
        }
        match current.rfind('-') {
            Some(at) => current.truncate(at),
            None => break,
        }
    }
    if !chain.iter().any(|l| l == DEFAULT_LOCALE) {
        chain.push(DEFAULT_LOCALE.to_owned());
    }
    chain
}

/// Whether `locale` looks like a BCP 47 tag Herald stores (`en`, `de-AT`, `zh-Hant-TW`).
pub fn valid_locale(locale: &str) -> bool {
    let mut parts = locale.split('-');
    let first_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase()));
    let rest: Vec<&str> = parts.collect();
    first_ok
        && rest.len() <= 3
        && rest
            .iter()
            .all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether `name` is a template name Herald stores: lower-case letters, digits and `_`, starting
/// with a letter, at most 100 characters.
pub fn valid_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Compiled template versions, by (name, locale, version). Versions never change once stored, so
/// nothing is ever stale; at most `CAPACITY` are kept (all dropped when it fills).
#[derive(Debug, Default)]
pub struct Cache {
    compiled: Mutex<HashMap<(String, String, i32), Arc<Compiled>>>,
}

const CAPACITY: usize = 512;

impl Cache {
    /// The compiled version, loading and compiling it on first use.
    pub async fn get(
        &self,
        conn: &mut sqlx::PgConnection,
        name: &str,
        locale: &str,
        version: i32,
    ) -> Result<Arc<Compiled>, store::StoreError> {
        let key = (name.to_owned(), locale.to_owned(), version);
        if let Some(hit) = self.lock().get(&key) {
            return Ok(hit.clone());
        }
        let stored = store::load(conn, name, locale, version)
            .await?
            .ok_or_else(|| TemplateError::Unknown(format!("{name} {locale} v{version}")))?;
        let mut compiled = Compiled::compile(&stored.sources)?;
        compiled.require(&stored.required_variables);
        let compiled = Arc::new(compiled);
        let mut map = self.lock();
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// The compiled version if it is cached (no database needed).
    pub fn cached(&self, name: &str, locale: &str, version: i32) -> Option<Arc<Compiled>> {
        self.lock()
            .get(&(name.to_owned(), locale.to_owned(), version))
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, i32), Arc<Compiled>>> {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sources(subject: &str, text: &str, html: &str) -> Sources {
        Sources {
            subject: subject.into(),
            text: text.into(),
            html: html.into(),
        }
    }

    #[test]
    fn a_syntax_error_names_the_part_and_the_line() {
        let err = Compiled::compile(&sources("Hi", "line one\nline two {{ oops", "<p></p>"))
            .expect_err("syntax");
        let TemplateError::Syntax { part, line, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((*part, *line), ("text", 2), "{err}");
    }

    #[test]
    fn required_variables_leave_out_what_herald_provides_and_missing_ones_are_named() {
        let c = Compiled::compile(&sources(
            "Order {{ order_id }}",
            "Total: {{ total }}\n{{ unsubscribe_url }}",
            "<p>{{ total }}</p>",
        ))
        .expect("compiles");
        assert_eq!(c.required, vec!["order_id", "total"]);
        let err = c
            .render(&json!({"order_id": 7}), "")
            .expect_err("missing total");
        assert_eq!(
            err,
            TemplateError::MissingVariable {
                part: "text",
                line: 1,
                variable: "total".into()
            }
        );
        let ok = c
            .render(
                &json!({"order_id": 7, "total": "<5 €>"}),
                "https://u.example/x",
            )
            .expect("renders");
        assert_eq!(ok.subject, "Order 7");
        assert_eq!(ok.html, "<p>&lt;5 €&gt;</p>", "HTML autoescapes");
        assert!(ok.text.ends_with("https://u.example/x"));
    }

    #[test]
    fn locales_fall_back_to_their_language_then_english() {
        assert_eq!(locale_chain("de-AT"), vec!["de-AT", "de", "en"]);
        assert_eq!(locale_chain("en"), vec!["en"]);
        assert_eq!(
            locale_chain("zh-Hant-TW"),
            vec!["zh-Hant-TW", "zh-Hant", "zh", "en"]
        );
        assert!(valid_locale("de-AT") && valid_locale("en") && valid_locale("zh-Hant-TW"));
        assert!(
            !valid_locale("DE")
                && !valid_locale("de_AT")
                && !valid_locale("x")
                && !valid_locale("de-")
        );
        assert!(valid_name("order_confirmation") && !valid_name("Order") && !valid_name("a-b"));
    }

    #[test]
    fn a_long_loop_runs_out_of_fuel_and_a_huge_output_is_refused() {
        let looped = Compiled::compile(&sources(
            "Hi",
            "{% for i in range(6000) %}{% for j in range(6000) %}x{% endfor %}{% endfor %}",
            "<p></p>",
        ))
        .expect("compiles");
        assert!(
            looped.required.is_empty(),
            "range is minijinja's, not data: {:?}",
            looped.required
        );
        let started = std::time::Instant::now();
        let err = looped.render(&json!({}), "").expect_err("out of fuel");
        assert_eq!(err, TemplateError::OutOfFuel { part: "text" });
        eprintln!("stopped after {:?}", started.elapsed());

        // 12 MB from a short loop (few instructions, much output).
        let huge = Compiled::compile(&sources(
            "Hi",
            "",
            "{% for i in range(12) %}{{ blob }}{% endfor %}",
        ))
        .expect("compiles");
        let blob = "x".repeat(1024 * 1024);
        let err = huge
            .render(&json!({"blob": blob}), "")
            .expect_err("too large");
        assert_eq!(err, TemplateError::TooLarge { part: "html" });

        let fine = Compiled::compile(&sources(
            "{{ items | length }} items",
            "{% for i in range(3) %}{{ i }}{% endfor %}",
            "<p>{{ items | join(', ') }}</p>",
        ))
        .expect("compiles");
        assert_eq!(fine.required, vec!["items"]);
        let ok = fine
            .render(&json!({"items": ["a", "b"]}), "")
            .expect("renders");
        assert_eq!((ok.subject.as_str(), ok.text.as_str()), ("2 items", "012"));
    }
}
