//! What a server is built from: its plan, image, location and SSH key, resolved once and
//! kept in its status ([`Resolved`]). A reference is looked up again only when the server
//! names another one; a catalog entry or key deleted later changes nothing about a server
//! built from it. A reference that never resolved keeps the server from being built (its
//! phase says so); one that stopped resolving after a change of the server's spec only shows
//! in `ReferencesResolved`.

use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::{Context, Result};
use crate::api::{Named, Resolved, ResolvedKey, VpsServer, VpsSshKey, ssh};

/// A reference that does not resolve: a CamelCase reason and a message.
pub type Problem = (String, String);

/// The outcome of resolving a server's references.
#[derive(Debug)]
pub struct Resolution {
    /// What the server is built from; `None` while a reference never resolved.
    pub resolved: Option<Resolved>,
    /// The first reference that does not resolve now.
    pub problem: Option<Problem>,
}

impl Resolution {
    /// What keeps the server from being built at all: a problem with nothing resolved.
    pub fn fault(&self) -> Option<(&str, &str)> {
        self.problem.as_ref().filter(|_| self.resolved.is_none()).map(|(r, m)| (r.as_str(), m.as_str()))
    }
}

fn missing(reason: &str, kind: &str, name: &str) -> Problem {
    (reason.to_string(), format!("{kind} {name:?} does not exist"))
}

/// `old` when it has the wanted name, else a fresh lookup; on a failed lookup `old` stays
/// (and the problem is noted).
fn pick<T: Clone>(
    wanted: &str,
    old: Option<&Named<T>>,
    lookup: impl FnOnce() -> std::result::Result<T, Problem>,
    problem: &mut Option<Problem>,
) -> Option<Named<T>> {
    if let Some(old) = old.filter(|o| o.name == wanted) {
        return Some(old.clone());
    }
    match lookup() {
        Ok(spec) => Some(Named { name: wanted.to_string(), spec }),
        Err(e) => {
            problem.get_or_insert(e);
            old.cloned()
        }
    }
}

/// Resolves `server`'s references, starting from what its status recorded (`old`).
pub async fn resolve(server: &VpsServer, ctx: &Context, ns: &str, old: Option<&Resolved>) -> Result<Resolution> {
    let spec = &server.spec;
    let mut problem = None;
    let plan = pick(
        &spec.plan,
        old.map(|r| &r.plan),
        || {
            ctx.plans
                .get(&ObjectRef::new(&spec.plan))
                .map(|p| p.spec.clone())
                .ok_or_else(|| missing("PlanNotFound", "VpsPlan", &spec.plan))
        },
        &mut problem,
    );
    // Disks only grow: a resize to a plan with a smaller disk keeps the plan the server has.
    let plan = match (plan, old.map(|r| &r.plan)) {
        (Some(new), Some(had)) if new.name != had.name && new.spec.storage < had.spec.storage => {
            let message = format!(
                "VpsPlan {:?} has a {} GiB disk, smaller than the server's {} GiB: disks only grow; the server keeps \
                 plan {:?}",
                new.name, new.spec.storage, had.spec.storage, had.name
            );
            problem.get_or_insert(("DiskWouldShrink".to_string(), message));
            Some(had.clone())
        }
        (plan, _) => plan,
    };
    let image = pick(
        &spec.os,
        old.map(|r| &r.image),
        || {
            ctx.images
                .get(&ObjectRef::new(&spec.os))
                .map(|i| i.spec.clone())
                .ok_or_else(|| missing("ImageNotFound", "VpsImage", &spec.os))
        },
        &mut problem,
    );
    let location = pick(
        &spec.location,
        old.map(|r| &r.location),
        || {
            ctx.locations
                .get(&ObjectRef::new(&spec.location))
                .map(|l| l.spec.clone())
                .ok_or_else(|| missing("LocationNotFound", "VpsLocation", &spec.location))
        },
        &mut problem,
    );
    let old_key = old.and_then(|r| r.ssh_key.as_ref());
    let ssh_key = match &spec.ssh_key {
        None => None,
        Some(name) if old_key.is_some_and(|k| k.name == *name) => old_key.cloned(),
        Some(name) => match key(ctx, ns, name).await? {
            Ok(key) => Some(key),
            Err(e) => {
                problem.get_or_insert(e);
                old_key.cloned()
            }
        },
    };
    // Built once means built: later problems leave what was resolved in place.
    let resolved = match (plan, image, location) {
        (Some(plan), Some(image), Some(location)) if old.is_some() || problem.is_none() => {
            Some(Resolved { plan, image, location, ssh_key })
        }
        _ => None,
    };
    Ok(Resolution { resolved, problem })
}

/// The key `name` of namespace `ns`, parsed (a key made with kubectl is checked here).
async fn key(ctx: &Context, ns: &str, name: &str) -> Result<std::result::Result<ResolvedKey, Problem>> {
    let Some(key) = Api::<VpsSshKey>::namespaced(ctx.client.clone(), ns).get_opt(name).await? else {
        return Ok(Err(missing("SshKeyNotFound", "VpsSshKey", name)));
    };
    Ok(match ssh::parse(&key.spec.public_key) {
        Ok(parsed) => Ok(ResolvedKey { name: name.to_string(), public_key: parsed.line() }),
        Err(e) => Err(("SshKeyInvalid".to_string(), format!("VpsSshKey {name:?} {e}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_reference_is_not_looked_up_and_a_failed_lookup_keeps_the_old() {
        let old = Named { name: "a".to_string(), spec: 1 };
        let mut problem = None;
        let kept = pick("a", Some(&old), || panic!("no lookup for a kept reference"), &mut problem);
        assert_eq!((kept, &problem), (Some(old.clone()), &None));
        let fresh = pick("b", Some(&old), || Ok(2), &mut problem);
        assert_eq!(fresh, Some(Named { name: "b".to_string(), spec: 2 }));
        let failed = pick("c", Some(&old), || Err(missing("PlanNotFound", "VpsPlan", "c")), &mut problem);
        assert_eq!(failed, Some(old), "the server stays on what it was built from");
        assert_eq!(problem.as_ref().map(|p| p.0.as_str()), Some("PlanNotFound"));
        let mut problem = None;
        assert_eq!(pick::<i32>("x", None, || Err(missing("R", "K", "x")), &mut problem), None);
        assert!(problem.is_some());
    }
}
