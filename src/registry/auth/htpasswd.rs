//! The htpasswd user file (bcrypt entries, as `htpasswd -B` writes them): loading, and password
//! checks that run bcrypt on a blocking thread and remember recent successes for a short while.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// How long a successful password check is remembered.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most remembered successes (memory stays bounded whatever clients send).
const CACHE_CAPACITY: usize = 4096;
/// A valid bcrypt hash checked against when the user is unknown, so that unknown users take as
/// long to refuse as wrong passwords (the password is "imgbuild-timing-equalizer").
const DUMMY_HASH: &str = "$2y$05$j.umeHXJWjPmD8jd6E3re.cbJif3dkwRpJ90A3qpcguNcZF21A3tm";

/// Why the htpasswd file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("reading htpasswd file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("htpasswd file {path} line {line}: {message}")]
    Entry {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Users and their bcrypt hashes, with a cache of recent successful checks.
pub struct Htpasswd {
    path: PathBuf,
    users: RwLock<HashMap<String, String>>,
    /// sha256(user NUL hash NUL password) -> when the check succeeded.
    recent: Mutex<HashMap<[u8; 32], Instant>>,
    /// Bounds concurrent bcrypt runs, so a flood of wrong passwords queues instead of
    /// occupying every blocking thread.
    bcrypt_slots: tokio::sync::Semaphore,
}

impl Htpasswd {
    /// Reads `path`; every entry must be `user:bcrypt-hash`.
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        Ok(Htpasswd {
            path: path.to_path_buf(),
            users: RwLock::new(read_entries(path)?),
            recent: Mutex::new(HashMap::new()),
            bcrypt_slots: tokio::sync::Semaphore::new(bcrypt_parallelism()),
        })
    }

    /// Reads the file again (SIGHUP); on error the old users stay in force.
    pub fn reload(&self) -> Result<usize, HtpasswdError> {
        let users = read_entries(&self.path)?;
        let count = users.len();
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = users;
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(count)
    }

    /// Whether `password` is `user`'s. bcrypt runs on a blocking thread.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let hash = self
            .users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let key = cache_key(user, &hash, password);
        if self.remembered(&key) {
            return known;
        }
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return false;
        };
        let password = password.to_string();
        let checked = hash.clone();
        let matches = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password, &checked).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if matches && known {
            self.remember(key);
        }
        matches && known
    }

    fn remembered(&self, key: &[u8; 32]) -> bool {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.get(key).is_some_and(|at| at.elapsed() < CACHE_TTL)
    }

    fn remember(&self, key: [u8; 32]) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= CACHE_CAPACITY {
            recent.retain(|_, at| at.elapsed() < CACHE_TTL);
            if recent.len() >= CACHE_CAPACITY {
                recent.clear();
            }
        }
        recent.insert(key, Instant::now());
    }
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes stay out of logs.
        write!(f, "Htpasswd({})", self.path.display())
    }
}

/// As many bcrypt checks at once as there are cores.
fn bcrypt_parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [user, hash, password] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher.finalize().into()
}

fn read_entries(path: &Path) -> Result<HashMap<String, String>, HtpasswdError> {
    let text = std::fs::read_to_string(path).map_err(|error| HtpasswdError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_entries(&text).map_err(|(line, message)| HtpasswdError::Entry {
        path: path.to_path_buf(),
        line,
        message,
    })
}

/// Parses `user:hash` lines (blank lines and `#` comments allowed); only bcrypt hashes.
fn parse_entries(text: &str) -> Result<HashMap<String, String>, (usize, String)> {
    let mut users = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = index + 1;
        let Some((user, hash)) = line.split_once(':') else {
            return Err((number, "expected user:hash".to_string()));
        };
        if user.is_empty() {
            return Err((number, "empty user name".to_string()));
        }
        if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            return Err((
                number,
                format!("user {user:?}: only bcrypt entries (htpasswd -B) are supported"),
            ));
        }
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_hash_is_a_valid_bcrypt_hash() {
        assert!(bcrypt::verify("imgbuild-timing-equalizer", DUMMY_HASH).unwrap());
    }

    #[test]
    fn refuses_non_bcrypt_entries_and_names_the_line() {
        assert_eq!(
            parse_entries("# users\n\nalice:$2y$05$abc\n").unwrap()["alice"],
            "$2y$05$abc"
        );
        let (line, message) = parse_entries("alice:$2y$05$abc\nbob:{SHA}xyz\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(message.contains("bcrypt"), "{message}");
        assert_eq!(parse_entries("nocolon\n").unwrap_err().0, 1);
    }

    #[tokio::test]
    async fn verifies_passwords_and_remembers_successes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let file = Htpasswd::load(&path).unwrap();
        assert!(file.verify("alice", "s3cret").await);
        assert!(file.verify("alice", "s3cret").await, "cached success");
        assert!(!file.verify("alice", "wrong").await);
        assert!(!file.verify("mallory", "s3cret").await);
        assert!(!file.verify("mallory", "imgbuild-timing-equalizer").await);
        std::fs::write(&path, "").unwrap();
        file.reload().unwrap();
        assert!(
            !file.verify("alice", "s3cret").await,
            "reload forgets users"
        );
    }
}
