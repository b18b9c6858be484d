//! Confining paths to a root directory: cleaning source paths (rejecting `..` escapes) and resolving
//! symlinks the way a chroot would, so a link can never lead outside the root.

use std::path::{Path, PathBuf};

use super::error::ContextError;

/// Most symlinks followed while resolving one path (Linux uses 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// Splits a source path into clean components relative to the root: a leading `/` means the root,
/// `.` and empty components vanish, `..` pops. `None` when `..` would climb above the root.
pub(crate) fn clean_components(path: &str) -> Option<Vec<String>> {
    let mut parts: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other.to_string()),
        }
    }
    Some(parts)
}

/// Resolves `components` inside `root`, following symlinks (all of them, or all but the last when
/// `follow_last` is false) with `root` acting as `/`. Returns the resolved components, or `None` when
/// some component does not exist.
pub(crate) fn resolve_in_root(
    root: &Path,
    components: &[String],
    follow_last: bool,
) -> Result<Option<Vec<String>>, ContextError> {
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: Vec<String> = components.iter().rev().cloned().collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = host_path(root, &resolved).join(&part);
        let metadata = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(ContextError::Io {
                    path: candidate,
                    source: e,
                });
            }
        };
        let is_last = pending.is_empty();
        if metadata.file_type().is_symlink() && (follow_last || !is_last) {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(ContextError::SymlinkLoop { path: candidate });
            }
            let target = std::fs::read_link(&candidate).map_err(ContextError::io(&candidate))?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                resolved.clear();
            }
            pending.extend(target.split('/').rev().map(str::to_string));
            continue;
        }
        resolved.push(part);
    }
    Ok(Some(resolved))
}

/// The host path of root-relative `components`.
pub(crate) fn host_path(root: &Path, components: &[String]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(components);
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn strings(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn clean_components_rejects_escapes() {
        assert_eq!(
            clean_components("/a/./b//c/"),
            Some(strings(&["a", "b", "c"]))
        );
        assert_eq!(clean_components("a/../b"), Some(strings(&["b"])));
        assert_eq!(clean_components("."), Some(vec![]));
        assert_eq!(clean_components("../x"), None);
        assert_eq!(clean_components("a/../../x"), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        symlink("real", root.join("rel")).unwrap();
        symlink("/real/sub", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();

        assert_eq!(
            resolve_in_root(root, &strings(&["rel", "sub"]), true).unwrap(),
            Some(strings(&["real", "sub"]))
        );
        assert_eq!(
            resolve_in_root(root, &strings(&["abs"]), true).unwrap(),
            Some(strings(&["real", "sub"]))
        );
        assert_eq!(
            resolve_in_root(root, &strings(&["abs"]), false).unwrap(),
            Some(strings(&["abs"]))
        );
        // `..` past the root stays at the root, as in a chroot; /etc of the host is never reached.
        assert_eq!(
            resolve_in_root(root, &strings(&["escape"]), true).unwrap(),
            None
        );
        assert_eq!(
            resolve_in_root(root, &strings(&["missing"]), true).unwrap(),
            None
        );
        assert!(matches!(
            resolve_in_root(root, &strings(&["loop"]), true),
            Err(ContextError::SymlinkLoop { .. })
        ));
    }
}
