//! The guard in front of `/v2/...`: works out what a request needs (pull, push or delete on a
//! repository, or the catalog), checks it against the client's identity, and answers 401 with a
//! challenge, 403 DENIED, or lets the request through (filtering the catalog to what the client
//! may pull, and dropping cross-repository mounts from repositories it may not pull).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;

use super::access::{Action, Actions, format_actions};
use super::token::Scope;
use super::{Auth, CredentialError, Identity};
use crate::registry::name::RepositoryName;
use crate::registry::routes::{Endpoint, parse_endpoint};

/// What a request needs.
enum Need {
    /// Any identity but an anonymous one (`/v2/`).
    Authenticated,
    Catalog,
    Repository {
        name: String,
        actions: Actions,
    },
}

fn need_of(endpoint: Endpoint, method: &Method) -> Need {
    let pull: Actions = [Action::Pull].into();
    let (name, actions) = match endpoint {
        Endpoint::Base => return Need::Authenticated,
        Endpoint::Catalog => return Need::Catalog,
        Endpoint::Tags(name) | Endpoint::Referrers(name, _) => (name, pull),
        Endpoint::Manifest(name, _) | Endpoint::Blob(name, _) => {
            let actions = match *method {
                Method::PUT | Method::POST | Method::PATCH => [Action::Pull, Action::Push].into(),
                Method::DELETE => [Action::Delete].into(),
                _ => pull,
            };
            (name, actions)
        }
        Endpoint::Upload(name, _) => (name, [Action::Pull, Action::Push].into()),
    };
    Need::Repository { name, actions }
}

/// The middleware: lets a request through only if its sender may do what it asks.
pub async fn require_access(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let Some(endpoint) = parse_endpoint(&path) else {
        return next.run(request).await;
    };
    let host = request_host(&request);
    let authorization = match request.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(text) => Some(text),
            Err(_) => {
                let challenge = auth.challenge(host.as_deref(), None, None);
                let error = CredentialError::Malformed;
                return unauthorized(&challenge, &error.to_string(), None);
            }
        },
    };
    let need = need_of(endpoint, request.method());
    let identity = match auth.authenticate(authorization).await {
        Ok(identity) => identity,
        Err(error) => {
            tracing::info!(%path, %error, "credentials refused");
            let token_error = matches!(error, CredentialError::Token(_)).then_some("invalid_token");
            // The scope lets a client with an expired token fetch the right new one at once.
            let scope = challenge_scope(&need);
            let challenge = auth.challenge(host.as_deref(), scope.as_deref(), token_error);
            return unauthorized(&challenge, &error.to_string(), None);
        }
    };
    match need {
        Need::Authenticated => {
            if matches!(identity, Identity::Anonymous) {
                let challenge = auth.challenge(host.as_deref(), None, None);
                return unauthorized(&challenge, "authentication required", None);
            }
            next.run(request).await
        }
        Need::Catalog => {
            let allowed = match &identity {
                Identity::Anonymous => false,
                Identity::User(_) => true,
                Identity::Token(claims) => claims.grants_catalog(),
            };
            if !allowed {
                let error =
                    (!matches!(identity, Identity::Anonymous)).then_some("insufficient_scope");
                let scope = Scope::Catalog.render();
                let challenge = auth.challenge(host.as_deref(), Some(&scope), error);
                return unauthorized(&challenge, "authentication required", None);
            }
            let response = next.run(request).await;
            filter_catalog(&auth, &identity, response).await
        }
        Need::Repository { name, actions } => {
            if RepositoryName::parse(&name).is_none() {
                // Refused before any rule sees it: invalid names address nothing.
                return name_invalid(&name);
            }
            let allowed = allowed_actions(&auth, &identity, &name);
            if !actions.is_subset(&allowed) {
                let missing: Actions = actions.difference(&allowed).copied().collect();
                return refuse(&auth, host.as_deref(), &identity, &name, &actions, &missing);
            }
            if *request.method() == Method::POST {
                drop_forbidden_mount(&auth, &identity, &mut request);
            }
            next.run(request).await
        }
    }
}

/// The scope to name in a challenge for `need` (none for invalid repository names).
fn challenge_scope(need: &Need) -> Option<String> {
    match need {
        Need::Authenticated => None,
        Need::Catalog => Some(Scope::Catalog.render()),
        Need::Repository { name, actions } => RepositoryName::parse(name).map(|_| {
            Scope::Repository {
                name: name.clone(),
                actions: actions.clone(),
            }
            .render()
        }),
    }
}

/// What `identity` may do to `repository`.
fn allowed_actions(auth: &Auth, identity: &Identity, repository: &str) -> Actions {
    match identity {
        Identity::Anonymous => auth.policy().allowed(None, repository),
        Identity::User(user) => auth.policy().allowed(Some(user), repository),
        Identity::Token(claims) => claims.repository_actions(repository),
    }
}

/// 401 with a challenge for clients that can still get in (anonymous, or a token lacking the
/// scope), 403 DENIED for a user whose password was right but who may not do this.
fn refuse(
    auth: &Auth,
    host: Option<&str>,
    identity: &Identity,
    name: &str,
    needed: &Actions,
    missing: &Actions,
) -> Response {
    let scope = Scope::Repository {
        name: name.to_string(),
        actions: needed.clone(),
    }
    .render();
    let detail: Vec<serde_json::Value> = missing
        .iter()
        .map(|a| serde_json::json!({"Type": "repository", "Class": "", "Name": name, "Action": a.as_str()}))
        .collect();
    match identity {
        Identity::Anonymous => {
            let challenge = auth.challenge(host, Some(&scope), None);
            unauthorized(&challenge, "authentication required", Some(detail))
        }
        Identity::Token(_) => {
            let challenge = auth.challenge(host, Some(&scope), Some("insufficient_scope"));
            unauthorized(
                &challenge,
                "the token does not grant this access",
                Some(detail),
            )
        }
        Identity::User(user) => {
            tracing::info!(%user, repository = %name, missing = %format_actions(missing), "access denied");
            error_response(
                StatusCode::FORBIDDEN,
                "DENIED",
                "requested access to the resource is denied",
                Some(detail),
            )
        }
    }
}

/// `?mount=...&from=REPO` needs pull on REPO; without it the mount parameters are dropped, so
/// the request becomes a plain upload (as the distribution spec allows).
fn drop_forbidden_mount(auth: &Auth, identity: &Identity, request: &mut Request) {
    let Some(query) = request.uri().query() else {
        return;
    };
    let pairs: Vec<(String, String)> =
        match axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri()) {
            Ok(q) => q.0,
            Err(_) => return,
        };
    let Some((_, from)) = pairs.iter().find(|(k, _)| k == "from") else {
        return;
    };
    if allowed_actions(auth, identity, from).contains(&Action::Pull) {
        return;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            key != "mount" && key != "from"
        })
        .collect();
    let path = request.uri().path();
    let uri = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    match uri.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        // Unreachable for a URI that parsed before; refuse the mount by clearing the query.
        Err(_) => {
            if let Ok(uri) = request.uri().path().parse() {
                *request.uri_mut() = uri;
            }
        }
    }
}

/// Most bytes of a catalog page read back for filtering.
const MAX_CATALOG_BYTES: usize = 16 * 1024 * 1024;

/// Keeps only the repositories `identity` may pull in a catalog page.
async fn filter_catalog(auth: &Auth, identity: &Identity, response: Response) -> Response {
    if !response.status().is_success() {
        return response;
    }
    let user = match identity {
        Identity::Anonymous => None,
        Identity::User(user) => Some(user.as_str()),
        Identity::Token(claims) => claims.user(),
    };
    let (mut parts, body) = response.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_CATALOG_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::error!(error = %e, "reading the catalog page back");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal server error; see the registry log",
                None,
            );
        }
    };
    let mut page: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(page) => page,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    if let Some(repositories) = page.get_mut("repositories").and_then(|r| r.as_array_mut()) {
        repositories.retain(|name| {
            name.as_str()
                .is_some_and(|name| auth.policy().allowed(user, name).contains(&Action::Pull))
        });
    }
    let body = page.to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// The Host a client addressed (Host header, or the URI authority on HTTP/2).
fn request_host(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
}

fn name_invalid(name: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "NAME_INVALID",
        &format!("invalid repository name: {name:?}"),
        None,
    )
}

fn unauthorized(
    challenge: &str,
    message: &str,
    detail: Option<Vec<serde_json::Value>>,
) -> Response {
    let mut response = error_response(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message, detail);
    if let Ok(value) = HeaderValue::from_str(challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// A distribution-spec error body with `status`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    detail: Option<Vec<serde_json::Value>>,
) -> Response {
    let body = serde_json::json!({
        "errors": [{ "code": code, "message": message, "detail": detail }]
    });
    (status, axum::Json(body)).into_response()
}
