//! Email templates (minijinja), embedded in the binary: a subject, a text and an HTML part each.

use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Templates callers may name in `POST /v1/emails`.
pub const PUBLIC_TEMPLATES: [&str; 2] = ["welcome", "notification"];
/// Templates only Herald's own flows use (they need a link with a fresh token).
pub const VERIFICATION: &str = "verification";
/// The password-reset template.
pub const PASSWORD_RESET: &str = "password_reset";

macro_rules! embed {
    ($env:ident, $($name:literal),+) => {$(
        $env.add_template(concat!($name, "/subject.txt"), include_str!(concat!("../../templates/", $name, "/subject.txt")))
            .expect("embedded template parses");
        $env.add_template(concat!($name, "/body.txt"), include_str!(concat!("../../templates/", $name, "/body.txt")))
            .expect("embedded template parses");
        $env.add_template(concat!($name, "/body.html"), include_str!(concat!("../../templates/", $name, "/body.html")))
            .expect("embedded template parses");
    )+};
}

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // A missing variable is the caller's error, not an empty string in someone's inbox.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        embed!(
            env,
            "welcome",
            "notification",
            "verification",
            "password_reset"
        );
        env
    })
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

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// No template has that name.
    #[error("unknown template {0:?}")]
    Unknown(String),
    /// `data` must be a JSON object.
    #[error("template data must be a JSON object")]
    DataNotObject,
    /// The template uses a variable that `data` lacks.
    #[error("template {template:?} needs a variable that data lacks: {detail}")]
    MissingVariable {
        /// Template name.
        template: String,
        /// minijinja's description (names the variable's use).
        detail: String,
    },
    /// Any other rendering failure.
    #[error("template {template:?} failed to render: {detail}")]
    Render {
        /// Template name.
        template: String,
        /// minijinja's description.
        detail: String,
    },
}

/// True for every template name Herald knows, public or internal.
pub fn exists(name: &str) -> bool {
    environment()
        .get_template(&format!("{name}/subject.txt"))
        .is_ok()
}

/// Renders the three parts of a template with `data` (a JSON object).
pub fn render(name: &str, data: &Value) -> Result<Rendered, TemplateError> {
    if !exists(name) {
        return Err(TemplateError::Unknown(name.to_owned()));
    }
    if !data.is_object() {
        return Err(TemplateError::DataNotObject);
    }
    let env = environment();
    let part = |file: &str| -> Result<String, TemplateError> {
        let template = env
            .get_template(&format!("{name}/{file}"))
            .map_err(|_| TemplateError::Unknown(name.to_owned()))?;
        template.render(data).map_err(|e| {
            let detail = e.to_string();
            if e.kind() == minijinja::ErrorKind::UndefinedError {
                TemplateError::MissingVariable {
                    template: name.to_owned(),
                    detail,
                }
            } else {
                TemplateError::Render {
                    template: name.to_owned(),
                    detail,
                }
            }
        })
    };
    Ok(Rendered {
        subject: part("subject.txt")?.trim().to_owned(),
        text: part("body.txt")?,
        html: part("body.html")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_template_renders_with_its_variables() {
        let data =
            json!({"name": "Ada", "title": "T", "message": "M", "link": "https://x/y?token=abc"});
        for name in ["welcome", "notification", VERIFICATION, PASSWORD_RESET] {
            let r = render(name, &data).expect(name);
            assert!(
                !r.subject.is_empty() && !r.text.is_empty() && r.html.contains('<'),
                "{name}"
            );
        }
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let r = render(
            "notification",
            &json!({"title": "Hi", "message": "<b>&</b>"}),
        )
        .expect("render");
        assert!(r.html.contains("&lt;b&gt;&amp;&lt;"), "{}", r.html);
        assert!(!r.html.contains("<b>"), "{}", r.html);
        assert!(r.text.contains("<b>&</b>"));
    }

    #[test]
    fn a_missing_variable_and_an_unknown_template_are_errors() {
        let err = render("welcome", &json!({})).expect_err("missing name");
        assert!(
            matches!(err, TemplateError::MissingVariable { .. }),
            "{err}"
        );
        assert_eq!(
            render("nope", &json!({})),
            Err(TemplateError::Unknown("nope".into()))
        );
        assert_eq!(
            render("welcome", &json!([1])),
            Err(TemplateError::DataNotObject)
        );
    }
}
