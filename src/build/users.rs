//! Resolving `USER` and `--chown` specs (`name`, `uid`, `name:group`, `uid:gid`) against an
//! image's /etc/passwd and /etc/group, the way Docker does.

/// A resolved user: ids, supplementary groups and home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Why a user spec cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("invalid user spec {0:?}")]
    Invalid(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 6 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

/// (name, gid, members) of each /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 || line.starts_with('#') {
            return None;
        }
        let members = fields
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((fields[0], fields[2].parse().ok()?, members))
    })
}

/// Resolves a user spec as `USER` does: a name must exist in passwd; a numeric uid need not.
/// `passwd`/`group` are the image's files (empty when absent).
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let entry = passwd_entries(passwd).find(|e| match user_part.parse::<u32>() {
        Ok(uid) => e.uid == uid,
        Err(_) => e.name == user_part,
    });
    let (uid, mut gid, home, name) = match (user_part.parse::<u32>(), entry) {
        (_, Some(e)) => (e.uid, e.gid, e.home.to_string(), Some(e.name)),
        (Ok(uid), None) => (uid, 0, "/".to_string(), None),
        (Err(_), None) => return Err(UserError::UnknownUser(user_part.to_string())),
    };
    if let Some(group_spec) = group_part {
        gid = resolve_group(group_spec, group)?;
    }
    let additional_gids = match (group_part, name) {
        (None, Some(name)) => group_entries(group)
            .filter(|(_, g, members)| *g != gid && members.contains(&name))
            .map(|(_, g, _)| g)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// Resolves a group name or number.
pub fn resolve_group(spec: &str, group: &str) -> Result<u32, UserError> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    group_entries(group)
        .find(|(name, _, _)| *name == spec)
        .map(|(_, gid, _)| gid)
        .ok_or_else(|| UserError::UnknownGroup(spec.to_string()))
}

/// Resolves a `--chown` spec: `user[:group]`; with a user alone the group is the user's primary
/// group when the user is a known name, else the same number as the uid (Docker's rule).
pub fn resolve_chown(spec: &str, passwd: &str, group: &str) -> Result<(u32, u32), UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => passwd_entries(passwd)
            .find(|e| e.name == user_part)
            .map(|e| e.uid)
            .ok_or_else(|| UserError::UnknownUser(user_part.to_string()))?,
    };
    let gid = match group_part {
        Some(g) if !g.is_empty() => resolve_group(g, group)?,
        Some(_) => return Err(UserError::Invalid(spec.to_string())),
        None => match user_part.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .map(|e| e.gid)
                .unwrap_or(uid),
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1001:\nstaff:x:50:app,other\n";

    #[test]
    fn resolves_names_numbers_and_groups() {
        let app = resolve_user("app", PASSWD, GROUP).unwrap();
        assert_eq!((app.uid, app.gid, app.home.as_str()), (1000, 1001, "/home/app"));
        assert_eq!(app.additional_gids, vec![50]);
        let numeric = resolve_user("4242", "", "").unwrap();
        assert_eq!((numeric.uid, numeric.gid), (4242, 0));
        assert_eq!(resolve_user("app:staff", PASSWD, GROUP).unwrap().gid, 50);
        assert_eq!(resolve_user("1:2", "", "").unwrap().gid, 2);
        assert_eq!(
            resolve_user("nobody", PASSWD, GROUP),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            resolve_user("app:nogroup", PASSWD, GROUP),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
    }

    #[test]
    fn chown_defaults_group_like_docker() {
        assert_eq!(resolve_chown("app", PASSWD, GROUP).unwrap(), (1000, 1001));
        assert_eq!(resolve_chown("55", "", "").unwrap(), (55, 55));
        assert_eq!(resolve_chown("app:staff", PASSWD, GROUP).unwrap(), (1000, 50));
        assert!(resolve_chown("ghost", PASSWD, GROUP).is_err());
    }
}
