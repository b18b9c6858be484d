//! `plan_copy`: expands COPY/ADD local sources (Go wildcards, `.dockerignore`, `--exclude`,
//! `--parents`) against a root directory and maps every selected entry to its path in the image.
//!
//! BuildKit rules followed here:
//! - the destination is a directory when it ends with `/` (or is `.`), when there are several sources
//!   or several matches, when a source is a directory, or with `--parents`; otherwise a single file is
//!   written at exactly `dest`. A relative `dest` is relative to the WORKDIR. (If the image already
//!   has a directory at a file destination, the executor puts the file inside it, as BuildKit does.)
//! - a directory source copies its CONTENTS, everything below it, empty directories included. The
//!   destination directory itself is NOT taken from the source: BuildKit creates it fresh (mode 0755,
//!   like other missing parents), so it is reported in [`CopyPlan::fresh_dirs`], not as an item;
//! - the source path itself is resolved through symlinks (inside the root); entries found inside a
//!   directory are taken as they are, symlinks as symlinks;
//! - a wildcard that matches nothing copies nothing (BuildKit's `AllowEmptyWildcard`), while a plain
//!   path that does not exist, or is hidden by `.dockerignore`, is an error, and so is a wildcard whose
//!   directory part (before the first wildcard) does not exist;
//! - several sources with a destination lacking the trailing `/` go into that directory, as Docker
//!   documents (BuildKit's overwriting of one file by the next there is its open bug moby/buildkit#1853);
//! - `--exclude` patterns match paths relative to the source's base (the source itself, or the
//!   directory before its first wildcard), `.dockerignore` patterns match paths relative to the root.

use std::path::{Path, PathBuf};

use super::error::ContextError;
use super::resolve::{clean_components, host_path, resolve_in_root};
use crate::dockerfile::glob::Pattern;
use crate::dockerfile::ignore::{IgnoreMatcher, clean_path};

/// Filters for one COPY/ADD.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions<'a> {
    /// The build's `.dockerignore` (only when the root is the build context, not for `--from`).
    pub ignore: Option<&'a IgnoreMatcher>,
    /// `--exclude` patterns.
    pub excludes: &'a [String],
    /// `--parents`: keep each source's path (after an optional `/./` pivot) under the destination.
    pub parents: bool,
}

/// One entry to write into the image.
#[derive(Debug)]
pub struct CopyItem {
    /// Where the entry is on the host.
    pub host_path: PathBuf,
    /// Absolute, normalized path in the image, e.g. `/app/src/a.rs`.
    pub image_path: String,
    /// The entry's own metadata (`symlink_metadata`), except for a source path given directly,
    /// which is resolved through symlinks first.
    pub metadata: std::fs::Metadata,
}

/// The full result of planning one COPY/ADD.
#[derive(Debug, Default)]
pub struct CopyPlan {
    /// Entries to write, as [`plan_copy`] returns them.
    pub items: Vec<CopyItem>,
    /// Absolute image paths of directories to create (mode 0755, `--chown` applied) when missing,
    /// even if nothing is copied into them: the destination of each directory source.
    pub fresh_dirs: Vec<String>,
}

/// Plans a COPY/ADD of local `sources` (already variable-expanded; URLs, git sources and here-documents
/// are the executor's, not passed here) from
/// `root` to `dest` (relative to `workdir` unless absolute). Items come out sorted by image path
/// component by component (a directory right before its contents), one item per image path (a later
/// source wins). See [`plan_copy_full`] for the directories to create besides the items.
pub fn plan_copy(
    root: &Path,
    sources: &[String],
    dest: &str,
    workdir: &str,
    opts: &CopyOptions,
) -> Result<Vec<CopyItem>, ContextError> {
    plan_copy_full(root, sources, dest, workdir, opts).map(|plan| plan.items)
}

/// [`plan_copy`], also returning the destination directories BuildKit creates fresh (needed for an
/// empty directory source, whose destination must still exist afterwards).
pub fn plan_copy_full(
    root: &Path,
    sources: &[String],
    dest: &str,
    workdir: &str,
    opts: &CopyOptions,
) -> Result<CopyPlan, ContextError> {
    if sources.is_empty() {
        return Err(ContextError::NoSources);
    }
    let excludes = IgnoreMatcher::from_patterns(opts.excludes).map_err(ContextError::BadExclude)?;
    let selector = Selector {
        root,
        ignore: opts.ignore,
        excludes: &excludes,
    };

    let mut matches = Vec::new();
    for source in sources {
        matches.extend(selector.expand_source(source, opts.parents)?);
    }

    let dest_abs = absolute_dest(dest, workdir);
    let dest_is_dir = dest.ends_with('/')
        || dest == "."
        || dest.is_empty()
        || dest.ends_with("/.")
        || sources.len() > 1
        || matches.len() > 1
        || opts.parents
        || matches.iter().any(|m| m.metadata.is_dir());

    let mut items: Vec<CopyItem> = Vec::new();
    let mut fresh_dirs: Vec<String> = Vec::new();
    let add = |items: &mut Vec<CopyItem>,
               image_path: String,
               host_path: PathBuf,
               metadata: std::fs::Metadata| {
        items.push(CopyItem {
            host_path,
            image_path,
            metadata,
        });
    };
    for found in matches {
        let target_base = if !dest_is_dir {
            dest_abs.clone()
        } else if opts.parents {
            // Keep the source's own parent directories, with their metadata from the source tree.
            let mut image_dir = dest_abs.clone();
            let kept = &found.kept_components;
            for depth in 1..kept.len() {
                image_dir = join_image(&image_dir, &kept[depth - 1]);
                let written: Vec<String> =
                    found.written[..found.written.len() - kept.len() + depth].to_vec();
                if let Some(resolved) = resolve_in_root(root, &written, true)? {
                    let host = host_path(root, &resolved);
                    let metadata = std::fs::metadata(&host).map_err(ContextError::io(&host))?;
                    add(&mut items, image_dir.clone(), host, metadata);
                }
            }
            match kept.last() {
                Some(name) => join_image(&image_dir, name),
                None => image_dir,
            }
        } else if found.metadata.is_dir() {
            dest_abs.clone()
        } else {
            match found.written.last() {
                Some(name) => join_image(&dest_abs, name),
                None => dest_abs.clone(),
            }
        };
        let is_dir = found.metadata.is_dir();
        if is_dir && !opts.parents {
            if !fresh_dirs.contains(&target_base) {
                fresh_dirs.push(target_base.clone());
            }
        } else {
            add(
                &mut items,
                target_base.clone(),
                found.host_path.clone(),
                found.metadata,
            );
        }
        if is_dir {
            selector.walk_dir(
                &found.host_path,
                &mut found.resolved.join("/"),
                &mut found.exclude_rel.clone(),
                &target_base,
                &mut items,
            )?;
        }
    }
    Ok(CopyPlan {
        items: sorted_last_wins(items),
        fresh_dirs,
    })
}

/// `items` sorted by image path component by component, keeping only the last item added for
/// each image path. (One directory walk is already sorted, which is checked before sorting.)
fn sorted_last_wins(mut items: Vec<CopyItem>) -> Vec<CopyItem> {
    fn components(path: &str) -> impl Iterator<Item = &str> {
        path.split('/').filter(|part| !part.is_empty())
    }
    let order =
        |a: &CopyItem, b: &CopyItem| components(&a.image_path).cmp(components(&b.image_path));
    if !items.is_sorted_by(|a, b| order(a, b).is_lt()) {
        items.sort_by(order);
    }
    // `dedup_by` removes `later` and keeps `earlier`: swap them so the later item survives.
    items.dedup_by(|later, earlier| {
        let same = components(&later.image_path).eq(components(&earlier.image_path));
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
    items
}

/// A source path as matched in the root.
struct Match {
    /// Components as written (wildcards replaced by the matched names).
    written: Vec<String>,
    /// Components after following symlinks.
    resolved: Vec<String>,
    /// The tail of `written` that `--parents` keeps (all of it unless a `/./` pivot was used).
    kept_components: Vec<String>,
    /// Path relative to the source's base, for `--exclude` ("" for the base itself).
    exclude_rel: String,
    host_path: PathBuf,
    metadata: std::fs::Metadata,
}

struct Selector<'a> {
    root: &'a Path,
    ignore: Option<&'a IgnoreMatcher>,
    excludes: &'a IgnoreMatcher,
}

impl Selector<'_> {
    fn ignored(&self, resolved: &[String], is_dir: bool) -> bool {
        !resolved.is_empty()
            && self
                .ignore
                .is_some_and(|m| m.is_excluded(&resolved.join("/"), is_dir))
    }

    fn excluded(&self, exclude_rel: &str, is_dir: bool) -> bool {
        !exclude_rel.is_empty() && self.excludes.is_excluded(exclude_rel, is_dir)
    }

    /// Whether a filtered-out directory must still be searched for re-included entries.
    fn must_search_filtered_dirs(&self) -> bool {
        self.excludes.has_exclusions() || self.ignore.is_some_and(IgnoreMatcher::has_exclusions)
    }

    /// Expands one source into its matches (several when it has wildcards).
    fn expand_source(&self, source: &str, parents: bool) -> Result<Vec<Match>, ContextError> {
        let outside = || ContextError::OutsideContext {
            source_path: source.to_string(),
        };
        // `--parents` pivot: `a/./b/c` keeps only `b/c` under the destination.
        let pivot_len = if parents {
            let trimmed = source.strip_prefix("./").unwrap_or(source);
            match trimmed.find("/./") {
                Some(i) => Some(clean_components(&trimmed[..i]).ok_or_else(outside)?.len()),
                None => None,
            }
        } else {
            None
        };
        let components = clean_components(source).ok_or_else(outside)?;
        let first_wild = components.iter().position(|c| has_wildcard(c));

        // Candidates are (written components, matched through a wildcard).
        let mut candidates: Vec<Vec<String>> = vec![Vec::new()];
        for (index, component) in components.iter().enumerate() {
            if !has_wildcard(component) {
                candidates
                    .iter_mut()
                    .for_each(|c| c.push(component.clone()));
                continue;
            }
            let pattern = Pattern::path(component).map_err(|_| ContextError::BadPattern {
                source_path: source.to_string(),
            })?;
            let mut next = Vec::new();
            let first = Some(index) == first_wild;
            for candidate in &candidates {
                let Some(resolved) = resolve_in_root(self.root, candidate, true)? else {
                    // The directory part before the first wildcard must exist (BuildKit fails on lstat).
                    if first {
                        return Err(ContextError::NotFound {
                            source_path: source.to_string(),
                        });
                    }
                    continue;
                };
                let dir = host_path(self.root, &resolved);
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut names: Vec<String> = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(ContextError::io(&dir))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if pattern.matches(&name) {
                        names.push(name);
                    }
                }
                names.sort();
                for name in names {
                    let mut matched = candidate.clone();
                    matched.push(name);
                    // Intermediate matches must be directories to go on; the last may be anything.
                    if index + 1 < components.len() {
                        match resolve_in_root(self.root, &matched, true)? {
                            Some(r) if host_path(self.root, &r).is_dir() => {}
                            _ => continue,
                        }
                    }
                    next.push(matched);
                }
            }
            candidates = next;
        }

        let mut matches = Vec::new();
        for written in candidates {
            let resolved = match resolve_in_root(self.root, &written, true)? {
                Some(r) => r,
                None if first_wild.is_some() => continue,
                None => {
                    return Err(ContextError::NotFound {
                        source_path: source.to_string(),
                    });
                }
            };
            let host = host_path(self.root, &resolved);
            let metadata = std::fs::metadata(&host).map_err(ContextError::io(&host))?;
            let base_len = first_wild.unwrap_or(written.len());
            let exclude_rel = written[base_len.min(written.len())..].join("/");
            if self.ignored(&resolved, metadata.is_dir())
                || self.ignored(&written, metadata.is_dir())
            {
                if first_wild.is_some() {
                    continue;
                }
                return Err(ContextError::NotFound {
                    source_path: source.to_string(),
                });
            }
            if self.excluded(&exclude_rel, metadata.is_dir()) {
                continue;
            }
            let kept_components = written[pivot_len.unwrap_or(0).min(written.len())..].to_vec();
            matches.push(Match {
                written,
                resolved,
                kept_components,
                exclude_rel,
                host_path: host,
                metadata,
            });
        }
        Ok(matches)
    }

    /// Whether `.dockerignore` hides `rel_path` (root-relative, slash-separated, not empty).
    fn ignored_rel(&self, rel_path: &str, is_dir: bool) -> bool {
        self.ignore
            .is_some_and(|m| !m.is_empty() && m.is_excluded(rel_path, is_dir))
    }

    /// Adds everything below directory `host_dir` (root-relative `resolved`, slash-separated),
    /// mapped under `image_dir`. `resolved` and `exclude_rel` are scratch buffers extended for
    /// each entry and restored before returning. Entries are looked up relative to the open
    /// directory, not by their full path.
    fn walk_dir(
        &self,
        host_dir: &Path,
        resolved: &mut String,
        exclude_rel: &mut String,
        image_dir: &str,
        out: &mut Vec<CopyItem>,
    ) -> Result<(), ContextError> {
        let mut entries: Vec<(String, std::fs::DirEntry)> = Vec::new();
        for entry in std::fs::read_dir(host_dir).map_err(ContextError::io(host_dir))? {
            let entry = entry.map_err(ContextError::io(host_dir))?;
            let name = entry
                .file_name()
                .into_string()
                .unwrap_or_else(|name| name.to_string_lossy().into_owned());
            entries.push((name, entry));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let check_filters = self.ignore.is_some_and(|m| !m.is_empty()) || !self.excludes.is_empty();
        let (resolved_len, exclude_rel_len) = (resolved.len(), exclude_rel.len());
        for (name, entry) in entries {
            // `DirEntry::metadata` does not follow symlinks (an fstatat on the directory's fd).
            let metadata = entry
                .metadata()
                .map_err(|e| ContextError::io(entry.path())(e))?;
            let is_dir = metadata.is_dir();
            let host_path = entry.path();
            let image_path = join_image(image_dir, &name);
            push_component(resolved, &name);
            push_component(exclude_rel, &name);
            let filtered = check_filters
                && (self.ignored_rel(resolved, is_dir) || self.excluded(exclude_rel, is_dir));
            let walked = if filtered {
                if is_dir && self.must_search_filtered_dirs() {
                    // A re-included entry below brings its (filtered) directory along.
                    let mut below = Vec::new();
                    let walked =
                        self.walk_dir(&host_path, resolved, exclude_rel, &image_path, &mut below);
                    if walked.is_ok() && !below.is_empty() {
                        out.push(CopyItem {
                            host_path,
                            image_path,
                            metadata,
                        });
                        out.append(&mut below);
                    }
                    walked
                } else {
                    Ok(())
                }
            } else if is_dir {
                out.push(CopyItem {
                    host_path: host_path.clone(),
                    image_path: image_path.clone(),
                    metadata,
                });
                self.walk_dir(&host_path, resolved, exclude_rel, &image_path, out)
            } else {
                out.push(CopyItem {
                    host_path,
                    image_path,
                    metadata,
                });
                Ok(())
            };
            resolved.truncate(resolved_len);
            exclude_rel.truncate(exclude_rel_len);
            walked?;
        }
        Ok(())
    }
}

/// Appends `/name` to a slash-separated relative path (just `name` to an empty one).
fn push_component(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('/');
    }
    path.push_str(name);
}

/// The absolute, clean image path of `dest` (relative destinations are under `workdir`).
fn absolute_dest(dest: &str, workdir: &str) -> String {
    if dest.starts_with('/') {
        clean_path(dest)
    } else {
        clean_path(&format!("/{workdir}/{dest}"))
    }
}

fn join_image(dir: &str, name: &str) -> String {
    let mut path = String::with_capacity(dir.len() + 1 + name.len());
    path.push_str(dir);
    if !dir.ends_with('/') {
        path.push('/');
    }
    path.push_str(name);
    path
}

/// Whether a path component uses `filepath.Match` syntax (wildcards or `\` escapes).
fn has_wildcard(component: &str) -> bool {
    component.contains(['*', '?', '[', '\\'])
}
