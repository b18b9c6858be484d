//! Which tags and manifests a collection removes: retention rules (keep the last N tags
//! matching a pattern; delete untagged manifests after some time), tag immutability, and the
//! glob patterns both use. Pure decisions over a snapshot of one repository; no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;

/// A glob over repository names or tags: `*` matches within one path segment (no `/`), `**`
/// matches anything, `?` one character other than `/`; everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        Pattern(text.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, text: &str) -> bool {
        let pattern: Vec<char> = self.0.chars().collect();
        let text: Vec<char> = text.chars().collect();
        glob_match(&pattern, &text)
    }
}

fn glob_match(pattern: &[char], text: &[char]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some('*') if pattern.get(1) == Some(&'*') => {
            let rest = &pattern[2..];
            (0..=text.len()).any(|skip| glob_match(rest, &text[skip..]))
        }
        Some('*') => {
            let rest = &pattern[1..];
            for skip in 0..=text.len() {
                if glob_match(rest, &text[skip..]) {
                    return true;
                }
                if text.get(skip) == Some(&'/') {
                    break;
                }
            }
            false
        }
        Some('?') => {
            text.first().is_some_and(|c| *c != '/') && glob_match(&pattern[1..], &text[1..])
        }
        Some(c) => text.first() == Some(c) && glob_match(&pattern[1..], &text[1..]),
    }
}

/// One `[[gc.retention]]` rule.
#[derive(Debug, Clone)]
pub struct RetentionRule {
    /// Repositories the rule applies to.
    pub repository: Pattern,
    /// Tags `keep_last` counts and may delete.
    pub tags: Pattern,
    /// Keep only the newest N matching tags (newest = manifest pushed last); delete the others.
    pub keep_last: Option<usize>,
    /// Delete manifests that no tag, index or subject keeps once they are this old.
    pub untagged_after: Option<Duration>,
}

/// `[[immutable]]` rules: tags that, once set, never move and are never deleted.
#[derive(Debug, Clone, Default)]
pub struct ImmutableTags {
    pub rules: Vec<(Pattern, Pattern)>,
}

impl ImmutableTags {
    pub fn is_immutable(&self, repository: &str, tag: &str) -> bool {
        self.rules
            .iter()
            .any(|(repo, tags)| repo.matches(repository) && tags.matches(tag))
    }
}

/// A manifest of a repository as retention sees it.
#[derive(Debug, Clone)]
pub struct ManifestNode {
    pub linked_at: SystemTime,
    /// Child manifests (of an index).
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    /// Config and layer blobs.
    pub blobs: Vec<Digest>,
}

/// One repository: its tags and manifests.
#[derive(Debug, Clone, Default)]
pub struct RepoSnapshot {
    pub tags: BTreeMap<String, Digest>,
    pub manifests: BTreeMap<Digest, ManifestNode>,
}

/// What retention removes from one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoPlan {
    pub tags: Vec<String>,
    pub manifests: Vec<Digest>,
}

/// Decides which tags and manifests of `repository` go, for a collection started at `started`.
///
/// Roots are the tags that stay and every untagged manifest, except that untagged manifests
/// older than a matching rule's `untagged_after`, and manifests whose last tag `keep_last`
/// removes, are not roots. Kept are the roots, the children of kept indexes and the
/// referrers of kept manifests (to a fixed point); every other manifest goes.
pub fn plan_repository(
    repository: &str,
    snapshot: &RepoSnapshot,
    rules: &[RetentionRule],
    immutable: &ImmutableTags,
    started: SystemTime,
) -> RepoPlan {
    let rules: Vec<&RetentionRule> = rules
        .iter()
        .filter(|rule| rule.repository.matches(repository))
        .collect();
    let linked_at = |digest: &Digest| {
        snapshot
            .manifests
            .get(digest)
            .map_or(SystemTime::UNIX_EPOCH, |m| m.linked_at)
    };

    let mut deleted_tags = BTreeSet::new();
    for rule in &rules {
        let Some(keep) = rule.keep_last else {
            continue;
        };
        let mut matching: Vec<(&String, &Digest)> = snapshot
            .tags
            .iter()
            .filter(|(tag, _)| rule.tags.matches(tag) && !immutable.is_immutable(repository, tag))
            .collect();
        // Newest first; ties by tag name, highest first.
        matching.sort_by(|a, b| linked_at(b.1).cmp(&linked_at(a.1)).then(b.0.cmp(a.0)));
        deleted_tags.extend(matching.into_iter().skip(keep).map(|(tag, _)| tag.clone()));
    }

    let kept_tag_targets: BTreeSet<&Digest> = snapshot
        .tags
        .iter()
        .filter(|(tag, _)| !deleted_tags.contains(*tag))
        .map(|(_, digest)| digest)
        .collect();
    let retired: BTreeSet<&Digest> = snapshot
        .tags
        .iter()
        .filter(|(tag, _)| deleted_tags.contains(*tag))
        .map(|(_, digest)| digest)
        .collect();
    let untagged_after = rules.iter().filter_map(|r| r.untagged_after).min();
    let untagged_cutoff = untagged_after.and_then(|after| started.checked_sub(after));

    let mut kept: BTreeSet<Digest> = snapshot
        .manifests
        .iter()
        .filter(|(digest, node)| {
            kept_tag_targets.contains(digest)
                || (!retired.contains(digest)
                    && untagged_cutoff.is_none_or(|cutoff| node.linked_at >= cutoff))
        })
        .map(|(digest, _)| digest.clone())
        .collect();
    loop {
        let mut more = Vec::new();
        for (digest, node) in &snapshot.manifests {
            if kept.contains(digest) {
                more.extend(node.children.iter().filter(|c| !kept.contains(*c)).cloned());
            } else if node.subject.as_ref().is_some_and(|s| kept.contains(s)) {
                more.push(digest.clone());
            }
        }
        if more.is_empty() {
            break;
        }
        kept.extend(more);
    }
    RepoPlan {
        tags: deleted_tags.into_iter().collect(),
        manifests: snapshot
            .manifests
            .keys()
            .filter(|digest| !kept.contains(*digest))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn node(linked: u64) -> ManifestNode {
        ManifestNode {
            linked_at: at(linked),
            children: Vec::new(),
            subject: None,
            blobs: Vec::new(),
        }
    }

    fn rule(keep_last: Option<usize>, untagged_after: Option<u64>) -> RetentionRule {
        RetentionRule {
            repository: Pattern::new("team/*"),
            tags: Pattern::new("v*"),
            keep_last,
            untagged_after: untagged_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn globs_match_segments_and_everything() {
        assert!(Pattern::new("team/*").matches("team/app"));
        assert!(!Pattern::new("team/*").matches("team/app/x"));
        assert!(Pattern::new("team/**").matches("team/app/x"));
        assert!(Pattern::new("v1.?").matches("v1.2"));
        assert!(!Pattern::new("v1.?").matches("v1.22"));
        assert!(Pattern::new("*").matches("latest"));
        assert!(!Pattern::new("release").matches("releases"));
    }

    #[test]
    fn without_rules_nothing_goes_even_untagged() {
        let mut snapshot = RepoSnapshot::default();
        snapshot.manifests.insert(d(1), node(10));
        snapshot.manifests.insert(d(2), node(20));
        snapshot.tags.insert("v1".into(), d(1));
        let plan = plan_repository(
            "team/app",
            &snapshot,
            &[],
            &ImmutableTags::default(),
            at(1000),
        );
        assert_eq!(plan, RepoPlan::default());
    }

    #[test]
    fn keep_last_removes_older_tags_and_their_manifests() {
        let mut snapshot = RepoSnapshot::default();
        for n in 1..=4u8 {
            snapshot.manifests.insert(d(n), node(u64::from(n) * 10));
            snapshot.tags.insert(format!("v{n}"), d(n));
        }
        // d(1) also carries a tag the rule does not count: it stays.
        snapshot.tags.insert("latest".into(), d(1));
        let plan = plan_repository(
            "team/app",
            &snapshot,
            &[rule(Some(2), None)],
            &ImmutableTags::default(),
            at(1000),
        );
        assert_eq!(plan.tags, ["v1", "v2"]);
        assert_eq!(plan.manifests, [d(2)]);
        // Another repository is untouched.
        let other = plan_repository(
            "web",
            &snapshot,
            &[rule(Some(2), None)],
            &ImmutableTags::default(),
            at(1000),
        );
        assert_eq!(other, RepoPlan::default());
    }

    #[test]
    fn immutable_tags_are_never_retired() {
        let mut snapshot = RepoSnapshot::default();
        for n in 1..=3u8 {
            snapshot.manifests.insert(d(n), node(u64::from(n)));
            snapshot.tags.insert(format!("v{n}"), d(n));
        }
        let immutable = ImmutableTags {
            rules: vec![(Pattern::new("team/**"), Pattern::new("v1"))],
        };
        let plan = plan_repository(
            "team/app",
            &snapshot,
            &[rule(Some(1), None)],
            &immutable,
            at(100),
        );
        assert_eq!(plan.tags, ["v2"]);
    }

    #[test]
    fn untagged_after_keeps_index_children_and_referrers_of_kept_manifests() {
        let mut snapshot = RepoSnapshot::default();
        let mut index = node(10);
        index.children = vec![d(2), d(3)];
        snapshot.manifests.insert(d(1), index);
        snapshot.manifests.insert(d(2), node(10));
        snapshot.manifests.insert(d(3), node(10));
        snapshot.tags.insert("v1".into(), d(1));
        // A signature of a kept child, and one of a manifest that goes.
        let mut signature = node(10);
        signature.subject = Some(d(2));
        snapshot.manifests.insert(d(4), signature);
        snapshot.manifests.insert(d(5), node(10));
        let mut orphan_signature = node(10);
        orphan_signature.subject = Some(d(5));
        snapshot.manifests.insert(d(6), orphan_signature);
        // Untagged but young: stays.
        snapshot.manifests.insert(d(7), node(990));
        let plan = plan_repository(
            "team/app",
            &snapshot,
            &[rule(None, Some(60))],
            &ImmutableTags::default(),
            at(1000),
        );
        assert!(plan.tags.is_empty());
        let mut expected = vec![d(5), d(6)];
        expected.sort();
        assert_eq!(plan.manifests, expected);
    }
}
