//! `GET /admin/feedback`: SES feedback as recorded.

use axum::extract::{Query, State};
use axum::response::Response;
use herald_shared::feedback;
use serde_json::json;

use super::{Operator, PageError, Refresh, answer, refresh_of};
use crate::AppState;

/// `GET /admin/feedback`: the newest feedback events, refused messages per reason, queue depths.
pub async fn feedback_page(
    State(state): State<AppState>,
    Operator(csrf): Operator,
    Query(refresh): Query<Refresh>,
) -> Response {
    let built = async {
        let mut conn = state.db.acquire().await?;
        Ok::<_, PageError>((
            feedback::recent(&mut conn, false, None, 100).await?,
            feedback::rejection_counts(&mut conn).await?,
            feedback::queue_depths(&mut conn).await?,
        ))
    }
    .await;
    answer(
        "feedback.html",
        built.map(|(events, rejections, depths)| {
            json!({
                "title": "Feedback", "nav": "feedback", "csrf": csrf, "refresh": refresh_of(&refresh),
                "events": events, "rejections": rejections, "depths": depths,
            })
        }),
    )
}
