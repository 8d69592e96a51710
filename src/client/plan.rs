//! What a command does, decided from its flags alone: the one request it sends, how its
//! answer is shown, and whether it follows pages or waits.

use ::http::Method;
use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::http::Request;
use super::wait::{Until, Wait};
use super::{ClientCommand, ServersCommand, SshKeysCommand, WaitArgs};

/// How an answer is shown in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shows {
    Servers,
    Server,
    Created,
    Action,
    /// A server deleted: its id.
    Deleted(u64),
    Plans,
    Os,
    Locations,
    SshKeys,
    SshKey,
    /// A key deleted: its id.
    SshKeyDeleted(u64),
    Actions,
    TrackedAction,
    Backups,
    /// A backup deleted: its id.
    BackupDeleted(u64),
}

impl Shows {
    /// Whether the answer is a page of a list.
    pub(super) fn is_list(self) -> bool {
        matches!(
            self,
            Shows::Servers
                | Shows::Plans
                | Shows::Os
                | Shows::Locations
                | Shows::SshKeys
                | Shows::Actions
                | Shows::Backups
        )
    }

    /// What a list holds, for "No servers found.".
    pub(super) fn plural(self) -> &'static str {
        match self {
            Shows::Servers => "servers",
            Shows::Plans => "plans",
            Shows::Os => "OS images",
            Shows::Locations => "locations",
            Shows::Actions => "actions",
            Shows::Backups => "backups",
            _ => "SSH keys",
        }
    }
}

/// What one command does, decided from its flags alone.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub(super) request: Request,
    pub(super) shows: Shows,
    /// Follow `next` to the last page.
    pub(super) all_pages: bool,
    pub(super) wait: Option<Wait>,
}

pub(super) fn server_path(id: u64) -> String {
    format!("/api/v1/servers/{id}/")
}

/// The request of a command, how its answer is shown, and what follows it.
pub(super) fn plan(command: &ClientCommand) -> Result<Plan> {
    let simple = |request: Request, shows: Shows| Plan { request, shows, all_pages: false, wait: None };
    let listing = |path: &str, shows: Shows| Plan { all_pages: true, ..simple(Request::get(path), shows) };
    let waiting =
        |w: &WaitArgs, id: Option<u64>, until: Until| w.wait.then_some(Wait { id, until, timeout: w.wait_timeout });
    Ok(match command {
        ClientCommand::Servers(ServersCommand::List(l)) => {
            let page_size = l.page_size.or(l.all.then_some(1000));
            let pairs: Vec<(&str, String)> = [
                ("status", l.status.clone()),
                ("location", l.location.clone()),
                ("page", l.page.map(|p| p.to_string())),
                ("page_size", page_size.map(|p| p.to_string())),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            Plan { all_pages: l.all, ..simple(Request::get("/api/v1/servers/").with_query(&pairs), Shows::Servers) }
        }
        ClientCommand::Servers(ServersCommand::Get { id }) => simple(Request::get(server_path(*id)), Shows::Server),
        ClientCommand::Servers(ServersCommand::Create(c)) => {
            let mut body = json!({"name": c.name, "plan_id": c.plan_id, "os_id": c.os_id, "location": c.location});
            if let Some(h) = &c.hostname {
                body["hostname"] = json!(h);
            }
            if let Some(k) = c.ssh_key_id {
                body["ssh_key_id"] = json!(k);
            }
            if let Some(b) = c.backups {
                body["backups_enabled"] = json!(b);
            }
            let mut request = Request::new(Method::POST, "/api/v1/servers/").with_body(body);
            request.idempotency_key = Some(format!("vps-cli-{:032x}", rand::random::<u128>()));
            Plan { wait: waiting(&c.wait, None, Until::Settled("active")), ..simple(request, Shows::Created) }
        }
        ClientCommand::Servers(ServersCommand::Update(u)) => {
            let mut body = serde_json::Map::new();
            if let Some(n) = &u.name {
                body.insert("name".into(), json!(n));
            }
            if let Some(h) = &u.hostname {
                body.insert("hostname".into(), json!(h));
            }
            if let Some(b) = u.backups {
                body.insert("backups_enabled".into(), json!(b));
            }
            anyhow::ensure!(!body.is_empty(), "nothing to update: give --name, --hostname or --backups");
            simple(Request::new(Method::PATCH, server_path(u.id)).with_body(Value::Object(body)), Shows::Server)
        }
        ClientCommand::Servers(ServersCommand::Delete(p)) => Plan {
            wait: waiting(&p.wait, Some(p.id), Until::Gone),
            ..simple(Request::new(Method::DELETE, server_path(p.id)), Shows::Deleted(p.id))
        },
        ClientCommand::Servers(ServersCommand::Stop(s)) => {
            let mut request = Request::new(Method::POST, format!("/api/v1/servers/{}/stop/", s.id));
            if s.force {
                request = request.with_body(json!({"force": true}));
            }
            Plan { wait: waiting(&s.wait, Some(s.id), Until::Settled("stopped")), ..simple(request, Shows::Action) }
        }
        ClientCommand::Servers(ServersCommand::Start(p)) => {
            let request = Request::new(Method::POST, format!("/api/v1/servers/{}/start/", p.id));
            Plan { wait: waiting(&p.wait, Some(p.id), Until::Settled("active")), ..simple(request, Shows::Action) }
        }
        ClientCommand::Servers(ServersCommand::Reboot(r)) => {
            let mut request = Request::new(Method::POST, format!("/api/v1/servers/{}/reboot/", r.id));
            if r.hard {
                request = request.with_body(json!({"type": "hard"}));
            }
            Plan { wait: waiting(&r.wait, Some(r.id), Until::Settled("active")), ..simple(request, Shows::Action) }
        }
        ClientCommand::Servers(ServersCommand::Resize(r)) => {
            let request = Request::new(Method::POST, format!("/api/v1/servers/{}/resize/", r.id))
                .with_body(json!({"plan_id": r.plan_id}));
            simple(request, Shows::Action)
        }
        ClientCommand::Servers(ServersCommand::Rebuild(r)) => {
            let mut body = json!({"os_id": r.os_id});
            if let Some(k) = r.ssh_key_id {
                body["ssh_key_id"] = json!(k);
            } else if r.no_ssh_key {
                body["ssh_key_id"] = Value::Null;
            }
            let request = Request::new(Method::POST, format!("/api/v1/servers/{}/rebuild/", r.id)).with_body(body);
            simple(request, Shows::Action)
        }
        ClientCommand::Servers(ServersCommand::Restore { id, backup_id }) => {
            let request = Request::new(Method::POST, format!("/api/v1/servers/{id}/restore/"))
                .with_body(json!({"backup_id": backup_id}));
            simple(request, Shows::Action)
        }
        ClientCommand::Servers(ServersCommand::Actions { id }) => {
            listing(&format!("/api/v1/servers/{id}/actions/"), Shows::Actions)
        }
        ClientCommand::Servers(ServersCommand::Backups { id }) => {
            listing(&format!("/api/v1/servers/{id}/backups/"), Shows::Backups)
        }
        ClientCommand::Servers(ServersCommand::Backup { id }) => {
            simple(Request::new(Method::POST, format!("/api/v1/servers/{id}/backups/")), Shows::Action)
        }
        ClientCommand::Servers(ServersCommand::DeleteBackup { id, backup_id }) => simple(
            Request::new(Method::DELETE, format!("/api/v1/servers/{id}/backups/{backup_id}/")),
            Shows::BackupDeleted(*backup_id),
        ),
        ClientCommand::Action { id } => simple(Request::get(format!("/api/v1/actions/{id}/")), Shows::TrackedAction),
        ClientCommand::Plans => listing("/api/v1/plans/", Shows::Plans),
        ClientCommand::Os => listing("/api/v1/os/", Shows::Os),
        ClientCommand::Locations => listing("/api/v1/locations/", Shows::Locations),
        ClientCommand::SshKeys(SshKeysCommand::List) => listing("/api/v1/ssh-keys/", Shows::SshKeys),
        ClientCommand::SshKeys(SshKeysCommand::Get { id }) => {
            simple(Request::get(format!("/api/v1/ssh-keys/{id}/")), Shows::SshKey)
        }
        ClientCommand::SshKeys(SshKeysCommand::Create { name, public_key, public_key_file }) => {
            let key = match (public_key, public_key_file) {
                (Some(k), _) => k.trim().to_string(),
                (None, Some(file)) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
                    .trim()
                    .to_string(),
                (None, None) => anyhow::bail!("give --public-key or --public-key-file"),
            };
            let body = json!({"name": name, "public_key": key});
            simple(Request::new(Method::POST, "/api/v1/ssh-keys/").with_body(body), Shows::SshKey)
        }
        ClientCommand::SshKeys(SshKeysCommand::Delete { id }) => {
            simple(Request::new(Method::DELETE, format!("/api/v1/ssh-keys/{id}/")), Shows::SshKeyDeleted(*id))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::client::{ClientArgs, Output};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClientArgs,
    }

    fn parse(line: &str) -> ClientArgs {
        let words = std::iter::once("client").chain(line.split_whitespace());
        Cli::try_parse_from(words).unwrap_or_else(|e| panic!("{line}: {e}")).args
    }

    fn plan_of(line: &str) -> Plan {
        plan(&parse(line).command).unwrap()
    }

    fn query(p: &Plan) -> &str {
        p.request.query.as_deref().unwrap_or("")
    }

    #[test]
    fn lists_map_to_their_query() {
        let p = plan_of("servers list");
        assert_eq!(
            (p.request.method.clone(), p.request.path.as_str(), query(&p)),
            (Method::GET, "/api/v1/servers/", "")
        );
        assert!(!p.all_pages && p.request.body.is_none() && p.wait.is_none());
        let p = plan_of("servers list --status active --location us-west --page 2 --page-size 10");
        assert_eq!(query(&p), "status=active&location=us-west&page=2&page_size=10");
        let p = plan_of("servers list --all --status stopped");
        assert_eq!((query(&p), p.all_pages), ("status=stopped&page_size=1000", true));
        assert_eq!(query(&plan_of("servers list --all --page-size 5")), "page_size=5");
        let odd = plan_of("servers list --location a&b=c");
        assert_eq!(query(&odd), "location=a%26b%3Dc");
        for (line, path) in [
            ("plans", "/api/v1/plans/"),
            ("os", "/api/v1/os/"),
            ("locations", "/api/v1/locations/"),
            ("ssh-keys list", "/api/v1/ssh-keys/"),
        ] {
            let p = plan_of(line);
            assert_eq!((p.request.path.as_str(), p.all_pages, p.request.method.clone()), (path, true, Method::GET));
        }
        assert!(Cli::try_parse_from(["client", "servers", "list", "--all", "--page", "2"]).is_err());
    }

    #[test]
    fn create_sends_only_what_was_given() {
        let p = plan_of("servers create --name web-1 --plan-id 1 --os-id 5 --location us-west");
        assert_eq!((p.request.method.clone(), p.request.path.as_str()), (Method::POST, "/api/v1/servers/"));
        assert_eq!(p.request.body, Some(json!({"name": "web-1", "plan_id": 1, "os_id": 5, "location": "us-west"})));
        assert!(p.request.idempotency_key.as_deref().is_some_and(|k| k.starts_with("vps-cli-") && k.len() == 40));
        assert_eq!((p.shows, p.wait.clone()), (Shows::Created, None));
        let p = plan_of(
            "servers create --name web-1 --plan-id 2 --os-id 3 --location us-east --hostname web.example.com \
             --ssh-key-id 4 --backups --wait --wait-timeout 90s",
        );
        assert_eq!(
            p.request.body,
            Some(json!({"name": "web-1", "plan_id": 2, "os_id": 3, "location": "us-east",
                        "hostname": "web.example.com", "ssh_key_id": 4, "backups_enabled": true}))
        );
        assert_eq!(p.wait, Some(Wait { id: None, until: Until::Settled("active"), timeout: Duration::from_secs(90) }));
        let p = plan_of("servers create --name w --plan-id 1 --os-id 5 --location us-west --backups=false");
        assert_eq!(p.request.body.unwrap()["backups_enabled"], false);
        // A bad name is the API's to refuse, not taken for a flag.
        let p = plan_of("servers create --name -bad- --plan-id 1 --os-id 5 --location us-west");
        assert_eq!(p.request.body.unwrap()["name"], "-bad-");
        // Required flags are checked before anything is sent.
        assert!(Cli::try_parse_from(["client", "servers", "create", "--name", "w"]).is_err());
        assert!(Cli::try_parse_from(["client", "servers", "create", "--name", "w", "--plan-id", "x"]).is_err());
    }

    #[test]
    fn update_is_a_patch_of_the_given_fields() {
        let p = plan_of("servers update 12 --name new-name");
        assert_eq!((p.request.method.clone(), p.request.path.as_str()), (Method::PATCH, "/api/v1/servers/12/"));
        assert_eq!(p.request.body, Some(json!({"name": "new-name"})));
        let p = plan_of("servers update 12 --hostname h.example.com --backups=false");
        assert_eq!(p.request.body, Some(json!({"hostname": "h.example.com", "backups_enabled": false})));
        assert_eq!(plan_of("servers update 12 --backups").request.body, Some(json!({"backups_enabled": true})));
        let err = plan(&parse("servers update 12").command).unwrap_err();
        assert!(err.to_string().contains("nothing to update"), "{err}");
    }

    #[test]
    fn power_and_delete_map_to_their_paths_and_waits() {
        for (verb, expect) in [("start", "active"), ("stop", "stopped"), ("reboot", "active")] {
            let p = plan_of(&format!("servers {verb} 7"));
            assert_eq!(
                (p.request.method.clone(), p.request.path.clone()),
                (Method::POST, format!("/api/v1/servers/7/{verb}/"))
            );
            assert_eq!((p.request.body.clone(), p.shows, p.wait.clone()), (None, Shows::Action, None));
            let p = plan_of(&format!("servers {verb} 7 --wait"));
            assert_eq!(
                p.wait,
                Some(Wait { id: Some(7), until: Until::Settled(expect), timeout: Duration::from_secs(600) })
            );
        }
        let p = plan_of("servers resize 7 --plan-id 2");
        assert_eq!(
            (p.request.method.clone(), p.request.path.as_str(), p.request.body.clone()),
            (Method::POST, "/api/v1/servers/7/resize/", Some(json!({"plan_id": 2})))
        );
        for (args, body) in [
            ("", json!({"os_id": 3})),
            (" --ssh-key-id 4", json!({"os_id": 3, "ssh_key_id": 4})),
            (" --no-ssh-key", json!({"os_id": 3, "ssh_key_id": null})),
        ] {
            let p = plan_of(&format!("servers rebuild 7 --os-id 3{args}"));
            assert_eq!((p.request.path.as_str(), p.request.body.clone()), ("/api/v1/servers/7/rebuild/", Some(body)));
        }
        let p = plan_of("servers actions 7");
        assert_eq!(
            (p.request.path.as_str(), p.shows, p.all_pages),
            ("/api/v1/servers/7/actions/", Shows::Actions, true)
        );
        let p = plan_of("servers backups 7");
        assert_eq!((p.request.path.as_str(), p.shows), ("/api/v1/servers/7/backups/", Shows::Backups));
        let p = plan_of("servers stop 7 --force");
        assert_eq!(
            (p.request.path.as_str(), p.request.body.clone()),
            ("/api/v1/servers/7/stop/", Some(json!({"force": true})))
        );
        assert_eq!(plan_of("servers stop 7").request.body, None);
        let p = plan_of("servers reboot 7 --hard");
        assert_eq!(
            (p.request.path.as_str(), p.request.body.clone()),
            ("/api/v1/servers/7/reboot/", Some(json!({"type": "hard"})))
        );
        assert_eq!(plan_of("servers reboot 7").request.body, None);
        let p = plan_of("servers restore 7 3");
        assert_eq!(
            (p.request.path.as_str(), p.request.body.clone()),
            ("/api/v1/servers/7/restore/", Some(json!({"backup_id": 3})))
        );
        let p = plan_of("servers backup 7");
        assert_eq!((p.request.method.clone(), p.request.path.as_str()), (Method::POST, "/api/v1/servers/7/backups/"));
        let p = plan_of("servers delete-backup 7 3");
        assert_eq!(
            (p.request.method.clone(), p.request.path.as_str(), p.shows),
            (Method::DELETE, "/api/v1/servers/7/backups/3/", Shows::BackupDeleted(3))
        );
        let p = plan_of("action 12");
        assert_eq!((p.request.path.as_str(), p.shows), ("/api/v1/actions/12/", Shows::TrackedAction));
        let p = plan_of("servers delete 7 --wait --wait-timeout 5s");
        assert_eq!((p.request.method.clone(), p.request.path.as_str()), (Method::DELETE, "/api/v1/servers/7/"));
        assert_eq!(p.wait, Some(Wait { id: Some(7), until: Until::Gone, timeout: Duration::from_secs(5) }));
        let p = plan_of("servers get 7");
        assert_eq!(
            (p.request.method.clone(), p.request.path.as_str(), p.shows),
            (Method::GET, "/api/v1/servers/7/", Shows::Server)
        );
        // Ids are integers, durations durations.
        assert!(Cli::try_parse_from(["client", "servers", "get", "-1"]).is_err());
        assert!(Cli::try_parse_from(["client", "servers", "get", "abc"]).is_err());
        assert!(Cli::try_parse_from(["client", "servers", "stop", "1", "--wait-timeout", "soon"]).is_err());
    }

    #[test]
    fn ssh_keys_map_to_their_requests() {
        let p = plan_of("ssh-keys get 3");
        assert_eq!((p.request.path.as_str(), p.shows), ("/api/v1/ssh-keys/3/", Shows::SshKey));
        let p = plan_of("ssh-keys delete 3");
        assert_eq!((p.request.method.clone(), p.request.path.as_str()), (Method::DELETE, "/api/v1/ssh-keys/3/"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("id.pub");
        std::fs::write(&file, "ssh-ed25519 AAAA me@host\n").unwrap();
        let p = plan_of(&format!("ssh-keys create --name laptop --public-key-file {}", file.display()));
        assert_eq!(p.request.method, Method::POST);
        assert_eq!(p.request.body, Some(json!({"name": "laptop", "public_key": "ssh-ed25519 AAAA me@host"})));
        let args =
            Cli::try_parse_from(["client", "ssh-keys", "create", "--name", "k", "--public-key", "ssh-ed25519 AAAA x"]);
        assert_eq!(
            plan(&args.unwrap().args.command).unwrap().request.body.unwrap()["public_key"],
            "ssh-ed25519 AAAA x"
        );
        assert!(Cli::try_parse_from(["client", "ssh-keys", "create", "--name", "k"]).is_err());
        let missing = plan(&parse("ssh-keys create --name k --public-key-file /nonexistent/key.pub").command);
        assert!(missing.unwrap_err().to_string().contains("/nonexistent/key.pub"));
    }

    #[test]
    fn global_flags_go_anywhere_and_name_their_variables() {
        let a = parse("servers list -o json --api-url http://gw:1 --token t");
        assert_eq!(
            (a.output, a.api_url.as_deref(), a.token.as_deref()),
            (Output::Json, Some("http://gw:1"), Some("t"))
        );
        let a = parse("--output json plans");
        assert_eq!(a.output, Output::Json);
        let help = Cli::command_for_help();
        assert!(help.contains("VPS_API_URL") && help.contains("VPS_API_TOKEN"), "{help}");
    }

    impl Cli {
        fn command_for_help() -> String {
            use clap::CommandFactory;
            Cli::command().render_long_help().to_string()
        }
    }
}
