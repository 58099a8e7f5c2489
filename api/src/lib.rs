//! Herald's HTTP API: enqueue emails, read and steer jobs, trigger account emails.
//!
//! Longer than 450 lines on purpose: the router, the OpenAPI document and the middleware every
//! route passes through (auth, limits, timeout) are read together, in the order a request meets them.

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod limiter;
pub mod pages;
pub mod routes;
pub mod sessions;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

pub use config::ApiConfig;
use error::ApiError;
use routes::{
    admin, compliance, console, emails, health, jobs, schedules, suppressions, templates, users,
};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<ApiConfig>,
    /// The database pool, with bounded acquisition (see [`herald_shared::db::Db`]).
    pub db: herald_shared::db::Db,
    /// Metrics (the database-backed gauges; the API updates no counters of its own).
    pub metrics: Arc<herald_shared::metrics::Metrics>,
    /// The public listener's per-client budget (`PUBLIC_RATE_LIMIT_PER_MINUTE`).
    pub public_limiter: Arc<routes::unsubscribe::RateLimiter>,
    /// Failed console sign-ins, per client and overall.
    pub sign_in_limits: Arc<admin::SignInLimits>,
    /// Compiled template versions.
    pub templates: Arc<herald_shared::email::templates::Cache>,
    /// `POST /v1/emails`'s grouped enqueue.
    pub enqueue: herald_shared::email::group::EnqueueGroups,
}

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald API", description = "Enqueue emails and follow their jobs."),
    paths(
        health::health, health::ready,
        emails::send_email, routes::batch::send_batch,
        routes::email_view::get_email, routes::email_view::list_emails,
        routes::email_view::update_email, routes::email_view::cancel_email,
        jobs::get_job, jobs::list_jobs, jobs::retry_job, jobs::cancel_job,
        users::verification_email, users::password_reset,
        suppressions::list, suppressions::get, suppressions::add, suppressions::remove,
        schedules::list,
        compliance::get, compliance::resume,
        templates::put, templates::list, templates::get, templates::version, templates::delete,
        templates::preview,
        routes::webhooks::create, routes::webhooks::list, routes::webhooks::get,
        routes::webhooks::update, routes::webhooks::delete, routes::webhooks::deliveries,
        routes::webhooks::redeliver,
    ),
    modifiers(&BearerAuth, &CommonResponses)
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Responses every route of a kind can give, documented once: a JSON body can be malformed (400),
/// too large (413) or not JSON (415); a route that reads the database can find it unavailable
/// (503 `database_unavailable`, with Retry-After).
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                if op.request_body.is_some() {
                    for (code, text) in [
                        ("400", "Malformed JSON"),
                        (
                            "413",
                            "Body over the limit (256 KiB; 16 MiB on POST /v1/emails)",
                        ),
                        ("415", "Not JSON (Content-Type must be application/json)"),
                    ] {
                        responses
                            .entry(code.to_owned())
                            .or_insert_with(|| error(text).into());
                    }
                }
                // Authenticated routes read the database; /health does not and /ready has its own.
                if op.security.is_some() {
                    responses
                        .entry("401".to_owned())
                        .or_insert_with(|| error("No valid bearer token (`unauthorized`)").into());
                    responses.entry("403".to_owned()).or_insert_with(|| {
                        error("The token's scope does not cover this route (`forbidden`)").into()
                    });
                    responses.entry("503".to_owned()).or_insert_with(|| {
                        error("Database unavailable (`database_unavailable`); retry after Retry-After")
                            .into()
                    });
                }
            }
        }
    }
}

/// The OpenAPI document: every route, and (OpenAPI 3.1 `webhooks`, which utoipa does not model)
/// every event Herald POSTs to a registered endpoint, each with its headers and an example body.
pub fn openapi_document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["webhooks"] = webhooks_section();
    tighten(&mut doc["components"]["schemas"]);
    tighten_queries(&mut doc["paths"]);
    doc
}

/// The query parameters' values as the routes check them (each answers 422 otherwise): the
/// names of statuses, states, queues, categories and suppression types as enums, page sizes
/// with their bounds. The derives leave them plain strings and integers.
fn tighten_queries(paths: &mut serde_json::Value) {
    use herald_shared::email::{Category, ledger::Status};
    use herald_shared::jobs::{JobStatus, Queue};
    use herald_shared::suppressions::SuppressionType;
    use serde_json::{Value, json};
    let names = |list: Vec<&str>| json!({"type": "string", "enum": list});
    let categories = names(Category::ALL.map(Category::as_str).to_vec());
    let rules: [(&str, &str, Value); 8] = [
        (
            "/v1/emails",
            "status",
            names(Status::ALL.map(Status::as_str).to_vec()),
        ),
        ("/v1/emails", "category", categories.clone()),
        (
            "/v1/jobs",
            "state",
            names(JobStatus::ALL.map(JobStatus::as_str).to_vec()),
        ),
        (
            "/v1/jobs",
            "queue",
            names(Queue::ALL.map(Queue::name).to_vec()),
        ),
        ("/v1/jobs", "category", categories),
        (
            "/v1/suppressions",
            "type",
            names(SuppressionType::ALL.map(SuppressionType::as_str).to_vec()),
        ),
        (
            "/v1/suppressions",
            "limit",
            json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": 500}),
        ),
        (
            "/v1/webhooks/{id}/deliveries",
            "limit",
            json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": 200}),
        ),
    ];
    for (path, name, schema) in rules {
        let Some(params) = paths[path]["get"]["parameters"].as_array_mut() else {
            continue;
        };
        for p in params
            .iter_mut()
            .filter(|p| p["in"] == "query" && p["name"] == name)
        {
            p["schema"] = schema.clone();
        }
    }
}

/// An address as a pattern: `local@domain`, or `Name <local@domain>`. The API checks more (the
/// domain's form, lengths); a string the pattern refuses, the API refuses too.
const ADDRESS_PATTERN: &str = r"^\s*([^\s@<>]+@[^\s@<>]+|[^<>]*<\s*[^\s@<>]+@[^\s@<>]+\s*>)\s*$";

/// What the derives cannot say, said in the schemas: an email is a template (with data and a
/// locale) or a subject with a non-empty text or HTML part, never both (`SendEmailRequest` is
/// `oneOf` two complete objects, `TemplateEmail` and `RawEmail`, which client generators turn into
/// two types); addresses have an `@`; tags and headers are bounded. `scripts/client_check.py`
/// checks, for a table of invalid bodies, that the schema refuses what the API refuses.
fn tighten(schemas: &mut serde_json::Value) {
    use serde_json::{Value, json};
    if let Some(variants) = schemas["MailboxInput"]["oneOf"].as_array_mut() {
        for v in variants.iter_mut().filter(|v| v["type"] == "string") {
            v["pattern"] = json!(ADDRESS_PATTERN);
        }
    }
    schemas["MailboxObject"]["properties"]["email"]["pattern"] = json!(ADDRESS_PATTERN);
    // An operator adds one of two types (the route checks it); the others come from SES feedback.
    let add_type = &mut schemas["AddSuppression"]["properties"]["type"];
    if add_type.is_object() {
        add_type["enum"] = json!(["manual", "unsubscribe"]);
    }
    let request = schemas["SendEmailRequest"].take();
    let Some(mut props) = request["properties"].as_object().cloned() else {
        schemas["SendEmailRequest"] = request;
        return;
    };
    for (key, most) in [("tags", 10), ("headers", 20)] {
        if let Some(p) = props.get_mut(key) {
            p["maxProperties"] = json!(most);
        }
    }
    let absent = json!({"type": "null", "description": "Not with this kind of email."});
    let required_text = |key: &str| {
        let description = props.get(key).map(|p| p["description"].clone());
        json!({"type": "string", "minLength": 1, "description": description})
    };
    let variant = |own: &[(&str, Value)], others: &[&str], required: &str, description: &str| {
        let mut p = props.clone();
        for (k, v) in own {
            p.insert((*k).to_owned(), v.clone());
        }
        for k in others {
            p.insert((*k).to_owned(), absent.clone());
        }
        json!({"type": "object", "description": description, "required": ["to", required],
               "properties": p, "additionalProperties": false})
    };
    schemas["TemplateEmail"] = variant(
        &[("template", required_text("template"))],
        &["subject", "text", "html"],
        "template",
        "An email from a stored template, rendered with `data` in `locale`.",
    );
    let mut raw = variant(
        &[("subject", required_text("subject"))],
        &["template", "data", "locale"],
        "subject",
        "An email with a subject and a text part, an HTML part or both (at least one not empty).",
    );
    let empty = json!({"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}]});
    raw["not"] = json!({"properties": {"text": empty, "html": empty}});
    schemas["RawEmail"] = raw;
    schemas["SendEmailRequest"] = json!({
        "description": request["description"],
        "oneOf": [{"$ref": "#/components/schemas/TemplateEmail"},
                  {"$ref": "#/components/schemas/RawEmail"}],
    });
}

fn webhooks_section() -> serde_json::Value {
    use herald_shared::webhooks::EventType;
    use serde_json::json;
    let header = |name: &str, description: &str| {
        json!({"name": name, "in": "header", "required": true, "description": description,
               "schema": {"type": "string"}})
    };
    let parameters = json!([
        header(
            "webhook-id",
            "`msg_` + the event's id: the same on every retry and every endpoint; dedupe on it"
        ),
        header(
            "webhook-timestamp",
            "Unix seconds of this attempt; refuse a stale one"
        ),
        header(
            "webhook-signature",
            "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, keyed by the base64 after `whsec_`; two, space-separated, during a secret rotation"
        ),
    ]);
    let mut section = serde_json::Map::new();
    for event in EventType::ALL {
        let example = event.example_body();
        let event = event.as_str();
        section.insert(
            event.to_owned(),
            json!({"post": {
                "summary": event,
                "description": "Signed per Standard Webhooks (docs/webhooks.md). 2xx: delivered. Timeouts, 408, 409, 429 and 5xx: retried with backoff for about three days. Any other 4xx: failed at once.",
                "parameters": parameters,
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["type", "timestamp", "data"],
                               "properties": {"type": {"type": "string", "const": event},
                                              "timestamp": {"type": "string", "format": "date-time"},
                                              "data": {"type": "object"}}},
                    "example": example,
                }}},
                "responses": {
                    "2XX": {"description": "Delivered"},
                    "410": {"description": "Refused: failed at once, not retried"},
                    "5XX": {"description": "Retried with backoff"},
                },
            }}),
        );
    }
    serde_json::Value::Object(section)
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(openapi_document())
}

/// Prometheus metrics (unauthenticated, like most scrape targets; keep the port internal).
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let format = herald_shared::metrics::Format::negotiate(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    match state.metrics.render_as(state.db.pool(), format).await {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot read the database for /metrics");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

/// The router with every route, auth on `/v1`, and the body limits (256 KiB; 16 MiB for
/// `POST /v1/emails`, which carries attachments).
pub fn router(state: AppState) -> Router {
    // Read scope: emails and jobs, read only.
    let read = Router::new()
        .route("/v1/emails", get(routes::email_view::list_emails))
        .route("/v1/emails/{id}", get(routes::email_view::get_email))
        .route("/v1/jobs", get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_read,
        ));
    // Send scope: what an application server needs to send mail and follow it.
    let send = Router::new()
        .route(
            "/v1/emails",
            post(emails::send_email)
                .layer(DefaultBodyLimit::max(extract::EMAIL_BODY_LIMIT))
                .layer(axum::middleware::from_fn(large_body_gate)),
        )
        .route("/v1/emails/batch", post(routes::batch::send_batch))
        .route(
            "/v1/emails/{id}",
            axum::routing::patch(routes::email_view::update_email),
        )
        .route(
            "/v1/emails/{id}/cancel",
            post(routes::email_view::cancel_email),
        )
        .route(
            "/v1/users/{user_id}/verification-email",
            post(users::verification_email),
        )
        .route("/v1/password-resets", post(users::password_reset))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_send,
        ));
    let admin = Router::new()
        .route("/v1/jobs/{id}/retry", post(jobs::retry_job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/schedules", get(schedules::list))
        .route("/v1/compliance", get(compliance::get))
        .route("/v1/compliance/resume", post(compliance::resume))
        .route(
            "/v1/suppressions",
            get(suppressions::list).post(suppressions::add),
        )
        .route(
            "/v1/suppressions/{email}",
            get(suppressions::get).delete(suppressions::remove),
        )
        .route("/v1/templates", get(templates::list))
        .route(
            "/v1/templates/{name}",
            get(templates::get)
                .put(templates::put)
                .delete(templates::delete),
        )
        .route(
            "/v1/templates/{name}/versions/{version}",
            get(templates::version),
        )
        .route("/v1/templates/{name}/preview", post(templates::preview))
        .route(
            "/v1/webhooks",
            get(routes::webhooks::list).post(routes::webhooks::create),
        )
        .route(
            "/v1/webhooks/{id}",
            get(routes::webhooks::get)
                .patch(routes::webhooks::update)
                .delete(routes::webhooks::delete),
        )
        .route(
            "/v1/webhooks/{id}/deliveries",
            get(routes::webhooks::deliveries),
        )
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery}/retry",
            post(routes::webhooks::redeliver),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    let v1 = read.merge(send).merge(admin);
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/openapi.json", get(openapi_json))
        .route("/admin", get(console::overview))
        .route("/admin/login", get(admin::login_page).post(admin::login))
        .route("/admin/logout", post(admin::logout))
        .route("/admin/jobs", get(console::jobs_page))
        .route("/admin/jobs/{id}", get(console::job_page))
        .route("/admin/jobs/{id}/retry", post(console::retry))
        .route("/admin/jobs/{id}/cancel", post(console::cancel))
        .route(
            "/admin/suppressions",
            get(console::suppressions_page).post(console::add_suppression),
        )
        .route(
            "/admin/suppressions/remove",
            post(console::remove_suppression),
        )
        .route("/admin/schedules", get(console::schedules_page))
        .route("/admin/feedback", get(console::feedback_page))
        .route("/admin/webhooks", get(console::webhooks_page))
        .route(
            "/admin/webhooks/{id}/deliveries/{delivery}/retry",
            post(console::redeliver),
        )
        .route("/admin/templates", get(routes::admin_templates::list))
        .route(
            "/admin/templates/{name}/{locale}/{version}/preview",
            get(routes::admin_templates::preview),
        )
        .merge(v1)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        // Outermost last: the timeout covers the wait for a place under the concurrency limit.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            state.config.max_concurrent_requests,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .with_state(state)
}

/// Requests whose bodies may pass the usual 256 KiB (attachments) read and handled at once: 8
/// × 16 MiB, however many requests are served together. A body that declares a length within
/// the usual limit passes without waiting.
static LARGE_BODIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

async fn large_body_gate(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let small = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= extract::BODY_LIMIT);
    let _permit = if small {
        None
    } else {
        LARGE_BODIES.acquire().await.ok()
    };
    next.run(request).await
}

/// Answers `503 request_timeout` (JSON, like every error) when a request outlasts
/// `API_REQUEST_TIMEOUT_SECS`; the handler's future is dropped, so its transaction rolls back.
async fn request_timeout(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// A bound, not yet serving, API.
#[derive(Debug)]
pub struct Application {
    listener: tokio::net::TcpListener,
    metrics_listener: tokio::net::TcpListener,
    public_listener: tokio::net::TcpListener,
    router: Router,
    metrics_router: Router,
    public_router: Router,
}

impl Application {
    /// Binds `API_ADDR`, `API_METRICS_ADDR` and `PUBLIC_ADDR` and builds the routers.
    pub async fn build(config: ApiConfig, pool: PgPool) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        let metrics_listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
        let public_listener = tokio::net::TcpListener::bind(config.public_addr).await?;
        let config_compliance = config.compliance.clone();
        let db = herald_shared::db::Db::new(pool, config.db.acquire_timeout);
        let state = AppState {
            enqueue: herald_shared::email::group::EnqueueGroups::start(
                db.clone(),
                config.enqueue_groups,
            ),
            templates: Arc::default(),
            public_limiter: Arc::new(routes::unsubscribe::RateLimiter::new(
                config.public_rate_limit,
            )),
            sign_in_limits: Arc::default(),
            db,
            config: Arc::new(config),
            metrics: Arc::new(herald_shared::metrics::Metrics::with_compliance(
                config_compliance,
            )),
        };
        Ok(Self {
            listener,
            metrics_listener,
            public_listener,
            metrics_router: metrics_router(state.clone()),
            public_router: routes::unsubscribe::public_router(state.clone()),
            router: router(state),
        })
    }

    /// The address the API is served on (useful when `API_ADDR` asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address `/metrics` is served on.
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.metrics_listener.local_addr()
    }

    /// The address the public routes (`/unsubscribe/{token}`) are served on.
    pub fn public_addr(&self) -> std::io::Result<SocketAddr> {
        self.public_listener.local_addr()
    }

    /// Serves both listeners until `shutdown` completes, then drains in-flight requests.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = tokio_util::sync::CancellationToken::new();
        let metrics_stop = stop.clone();
        let metrics_server = axum::serve(self.metrics_listener, self.metrics_router)
            .with_graceful_shutdown(metrics_stop.cancelled_owned());
        let metrics = tokio::spawn(async move { metrics_server.await });
        // The rate limit keys on the peer's address.
        let public_server = axum::serve(
            self.public_listener,
            self.public_router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.clone().cancelled_owned());
        let public = tokio::spawn(async move { public_server.await });
        // Console sign-in failures are throttled per client address.
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        stop.cancel();
        let _ = metrics.await;
        let _ = public.await;
        served
    }
}

/// The internal listener's routes: `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}
