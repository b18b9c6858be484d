//! Who may do what to which repository: the `[[auth.access]]` rules, `[auth.groups]` and
//! `anonymous_pull`, evaluated into a set of actions for a user (or nobody) and a repository.

use std::collections::{BTreeMap, BTreeSet};

/// One thing a client can do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    /// The name used in token scopes and config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// Parses a scope action; `*` is not an action (see [`parse_actions`]).
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// A set of actions (small enough to copy).
pub type Actions = BTreeSet<Action>;

/// Every action.
pub fn all_actions() -> Actions {
    [Action::Pull, Action::Push, Action::Delete].into()
}

/// Parses a comma-separated action list as used in scopes (`pull,push`, `*` for all).
/// Unknown actions are dropped: they can never be granted.
pub fn parse_actions(text: &str) -> Actions {
    text.split(',')
        .flat_map(|a| match a.trim() {
            "*" => all_actions().into_iter().collect::<Vec<_>>(),
            other => Action::parse(other).into_iter().collect(),
        })
        .collect()
}

/// Renders actions as `pull,push`.
pub fn format_actions(actions: &Actions) -> String {
    actions
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// One `[[auth.access]]` rule as written in the config file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Repository name glob: `*` matches within one path component, `**` across components.
    pub repository: String,
    /// User names this rule applies to; `"*"` means every authenticated user.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names (from `[auth.groups]`) this rule applies to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// What the rule allows.
    pub actions: Vec<Action>,
}

/// The evaluated access policy.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// No rules configured: every authenticated user may do everything.
    rules: Vec<AccessRule>,
    groups: BTreeMap<String, Vec<String>>,
    anonymous_pull: bool,
}

impl AccessPolicy {
    pub fn new(
        rules: Vec<AccessRule>,
        groups: BTreeMap<String, Vec<String>>,
        anonymous_pull: bool,
    ) -> AccessPolicy {
        AccessPolicy {
            rules,
            groups,
            anonymous_pull,
        }
    }

    /// Checks that every group a rule names exists, naming the first that does not.
    pub fn unknown_group(&self) -> Option<&str> {
        self.rules
            .iter()
            .flat_map(|rule| rule.groups.iter())
            .find(|group| !self.groups.contains_key(group.as_str()))
            .map(String::as_str)
    }

    /// What `user` (`None`: an anonymous client) may do to `repository`.
    pub fn allowed(&self, user: Option<&str>, repository: &str) -> Actions {
        let mut actions = Actions::new();
        if self.anonymous_pull {
            actions.insert(Action::Pull);
        }
        let Some(user) = user else {
            return actions;
        };
        if self.rules.is_empty() {
            return all_actions();
        }
        for rule in &self.rules {
            if self.rule_applies(rule, user) && glob_matches(&rule.repository, repository) {
                actions.extend(rule.actions.iter().copied());
            }
        }
        actions
    }

    fn rule_applies(&self, rule: &AccessRule, user: &str) -> bool {
        rule.users.iter().any(|u| u == "*" || u == user)
            || rule.groups.iter().any(|group| {
                self.groups
                    .get(group)
                    .is_some_and(|members| members.iter().any(|m| m == user))
            })
    }
}

/// Matches a repository name against a glob: `*` matches any run of characters other than `/`,
/// `**` any run including `/`; everything else matches itself.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.as_bytes();
    let name = name.as_bytes();
    // Iterative matcher with backtracking over the most recent star (bounded: O(p * n)).
    fn matches(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => {
                let double = p.get(1) == Some(&b'*');
                let rest = if double { &p[2..] } else { &p[1..] };
                let mut i = 0;
                loop {
                    if matches(rest, &n[i..]) {
                        return true;
                    }
                    if i == n.len() || (!double && n[i] == b'/') {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(&c) => n.first() == Some(&c) && matches(&p[1..], &n[1..]),
        }
    }
    matches(pattern, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repository: &str, users: &[&str], groups: &[&str], actions: &[Action]) -> AccessRule {
        AccessRule {
            repository: repository.into(),
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            actions: actions.to_vec(),
        }
    }

    #[test]
    fn globs_match_within_and_across_components() {
        assert!(glob_matches("team/*", "team/app"));
        assert!(!glob_matches("team/*", "team/app/sub"));
        assert!(glob_matches("team/**", "team/app/sub"));
        assert!(glob_matches("**", "a/b/c"));
        assert!(glob_matches("*-dev", "app-dev"));
        assert!(!glob_matches("team/*", "teamx/app"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
    }

    #[test]
    fn rules_grant_per_user_and_group_and_nothing_else() {
        let groups = BTreeMap::from([("devs".to_string(), vec!["bob".to_string()])]);
        let policy = AccessPolicy::new(
            vec![
                rule("alice/**", &["alice"], &[], &[Action::Pull, Action::Push]),
                rule("shared/*", &[], &["devs"], &[Action::Pull]),
                rule("public/*", &["*"], &[], &[Action::Pull]),
            ],
            groups,
            false,
        );
        assert_eq!(
            policy.allowed(Some("alice"), "alice/app"),
            [Action::Pull, Action::Push].into()
        );
        assert!(policy.allowed(Some("bob"), "alice/app").is_empty());
        assert_eq!(
            policy.allowed(Some("bob"), "shared/x"),
            [Action::Pull].into()
        );
        assert_eq!(
            policy.allowed(Some("carol"), "public/x"),
            [Action::Pull].into()
        );
        assert!(policy.allowed(None, "public/x").is_empty());
    }

    #[test]
    fn no_rules_means_users_do_anything_and_anonymous_at_most_pulls() {
        let policy = AccessPolicy::new(Vec::new(), BTreeMap::new(), true);
        assert_eq!(policy.allowed(Some("x"), "a"), all_actions());
        assert_eq!(policy.allowed(None, "a"), [Action::Pull].into());
        let closed = AccessPolicy::new(Vec::new(), BTreeMap::new(), false);
        assert!(closed.allowed(None, "a").is_empty());
    }

    #[test]
    fn parses_scope_actions() {
        assert_eq!(
            parse_actions("pull,push"),
            [Action::Pull, Action::Push].into()
        );
        assert_eq!(parse_actions("*"), all_actions());
        assert!(parse_actions("admin").is_empty());
        assert_eq!(format_actions(&all_actions()), "pull,push,delete");
    }
}
