//! `/admin/suppressions`: search, add and remove, the audit trail.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use herald_shared::suppressions::{self, SuppressionType};
use herald_shared::{address, feedback};
use serde::Deserialize;
use serde_json::json;

use super::{HasCsrf, Operator, PageError, checked_form, render, unavailable};
use crate::AppState;
use crate::routes::jobs::given;

/// The suppressions page's search.
#[derive(Debug, Default, Deserialize)]
pub struct SuppressionsQuery {
    /// An address (exact, case-insensitive).
    pub email: Option<String>,
    /// A type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The last id of the previous page.
    pub after: Option<uuid::Uuid>,
}

/// `GET /admin/suppressions`: search, the list (100 a page), add and remove, the audit trail.
pub async fn suppressions_page(
    State(state): State<AppState>,
    Operator(csrf): Operator,
    Query(q): Query<SuppressionsQuery>,
) -> Response {
    let email = given(&q.email);
    let kind = given(&q.kind).and_then(|k| SuppressionType::parse(&k));
    let built = async {
        let mut conn = state.db.acquire().await?;
        let rows = suppressions::list(&mut conn, email.as_deref(), kind, q.after, 100).await?;
        let audit = feedback::recent(&mut conn, true, email.as_deref(), 50).await?;
        Ok::<_, PageError>((rows, audit))
    }
    .await;
    let (rows, audit) = match built {
        Ok(found) => found,
        Err(error) => return unavailable(&error),
    };
    let next = (rows.len() == 100)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    render(
        "suppressions.html",
        json!({
            "title": "Suppressions", "nav": "suppressions", "csrf": csrf,
            "types": SuppressionType::ALL.map(SuppressionType::as_str),
            "q": {"email": email, "type": kind.map(SuppressionType::as_str)},
            "rows": rows, "audit": audit, "next": next,
        }),
    )
}

/// The add and remove forms.
#[derive(Debug, Default, Deserialize)]
pub struct SuppressionForm {
    /// CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// Address.
    #[serde(default)]
    pub email: String,
    /// `manual` or `unsubscribe` (adding only).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Why (required to remove).
    #[serde(default)]
    pub reason: String,
}

impl HasCsrf for SuppressionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /admin/suppressions`: adds (or strengthens) a suppression, recorded in the audit trail.
pub async fn add_suppression(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SuppressionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match checked_form(&state, &headers, form).await {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let input =
        match suppressions::OperatorSuppression::parse(&form.email, &form.kind, Some(&form.reason))
        {
            Ok(input) => input,
            Err(problem) => return bad_input(&problem),
        };
    let (email, kind, reason) = (input.email, input.kind, input.reason);
    let done = async {
        let mut conn = state.db.acquire().await?;
        Ok::<_, PageError>(
            suppressions::add_recorded(&mut conn, &email, kind, reason.as_deref(), "console")
                .await?,
        )
    }
    .await;
    match done {
        Ok(_) => {
            tracing::info!(to = %address::mask(&email), kind = kind.as_str(), "suppression added in the console");
            let query = super::query_string(&[("email", email.as_str().to_owned())]);
            Redirect::to(&format!("/admin/suppressions?{query}")).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

/// `POST /admin/suppressions/remove`: removes a suppression; the reason is required and recorded.
pub async fn remove_suppression(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SuppressionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match checked_form(&state, &headers, form).await {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let reason = match suppressions::operator_reason(Some(&form.reason), true) {
        Ok(reason) => reason,
        Err(problem) => return bad_input(&problem),
    };
    let done = async {
        let mut conn = state.db.acquire().await?;
        Ok::<_, PageError>(
            suppressions::remove_recorded(&mut conn, &form.email, reason.as_deref(), "console")
                .await?,
        )
    }
    .await;
    match done {
        Ok(Some(row)) => {
            tracing::info!(to = %address::mask(&row.email), "suppression removed in the console");
            Redirect::to("/admin/suppressions").into_response()
        }
        Ok(None) => super::message(
            StatusCode::NOT_FOUND,
            "That address is not suppressed.",
            Some(("/admin/suppressions", "Back")),
        ),
        Err(error) => unavailable(&error),
    }
}

/// A refused form, said as a sentence.
fn bad_input(problem: &str) -> Response {
    let mut chars = problem.chars();
    let sentence = chars.next().map_or_else(String::new, |first| {
        format!("{}{}.", first.to_uppercase(), chars.as_str())
    });
    super::message(
        StatusCode::UNPROCESSABLE_ENTITY,
        &sentence,
        Some(("/admin/suppressions", "Back")),
    )
}
