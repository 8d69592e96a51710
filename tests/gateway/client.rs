//! `vps-operator client`: the built binary against a real gateway, with the URL and token in
//! `VPS_API_URL` and `VPS_API_TOKEN` as `local --env-file` writes them. The operator does not
//! run here: where a wait needs a phase, the test writes the status while the client waits.

use super::prelude::*;
use super::support::gateway::Gateway;

/// What one run of the client did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `vps-operator client ARGS` (asynchronously: the gateway serves from this runtime).
async fn client_run(url: String, token: String, args: Vec<String>) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vps-operator"))
        .arg("client")
        .args(&args)
        .env("VPS_API_URL", url)
        .env("VPS_API_TOKEN", token)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run vps-operator client");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn cli(g: &Gateway, token: &str, args: &[&str]) -> Run {
    client_run(g.url.clone(), token.to_string(), args.iter().map(|a| a.to_string()).collect()).await
}

/// Runs the client in the background (for a wait the test drives).
fn spawn_cli(g: &Gateway, token: &str, args: &[&str]) -> tokio::task::JoinHandle<Run> {
    tokio::spawn(client_run(g.url.clone(), token.to_string(), args.iter().map(|a| a.to_string()).collect()))
}

/// The value of one `Label:  value` line of a detail view.
fn field(run: &Run, label: &str) -> String {
    let prefix = format!("{label}:");
    let line = run.stdout.lines().find(|l| l.starts_with(&prefix));
    line.map(|l| l[prefix.len()..].trim().to_string()).unwrap_or_else(|| panic!("no {label} in {run:?}"))
}

fn ok(run: &Run) {
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[tokio::test]
async fn the_client_lists_creates_updates_and_deletes_servers() {
    let (_client, g, t) = setup("client-crud", 1_000_000).await;
    let tok = t.token.as_str();

    let r = cli(&g, tok, &["servers", "list"]).await;
    ok(&r);
    assert_eq!((r.stdout.as_str(), r.stderr.trim()), ("", "No servers found."), "{r:?}");

    // Create, -o json: the gateway's answer as it came (its order), pretty.
    let r = cli(
        &g,
        tok,
        &["servers", "create", "--name", "cli-web", "--plan-id", "1", "--os-id", "5", "--location", "us-west"],
    )
    .await;
    ok(&r);
    assert_eq!(field(&r, "Status"), "provisioning");
    assert!(r.stderr.contains("Server is being provisioned."), "{r:?}");
    let r = cli(
        &g,
        tok,
        &[
            "servers",
            "create",
            "-o",
            "json",
            "--name",
            "cli-db",
            "--plan-id",
            "2",
            "--os-id",
            "3",
            "--location",
            "us-east",
            "--hostname",
            "db.example.com",
            "--backups",
        ],
    )
    .await;
    ok(&r);
    assert!(r.stdout.starts_with("{\n  \"id\": "), "{r:?}");
    let created: Value = serde_json::from_str(&r.stdout).expect("JSON");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        (&created["name"], &created["status"], &created["hostname"], &created["backups_enabled"]),
        (&json!("cli-db"), &json!("provisioning"), &json!("db.example.com"), &json!(true))
    );
    assert_eq!(created["message"], "Server is being provisioned. This may take 2-5 minutes.");

    // The table: a header and one aligned row per server.
    let r = cli(&g, tok, &["servers", "list"]).await;
    ok(&r);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{r:?}");
    let header = lines[0];
    assert!(header.starts_with("ID") && header.contains("   NAME") && header.ends_with("   IP"), "{header:?}");
    let row = lines.iter().find(|l| l.contains("cli-db")).expect("the new server's row");
    assert!(
        row.starts_with(&id.to_string()) && row.contains("provisioning") && row.contains("Performance VPS"),
        "{row}"
    );
    assert_eq!(header.find("STATUS"), row.find("provisioning"), "the columns are aligned:\n{}", r.stdout);
    // Filters go to the API.
    let r = cli(&g, tok, &["servers", "list", "--location", "us-east", "-o", "json"]).await;
    ok(&r);
    let page: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!((&page["count"], &page["results"][0]["id"]), (&json!(1), &json!(id)));
    // One per page, and every page.
    let r = cli(&g, tok, &["servers", "list", "--page-size", "1"]).await;
    ok(&r);
    assert_eq!(r.stdout.lines().count(), 2, "{r:?}");
    assert!(r.stderr.contains("1 of 2 servers shown: --page 2"), "{r:?}");
    let r = cli(&g, tok, &["servers", "list", "--page-size", "1", "--all", "-o", "json"]).await;
    ok(&r);
    let all: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!((&all["count"], all["results"].as_array().unwrap().len(), &all["next"]), (&json!(2), 2, &Value::Null));

    // Get, update (a PATCH of the given fields only).
    let r = cli(&g, tok, &["servers", "get", &id.to_string()]).await;
    ok(&r);
    assert_eq!((field(&r, "Hostname"), field(&r, "Backups")), ("db.example.com".into(), "enabled".into()));
    let r = cli(&g, tok, &["servers", "update", &id.to_string(), "--name", "cli-db-2", "--backups=false"]).await;
    ok(&r);
    assert_eq!(field(&r, "Name"), "cli-db-2");
    let d = g.call("GET", &format!("/api/v1/servers/{id}/"), Some(tok), None).await;
    assert_eq!(
        (&d.body["name"], &d.body["hostname"], &d.body["backups_enabled"]),
        (&json!("cli-db-2"), &json!("db.example.com"), &json!(false))
    );
    let r = cli(&g, tok, &["servers", "update", &id.to_string()]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("nothing to update"), "{r:?}");

    // The catalog.
    let r = cli(&g, tok, &["plans"]).await;
    ok(&r);
    assert!(
        r.stdout.starts_with("ID   NAME") && r.stdout.contains("Standard VPS") && r.stdout.contains("4096 MiB"),
        "{r:?}"
    );
    let r = cli(&g, tok, &["os"]).await;
    assert!(r.stdout.contains("5    Ubuntu 22.04 LTS"), "{r:?}");
    let r = cli(&g, tok, &["locations", "-o", "json"]).await;
    ok(&r);
    let codes: Vec<Value> = serde_json::from_str::<Value>(&r.stdout).unwrap()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["code"].clone())
        .collect();
    assert!(codes.contains(&json!("us-west")) && codes.contains(&json!("us-east")), "{r:?}");

    // SSH keys.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ user@host";
    let r = cli(&g, tok, &["ssh-keys", "create", "--name", "laptop", "--public-key", key]).await;
    ok(&r);
    assert_eq!(field(&r, "Fingerprint"), "SHA256:T7SvZ2cslqpPj6nKzitCBHHlpVF3r3MvLwmFL0fk0IE");
    let r = cli(&g, tok, &["ssh-keys", "list"]).await;
    ok(&r);
    let row = r.stdout.lines().nth(1).expect("a key row");
    assert!(row.contains("laptop") && row.contains("ssh-ed25519   SHA256:T7SvZ2"), "{r:?}");
    let key_id = row.split_whitespace().next().unwrap().to_string();
    let r = cli(&g, tok, &["ssh-keys", "delete", &key_id]).await;
    ok(&r);
    assert_eq!(r.stdout, format!("SSH key {key_id} deleted.\n"));

    // Delete and wait: gone is a 404.
    let r = cli(&g, tok, &["servers", "delete", &id.to_string(), "--wait", "--wait-timeout", "30s"]).await;
    ok(&r);
    assert_eq!(r.stdout, format!("Server {id} deleted.\n"), "{r:?}");
    assert_eq!(g.call("GET", &format!("/api/v1/servers/{id}/"), Some(tok), None).await.status, 404);
    let r = cli(&g, tok, &["servers", "delete", &id.to_string()]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.stderr, "error: Not found. (HTTP 404 Not Found)\n");
}

#[tokio::test]
async fn the_client_waits_for_the_status_it_asked_for() {
    let (client, g, t) = setup("client-power", 1_000_000).await;
    let tok = t.token.as_str();
    let id = create(&g, &t, sample_create("cli-power")).await;
    let ids = id.to_string();
    set_status(&client, &t.namespace, id, json!({"phase": "Active"})).await;
    wait_status(&g, &t, id, "active").await;

    // Stop without waiting: the action's answer.
    let r = cli(&g, tok, &["servers", "stop", &ids]).await;
    ok(&r);
    let prefix = format!("Server is stopping: {id} cli-power (stopping), action ");
    assert!(r.stdout.starts_with(&prefix) && r.stdout.ends_with('\n'), "{}", r.stdout);
    set_status(&client, &t.namespace, id, json!({"phase": "Stopped"})).await;
    wait_status(&g, &t, id, "stopped").await;

    // Start and wait: the client follows "starting" until the status turns active.
    let waiting = spawn_cli(&g, tok, &["servers", "start", &ids, "--wait", "--wait-timeout", "60s"]);
    wait_status(&g, &t, id, "starting").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    set_status(&client, &t.namespace, id, json!({"phase": "Active"})).await;
    let r = waiting.await.unwrap();
    ok(&r);
    assert!(r.stderr.contains(&format!("Server is starting: {id} cli-power (starting)")), "{r:?}");
    assert!(r.stderr.contains(&format!("waiting for server {id}: starting\n")), "{r:?}");
    assert!(r.stderr.contains(&format!("server {id}: active\n")), "{r:?}");
    assert_eq!(field(&r, "Status"), "active", "the settled server is the output");

    // Stop and wait, -o json: the settled server's GET answer.
    let waiting = spawn_cli(&g, tok, &["servers", "stop", &ids, "--wait", "-o", "json"]);
    wait_status(&g, &t, id, "stopping").await;
    set_status(&client, &t.namespace, id, json!({"phase": "Stopped"})).await;
    let r = waiting.await.unwrap();
    ok(&r);
    let settled: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!((&settled["id"], &settled["status"]), (&json!(id), &json!("stopped")));
    assert!(settled.get("message").is_none() && settled.get("resource_usage").is_some(), "{r:?}");

    // Nobody drives the start: the wait times out, and says where the server is.
    let r = cli(&g, tok, &["servers", "start", &ids, "--wait", "--wait-timeout", "2s"]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.ends_with(&format!("error: server {id} is still starting after 2s\n")), "{r:?}");

    // A wait that settles elsewhere fails: the server went into error.
    set_status(&client, &t.namespace, id, json!({"phase": "Active"})).await;
    wait_status(&g, &t, id, "active").await;
    let waiting = spawn_cli(&g, tok, &["servers", "reboot", &ids, "--wait", "--wait-timeout", "60s"]);
    wait_status(&g, &t, id, "rebooting").await;
    set_status(&client, &t.namespace, id, json!({"phase": "Error"})).await;
    let r = waiting.await.unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(field(&r, "Status"), "error");
    assert!(r.stderr.ends_with(&format!("error: server {id} settled as error, not active\n")), "{r:?}");
}

#[tokio::test]
async fn the_client_prints_the_apis_errors() {
    let (_client, g, t) = setup("client-errors", 1_000_000).await;
    let tok = t.token.as_str();

    // Field errors: one line per field, with the status; nothing made.
    let r = cli(
        &g,
        tok,
        &["servers", "create", "--name", "-bad-", "--plan-id", "999", "--os-id", "5", "--location", "us-west"],
    )
    .await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines[0], "error: HTTP 400 Bad Request", "{r:?}");
    assert!(lines.contains(&"  plan_id: Invalid pk \"999\" - object does not exist."), "{r:?}");
    assert!(lines.iter().any(|l| l.starts_with("  name: ")), "{r:?}");
    assert_eq!(lines.len(), 3, "{r:?}");
    assert_eq!(g.call("GET", "/api/v1/servers/", Some(tok), None).await.body["count"], 0);
    // A bad filter value is the API's to refuse.
    let r = cli(&g, tok, &["servers", "list", "--status", "sleeping"]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.starts_with("error: HTTP 400 Bad Request\n  status: "), "{r:?}");

    // A bad token: 401, with its detail.
    let r = cli(&g, "vps_not-a-token", &["servers", "list"]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(
        r.stderr,
        "error: Invalid token. (HTTP 401 Unauthorized)\nhint: check the token (VPS_API_TOKEN or --token)\n"
    );
    // An unknown id: 404.
    let r = cli(&g, tok, &["servers", "get", "987654321"]).await;
    assert_eq!((r.code, r.stderr.as_str()), (Some(1), "error: Not found. (HTTP 404 Not Found)\n"), "{r:?}");
    // No gateway there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let r = client_run(format!("http://{closed}"), tok.into(), vec!["plans".into()]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.starts_with(&format!("error: GET http://{closed}/api/v1/plans/: ")), "{r:?}");
}
