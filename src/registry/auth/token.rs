//! Docker registry bearer tokens: ES256-signed JWTs carrying an `access` claim
//! (`[{"type":"repository","name":"team/app","actions":["pull","push"]}]`), the scope strings
//! clients ask for (`repository:team/app:pull,push`), and issuing and verifying such tokens.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::access::{Actions, format_actions, parse_actions};

/// One entry of a token's `access` claim (Docker's token format).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourceAccess {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// A scope a client asks for: `repository:NAME:ACTIONS` or `registry:catalog:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Repository { name: String, actions: Actions },
    Catalog,
}

impl Scope {
    /// Parses one scope string; `None` for shapes this registry does not know.
    pub fn parse(text: &str) -> Option<Scope> {
        let (kind, rest) = text.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        match kind {
            "repository" if !name.is_empty() => Some(Scope::Repository {
                name: name.to_string(),
                actions: parse_actions(actions),
            }),
            "registry" if name == "catalog" => Some(Scope::Catalog),
            _ => None,
        }
    }

    /// The scope string, as put into challenges.
    pub fn render(&self) -> String {
        match self {
            Scope::Repository { name, actions } => {
                format!("repository:{name}:{}", format_actions(actions))
            }
            Scope::Catalog => "registry:catalog:*".to_string(),
        }
    }

    /// The `access` claim entry granting this scope.
    pub fn to_access(&self) -> ResourceAccess {
        match self {
            Scope::Repository { name, actions } => ResourceAccess {
                kind: "repository".into(),
                name: name.clone(),
                actions: actions.iter().map(|a| a.as_str().to_string()).collect(),
            },
            Scope::Catalog => ResourceAccess {
                kind: "registry".into(),
                name: "catalog".into(),
                actions: vec!["*".into()],
            },
        }
    }
}

/// The claims of a registry token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user the token was issued to; empty for an anonymous client.
    #[serde(default)]
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub access: Vec<ResourceAccess>,
}

impl Claims {
    /// The actions this token grants on `repository`.
    pub fn repository_actions(&self, repository: &str) -> Actions {
        self.access
            .iter()
            .filter(|a| a.kind == "repository" && a.name == repository)
            .flat_map(|a| a.actions.iter().flat_map(|x| parse_actions(x)))
            .collect()
    }

    /// Whether the token grants listing the catalog.
    pub fn grants_catalog(&self) -> bool {
        self.access
            .iter()
            .any(|a| a.kind == "registry" && a.name == "catalog")
    }

    /// The user, `None` for an anonymous token.
    pub fn user(&self) -> Option<&str> {
        (!self.sub.is_empty()).then_some(self.sub.as_str())
    }
}

/// Why a token key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading token key {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("token key {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Why a presented token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token signature not made by a trusted key")]
    BadSignature,
    #[error("token invalid: {0}")]
    Invalid(String),
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

fn read_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|error| KeyError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// Signs tokens with a P-256 private key (ES256).
pub struct TokenSigner {
    key: EncodingKey,
    /// The matching public key, so this server accepts what it issues.
    public: DecodingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<ES256 key>)")
    }
}

impl TokenSigner {
    /// Loads a PKCS#8 PEM P-256 private key (`openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256`).
    pub fn load(path: &Path) -> Result<TokenSigner, KeyError> {
        TokenSigner::from_pem(&read_key(path)?).map_err(|message| KeyError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses a PKCS#8 PEM P-256 private key.
    pub fn from_pem(pem: &[u8]) -> Result<TokenSigner, String> {
        let key = EncodingKey::from_ec_pem(pem)
            .map_err(|e| format!("not a PKCS#8 PEM EC private key: {e}"))?;
        let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            key.as_bytes(),
        )
        .map_err(|e| format!("not a P-256 private key (ES256 needs P-256): {e}"))?;
        use aws_lc_rs::signature::KeyPair as _;
        let public = DecodingKey::from_ec_der(pair.public_key().as_ref());
        Ok(TokenSigner { key, public })
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.key)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }
}

/// Loads a PEM P-256 public key (SubjectPublicKeyInfo) of an external token issuer.
pub fn load_public_key(path: &Path) -> Result<DecodingKey, KeyError> {
    DecodingKey::from_ec_pem(&read_key(path)?).map_err(|e| KeyError::Invalid {
        path: path.to_path_buf(),
        message: format!("not a PEM EC public key: {e}"),
    })
}

/// Checks tokens: ES256 only, signed by one of the trusted keys, for this service and issuer,
/// within their validity period.
pub struct TokenVerifier {
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenVerifier({} keys)", self.keys.len())
    }
}

/// Clock skew tolerated between the issuer and this server.
const LEEWAY_SECS: u64 = 10;

impl TokenVerifier {
    pub fn new(
        signer: Option<&TokenSigner>,
        extra_keys: Vec<DecodingKey>,
        issuer: &str,
        service: &str,
    ) -> TokenVerifier {
        let mut keys: Vec<DecodingKey> = signer.map(|s| s.public.clone()).into_iter().collect();
        keys.extend(extra_keys);
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[service]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
        TokenVerifier { keys, validation }
    }

    /// The claims of `token` if a trusted key signed it and it is valid now.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let mut last = TokenError::BadSignature;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        other => TokenError::Invalid(format!("{other:?}")),
                    };
                    // A bad signature may just mean another trusted key made it.
                    if !matches!(last, TokenError::BadSignature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims for `user` granting `scopes`, valid from now for `lifetime`.
pub fn claims_for(
    issuer: &str,
    service: &str,
    user: Option<&str>,
    scopes: &[Scope],
    lifetime: Duration,
) -> Claims {
    let now = now_secs();
    let mut id = [0u8; 16];
    // Without randomness the id is only less unique; the token stays valid.
    let _ = getrandom::fill(&mut id);
    Claims {
        iss: issuer.to_string(),
        sub: user.unwrap_or_default().to_string(),
        aud: service.to_string(),
        exp: now + lifetime.as_secs(),
        nbf: now.saturating_sub(LEEWAY_SECS),
        iat: now,
        jti: hex::encode(id),
        access: scopes.iter().map(Scope::to_access).collect(),
    }
}

/// Keeps only the actions in `scope` that `allowed` permits (a repository scope may end up with
/// no actions, which Docker's token servers also return).
pub fn narrow(scope: &Scope, allowed: &Actions) -> Scope {
    match scope {
        Scope::Repository { name, actions } => Scope::Repository {
            name: name.clone(),
            actions: actions.intersection(allowed).copied().collect(),
        },
        Scope::Catalog => Scope::Catalog,
    }
}

#[cfg(test)]
mod tests {
    use super::super::access::Action;
    use super::*;

    #[test]
    fn parses_and_renders_scopes() {
        assert_eq!(
            Scope::parse("repository:team/app:pull,push"),
            Some(Scope::Repository {
                name: "team/app".into(),
                actions: [Action::Pull, Action::Push].into()
            })
        );
        assert_eq!(Scope::parse("registry:catalog:*"), Some(Scope::Catalog));
        assert_eq!(Scope::parse("repository::pull"), None);
        assert_eq!(Scope::parse("garbage"), None);
        assert_eq!(
            Scope::parse("repository:a:push,pull").unwrap().render(),
            "repository:a:pull,push"
        );
    }
}
