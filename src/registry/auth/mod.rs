//! Access control for `imgbuild serve`: who the client is (htpasswd Basic credentials, or a
//! bearer token from the `/token` endpoint or an external issuer), what the request needs
//! (pull/push/delete on a repository), and the 401/403 answers with Docker's challenges.
//!
//! `htpasswd` checks passwords, `token` makes and checks JWTs, `access` evaluates the rules,
//! `middleware` guards `/v2/...`, and `endpoint` serves `/token`.

pub mod access;
pub mod endpoint;
pub mod htpasswd;
pub mod middleware;
pub mod token;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::config::AuthSection;
use access::AccessPolicy;
use htpasswd::{Htpasswd, HtpasswdError};
use token::{Claims, KeyError, TokenError, TokenSigner, TokenVerifier};

/// Token service name used when the config names none.
pub const DEFAULT_SERVICE: &str = "imgbuild";
/// Token issuer used when the config names none.
pub const DEFAULT_ISSUER: &str = "imgbuild";
/// Token lifetime used when the config names none.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// The realm named in Basic challenges.
pub const BASIC_REALM: &str = "imgbuild";

/// Why the `[auth]` configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Htpasswd(#[from] HtpasswdError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("[auth]: {0}")]
    Config(String),
}

/// Everything needed to check requests: loaded users, keys and rules.
#[derive(Debug)]
pub struct Auth {
    htpasswd: Option<Htpasswd>,
    token: Option<TokenService>,
    policy: AccessPolicy,
    /// Whether the server speaks TLS (the default realm is then `https://`).
    tls: bool,
}

/// The bearer-token side: the challenge parameters, the signer (when this server issues
/// tokens at `/token`) and the verifier.
#[derive(Debug)]
struct TokenService {
    realm: Option<String>,
    service: String,
    issuer: String,
    lifetime: Duration,
    signer: Option<TokenSigner>,
    verifier: TokenVerifier,
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Identity {
    Anonymous,
    /// Basic credentials checked against htpasswd.
    User(String),
    /// A valid bearer token.
    Token(Box<Claims>),
}

/// Why presented credentials were refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("malformed Authorization header")]
    Malformed,
    #[error("invalid user name or password")]
    BadPassword,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{0} credentials are not accepted by this registry")]
    SchemeNotAccepted(&'static str),
}

impl Auth {
    /// Loads htpasswd, keys and rules; `None` when no authentication is configured.
    pub fn load(section: &AuthSection, tls: bool) -> Result<Option<Auth>, AuthError> {
        let htpasswd = match &section.htpasswd {
            Some(h) => Some(Htpasswd::load(&h.path)?),
            None => None,
        };
        let token = match &section.token {
            Some(t) => {
                let signer = t.key.as_deref().map(TokenSigner::load).transpose()?;
                let extra = t
                    .public_keys
                    .iter()
                    .map(|p| token::load_public_key(p))
                    .collect::<Result<Vec<_>, _>>()?;
                if signer.is_none() && extra.is_empty() {
                    return Err(AuthError::Config(
                        "[auth.token] needs `key` (this server issues tokens at /token) or \
                         `public_keys` (tokens from another issuer)"
                            .into(),
                    ));
                }
                if signer.is_none() && t.realm.is_none() {
                    return Err(AuthError::Config(
                        "[auth.token] without `key` needs `realm`: the URL of the external token \
                         server"
                            .into(),
                    ));
                }
                let service = t.service.clone().unwrap_or_else(|| DEFAULT_SERVICE.into());
                let issuer = t.issuer.clone().unwrap_or_else(|| DEFAULT_ISSUER.into());
                let lifetime = match &t.lifetime {
                    Some(text) => humantime::parse_duration(text).map_err(|e| {
                        AuthError::Config(format!("[auth.token] lifetime = {text:?}: {e}"))
                    })?,
                    None => DEFAULT_TOKEN_LIFETIME,
                };
                let verifier = TokenVerifier::new(signer.as_ref(), extra, &issuer, &service);
                Some(TokenService {
                    realm: t.realm.clone(),
                    service,
                    issuer,
                    lifetime,
                    signer,
                    verifier,
                })
            }
            None => None,
        };
        let policy = AccessPolicy::new(
            section.access.clone(),
            section.groups.clone(),
            section.anonymous_pull,
        );
        if htpasswd.is_none() && token.is_none() {
            if !section.access.is_empty() || !section.groups.is_empty() || section.anonymous_pull {
                return Err(AuthError::Config(
                    "access rules, groups and anonymous_pull need [auth.htpasswd] or [auth.token]"
                        .into(),
                ));
            }
            return Ok(None);
        }
        if let Some(group) = policy.unknown_group() {
            return Err(AuthError::Config(format!(
                "an [[auth.access]] rule names group {group:?}, which [auth.groups] does not define"
            )));
        }
        Ok(Some(Auth {
            htpasswd,
            token,
            policy,
            tls,
        }))
    }

    /// Reads the htpasswd file again (on SIGHUP). Keys and rules stay as loaded.
    pub fn reload(&self) -> Result<(), AuthError> {
        if let Some(htpasswd) = &self.htpasswd {
            let users = htpasswd.reload()?;
            tracing::info!(users, "htpasswd reloaded");
        }
        Ok(())
    }

    pub fn policy(&self) -> &AccessPolicy {
        &self.policy
    }

    /// Identifies the sender of a request from its `Authorization` header.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<Identity, CredentialError> {
        let Some(value) = authorization else {
            return Ok(Identity::Anonymous);
        };
        let (scheme, rest) = value.split_once(' ').ok_or(CredentialError::Malformed)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = parse_basic(rest)?;
            if user.is_empty() && password.is_empty() {
                // What containers/image (skopeo, podman) sends when it has no credentials.
                return Ok(Identity::Anonymous);
            }
            self.check_password(&user, &password).await?;
            Ok(Identity::User(user))
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let token = self
                .token
                .as_ref()
                .ok_or(CredentialError::SchemeNotAccepted("Bearer"))?;
            let claims = token.verifier.verify(rest.trim())?;
            Ok(Identity::Token(Box::new(claims)))
        } else {
            Err(CredentialError::Malformed)
        }
    }

    /// Checks a user name and password against htpasswd.
    pub async fn check_password(&self, user: &str, password: &str) -> Result<(), CredentialError> {
        let htpasswd = self
            .htpasswd
            .as_ref()
            .ok_or(CredentialError::SchemeNotAccepted("Basic"))?;
        if htpasswd.verify(user, password).await {
            Ok(())
        } else {
            Err(CredentialError::BadPassword)
        }
    }

    /// The `WWW-Authenticate` value asking for credentials: a Bearer challenge when tokens are
    /// configured (with `scope` and `error` when given), else Basic.
    pub fn challenge(
        &self,
        host: Option<&str>,
        scope: Option<&str>,
        error: Option<&str>,
    ) -> String {
        let Some(token) = &self.token else {
            return format!("Basic realm=\"{BASIC_REALM}\"");
        };
        let realm = match &token.realm {
            Some(realm) => realm.clone(),
            None => {
                let scheme = if self.tls { "https" } else { "http" };
                let host = host.filter(|h| is_plain_host(h)).unwrap_or("localhost");
                format!("{scheme}://{host}/token")
            }
        };
        let mut value = format!("Bearer realm=\"{realm}\",service=\"{}\"", token.service);
        if let Some(scope) = scope {
            value.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(error) = error {
            value.push_str(&format!(",error=\"{error}\""));
        }
        value
    }
}

/// Decodes `base64(user:password)`.
pub fn parse_basic(encoded: &str) -> Result<(String, String), CredentialError> {
    let bytes = BASE64
        .decode(encoded.trim())
        .map_err(|_| CredentialError::Malformed)?;
    let text = String::from_utf8(bytes).map_err(|_| CredentialError::Malformed)?;
    let (user, password) = text.split_once(':').ok_or(CredentialError::Malformed)?;
    Ok((user.to_string(), password.to_string()))
}

/// Whether a Host header value is safe to put into a challenge (`name[:port]`, `[v6]:port`).
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_credentials() {
        let encoded = BASE64.encode("alice:pa:ss");
        assert_eq!(
            parse_basic(&encoded).unwrap(),
            ("alice".to_string(), "pa:ss".to_string())
        );
        assert!(parse_basic("!!!").is_err());
        assert!(parse_basic(&BASE64.encode("nocolon")).is_err());
    }

    use crate::registry::config::{HtpasswdSection, TokenSection};

    fn load_error(section: &AuthSection) -> String {
        Auth::load(section, false).unwrap_err().to_string()
    }

    #[test]
    fn no_auth_configured_serves_everyone() {
        assert!(
            Auth::load(&AuthSection::default(), false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn refuses_settings_that_would_not_do_what_they_say() {
        let rules_alone = AuthSection {
            anonymous_pull: true,
            ..AuthSection::default()
        };
        assert!(load_error(&rules_alone).contains("need [auth.htpasswd] or [auth.token]"));

        let missing = AuthSection {
            htpasswd: Some(HtpasswdSection {
                path: "/nonexistent/htpasswd".into(),
            }),
            ..AuthSection::default()
        };
        assert!(load_error(&missing).contains("/nonexistent/htpasswd"));

        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, "").unwrap();
        let unknown_group = AuthSection {
            htpasswd: Some(HtpasswdSection { path: htpasswd }),
            access: vec![access::AccessRule {
                repository: "**".into(),
                users: Vec::new(),
                groups: vec!["ops".into()],
                actions: vec![access::Action::Pull],
            }],
            ..AuthSection::default()
        };
        assert!(load_error(&unknown_group).contains("\"ops\""));

        let keyless = AuthSection {
            token: Some(TokenSection::default()),
            ..AuthSection::default()
        };
        assert!(load_error(&keyless).contains("needs `key`"));

        let missing_key = AuthSection {
            token: Some(TokenSection {
                key: Some("/nonexistent/token.key".into()),
                ..TokenSection::default()
            }),
            ..AuthSection::default()
        };
        assert!(load_error(&missing_key).contains("/nonexistent/token.key"));
    }

    #[test]
    fn only_plain_hosts_go_into_challenges() {
        assert!(is_plain_host("127.0.0.1:5000"));
        assert!(is_plain_host("[::1]:5000"));
        assert!(!is_plain_host("evil\",x=\"y"));
        assert!(!is_plain_host(""));
    }
}
