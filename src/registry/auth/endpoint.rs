//! `/token`: this server as its own Docker token server. `GET` takes Basic credentials (or
//! none, for anonymous access) and `service`/`scope` query parameters; `POST` takes the OAuth2
//! password grant form. The token grants the requested scopes narrowed to what the access rules
//! allow for that user.

use std::sync::Arc;

use axum::extract::{FromRequest as _, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::middleware::error_response;
use super::token::{Scope, claims_for, narrow};
use super::{Auth, BASIC_REALM, CredentialError, parse_basic};
use crate::registry::name::RepositoryName;

/// What the client asked for, from the query string or the form.
#[derive(Debug, Default)]
struct TokenRequest {
    credentials: Option<(String, String)>,
    service: Option<String>,
    scopes: Vec<String>,
}

/// Why a token request was refused before any token was made.
enum Refusal {
    /// 400 with an OAuth2 error code.
    BadRequest { code: &'static str, message: String },
    /// 401: the credentials are wrong or malformed.
    Credentials(CredentialError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::BadRequest { code, message } => bad_request(code, &message),
            Refusal::Credentials(error) => refuse_credentials(&error),
        }
    }
}

fn invalid(message: String) -> Refusal {
    Refusal::BadRequest {
        code: "invalid_request",
        message,
    }
}

/// The `/token` handler (GET and POST).
pub async fn token(State(auth): State<Arc<Auth>>, request: Request) -> Response {
    let issuer = auth
        .token
        .as_ref()
        .and_then(|service| service.signer.as_ref().map(|signer| (service, signer)));
    let Some((service, signer)) = issuer else {
        return error_response(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "this registry does not issue tokens",
            None,
        );
    };
    let parsed = match *request.method() {
        Method::GET => from_query(request),
        Method::POST => from_form(request).await,
        _ => Err(Refusal::BadRequest {
            code: "unsupported",
            message: "use GET or POST".into(),
        }),
    };
    let asked = match parsed {
        Ok(asked) => asked,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(requested) = &asked.service
        && *requested != service.service
    {
        return bad_request(
            "invalid_request",
            &format!("this token server is for service {:?}", service.service),
        );
    }
    let user = match &asked.credentials {
        None => None,
        Some((user, password)) => match auth.check_password(user, password).await {
            Ok(()) => Some(user.as_str()),
            Err(e) => return refuse_credentials(&e),
        },
    };
    let mut granted = Vec::new();
    for text in asked.scopes.iter().flat_map(|s| s.split(' ')) {
        let Some(scope) = Scope::parse(text) else {
            tracing::debug!(scope = %text, "token scope not understood");
            continue;
        };
        match &scope {
            Scope::Repository { name, .. } if RepositoryName::parse(name).is_some() => {
                let allowed = auth.policy().allowed(user, name);
                granted.push(narrow(&scope, &allowed));
            }
            Scope::Catalog if user.is_some() => granted.push(Scope::Catalog),
            _ => tracing::debug!(scope = %text, "token scope not granted"),
        }
    }
    let claims = claims_for(
        &service.issuer,
        &service.service,
        user,
        &granted,
        service.lifetime,
    );
    let signed = match signer.sign(&claims) {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(error = %e, "signing a token");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal server error; see the registry log",
                None,
            );
        }
    };
    tracing::info!(
        user = user.unwrap_or("<anonymous>"),
        scopes = %granted.iter().map(Scope::render).collect::<Vec<_>>().join(" "),
        "token issued"
    );
    let issued_at = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(claims.iat),
    );
    let body = serde_json::json!({
        "token": signed,
        "access_token": signed,
        "expires_in": service.lifetime.as_secs(),
        "issued_at": issued_at.to_string(),
    });
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn from_query(request: Request) -> Result<TokenRequest, Refusal> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri())
        .map_err(|e| invalid(format!("bad query string: {e}")))?
        .0;
    let malformed = || Refusal::Credentials(CredentialError::Malformed);
    let credentials = match request.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| malformed())?;
            let encoded = text
                .strip_prefix("Basic ")
                .or_else(|| text.strip_prefix("basic "))
                .ok_or_else(malformed)?;
            let (user, password) = parse_basic(encoded).map_err(Refusal::Credentials)?;
            // Empty credentials (containers/image without a login) ask for anonymous access.
            (!user.is_empty() || !password.is_empty()).then_some((user, password))
        }
    };
    Ok(collect(pairs, credentials))
}

async fn from_form(request: Request) -> Result<TokenRequest, Refusal> {
    let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(request, &())
        .await
        .map_err(|e| invalid(format!("reading the form: {e}")))?;
    let field = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    match field("grant_type").as_deref() {
        Some("password") => {}
        Some(other) => {
            return Err(Refusal::BadRequest {
                code: "unsupported_grant_type",
                message: format!("grant_type {other:?} is not supported; use \"password\""),
            });
        }
        None => return Err(invalid("grant_type is missing".into())),
    }
    let credentials = match (field("username"), field("password")) {
        (Some(user), Some(password)) => Some((user, password)),
        _ => {
            return Err(invalid("username and password are required".into()));
        }
    };
    Ok(collect(pairs, credentials))
}

fn collect(pairs: Vec<(String, String)>, credentials: Option<(String, String)>) -> TokenRequest {
    let mut asked = TokenRequest {
        credentials,
        ..TokenRequest::default()
    };
    for (key, value) in pairs {
        match key.as_str() {
            "service" => asked.service = Some(value),
            "scope" => asked.scopes.push(value),
            _ => {}
        }
    }
    asked
}

fn refuse_credentials(error: &CredentialError) -> Response {
    tracing::info!(%error, "token request refused");
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        &error.to_string(),
        None,
    );
    if let Ok(value) = HeaderValue::from_str(&format!("Basic realm=\"{BASIC_REALM}\"")) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn bad_request(code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "error_description": message });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}
