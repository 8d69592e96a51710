//! What the client prints: aligned tables, a server's details, and the API's error shapes
//! (`{"detail": ...}`, `{"field": ["message", ...]}`) as readable lines.

mod errors;

use serde_json::Value;

pub use self::errors::{error, status_text};

/// Columns separated by three spaces, each as wide as its widest cell (the last one not
/// padded); one line per row, each ending in a newline.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A value as one cell: strings as they are (control characters shown as `?`, so no answer
/// can move the cursor or recolour the terminal), `null` as `-`, anything else as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

/// Text with its control characters replaced by `?`.
pub fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// The servers of a list page: ID NAME STATUS PLAN LOCATION IP.
pub fn servers(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                cell(&s["id"]),
                cell(&s["name"]),
                cell(&s["status"]),
                cell(&s["plan"]["name"]),
                cell(&s["location"]),
                cell(&s["ip_address"]),
            ]
        })
        .collect();
    table(&["ID", "NAME", "STATUS", "PLAN", "LOCATION", "IP"], &rows)
}

/// One server in detail (GET, create, PUT/PATCH answers): one `Field: value` per line.
pub fn server(s: &Value) -> String {
    let plan = &s["plan"];
    let mut plan_text = format!("{} (id {})", cell(&plan["name"]), cell(&plan["id"]));
    let units =
        [("vcpus", " vCPUs"), ("memory", " MiB memory"), ("storage", " GiB disk"), ("bandwidth", " GiB bandwidth")];
    let sizes: Vec<String> = units
        .iter()
        .filter(|(k, _)| !plan[*k].is_null())
        .map(|(k, unit)| format!("{}{unit}", cell(&plan[*k])))
        .collect();
    if !sizes.is_empty() {
        plan_text.push_str(&format!(": {}", sizes.join(", ")));
    }
    let mut lines: Vec<(&str, String)> = vec![
        ("ID", cell(&s["id"])),
        ("Name", cell(&s["name"])),
        ("Hostname", cell(&s["hostname"])),
        ("Status", cell(&s["status"])),
        ("Plan", plan_text),
        ("OS", format!("{} (id {})", cell(&s["os"]["name"]), cell(&s["os"]["id"]))),
        ("Location", cell(&s["location"])),
        ("IPv4", cell(&s["ip_address"])),
    ];
    if s.get("ipv6_address").is_some() {
        lines.push(("IPv6", cell(&s["ipv6_address"])));
    }
    if let Some(b) = s.get("backups_enabled").and_then(Value::as_bool) {
        lines.push(("Backups", if b { "enabled" } else { "disabled" }.into()));
    }
    if let Some(p) = s.get("protection").and_then(Value::as_object) {
        let on: Vec<&str> = p.iter().filter(|(_, v)| v.as_bool() == Some(true)).map(|(k, _)| k.as_str()).collect();
        lines.push(("Protection", if on.is_empty() { "none".into() } else { clean(&on.join(", ")) }));
    }
    if let Some(usage) = s.get("resource_usage") {
        lines.push(("Usage", self::usage(usage)));
    }
    lines.push(("Created", cell(&s["created_at"])));
    lines.push(("Updated", cell(&s["updated_at"])));
    fields(&lines)
}

fn usage(u: &Value) -> String {
    if !u.is_object() {
        return "not measured".into();
    }
    let part = |k: &str, unit: &str| {
        if u[k].is_null() { "-".to_string() } else { format!("{}{unit}", cell(&u[k])) }
    };
    format!(
        "CPU {}, memory {}, disk {}, bandwidth {}",
        part("cpu_percent", "%"),
        part("memory_used", " MiB"),
        part("disk_used", " GiB"),
        part("bandwidth_used", " GiB")
    )
}

/// `Label: value` lines, the values aligned.
fn fields(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    lines.iter().map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:"))).collect()
}

/// The answer of start, stop or reboot: `Server is stopping: 12 web-1 (stopping), action 40`.
pub fn action(a: &Value) -> String {
    let s = &a["server"];
    let tracked = a["action"]["id"].as_i64().map(|id| format!(", action {id}")).unwrap_or_default();
    format!("{}: {} {} ({}){tracked}\n", cell(&a["message"]), cell(&s["id"]), cell(&s["name"]), cell(&s["status"]))
}

/// Tracked actions: ID, TYPE, STATUS, STARTED, COMPLETED, ERROR.
pub fn tracked_actions(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            let or_dash = |k: &str| if a[k].is_null() { "-".to_string() } else { cell(&a[k]) };
            vec![
                cell(&a["id"]),
                cell(&a["type"]),
                cell(&a["status"]),
                cell(&a["started_at"]),
                or_dash("completed_at"),
                or_dash("error"),
            ]
        })
        .collect();
    table(&["ID", "TYPE", "STATUS", "STARTED", "COMPLETED", "ERROR"], &rows)
}

/// Backups: ID, TYPE, STATUS, CREATED, SIZE.
pub fn backups(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|b| {
            let size = if b["size"].is_null() { "-".to_string() } else { format!("{} GiB", cell(&b["size"])) };
            vec![cell(&b["id"]), cell(&b["type"]), cell(&b["status"]), cell(&b["created_at"]), size]
        })
        .collect();
    table(&["ID", "TYPE", "STATUS", "CREATED", "SIZE"], &rows)
}

/// One tracked action.
pub fn tracked_action(a: &Value) -> String {
    let or_dash = |k: &str| if a[k].is_null() { "-".to_string() } else { cell(&a[k]) };
    fields(&[
        ("ID", cell(&a["id"])),
        ("Type", cell(&a["type"])),
        ("Status", cell(&a["status"])),
        ("Server", cell(&a["server_id"])),
        ("Started", cell(&a["started_at"])),
        ("Completed", or_dash("completed_at")),
        ("Error", or_dash("error")),
    ])
}

pub fn plans(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            let with = |k: &str, unit: &str| if p[k].is_null() { "-".into() } else { format!("{}{unit}", cell(&p[k])) };
            let price = match p["monthly_price_cents"].as_i64() {
                Some(c) => format!("{}.{:02}", c / 100, (c % 100).abs()),
                None => cell(&p["monthly_price_cents"]),
            };
            vec![
                cell(&p["id"]),
                cell(&p["name"]),
                cell(&p["vcpus"]),
                with("memory", " MiB"),
                with("storage", " GiB"),
                with("bandwidth", " GiB"),
                price,
            ]
        })
        .collect();
    table(&["ID", "NAME", "VCPUS", "MEMORY", "STORAGE", "BANDWIDTH", "PRICE/MONTH"], &rows)
}

pub fn os(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items.iter().map(|o| vec![cell(&o["id"]), cell(&o["name"])]).collect();
    table(&["ID", "NAME"], &rows)
}

pub fn locations(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items.iter().map(|l| vec![cell(&l["code"]), cell(&l["name"])]).collect();
    table(&["CODE", "NAME"], &rows)
}

/// An OpenSSH public key's type and its fingerprint as `ssh-keygen -l` shows it
/// (`SHA256:` and the unpadded base64 of the SHA-256 of the key's body).
pub fn fingerprint(public_key: &str) -> (String, String) {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut parts = public_key.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let fingerprint = parts
        .next()
        .and_then(|body| base64::engine::general_purpose::STANDARD.decode(body).ok())
        .map(|raw| {
            format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(raw)))
        })
        .unwrap_or_else(|| "-".into());
    (clean(kind), fingerprint)
}

pub fn ssh_keys(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|k| {
            let (kind, fingerprint) = fingerprint(k["public_key"].as_str().unwrap_or_default());
            vec![cell(&k["id"]), cell(&k["name"]), kind, fingerprint, cell(&k["created_at"])]
        })
        .collect();
    table(&["ID", "NAME", "TYPE", "FINGERPRINT", "CREATED"], &rows)
}

pub fn ssh_key(k: &Value) -> String {
    let (_, fingerprint) = fingerprint(k["public_key"].as_str().unwrap_or_default());
    fields(&[
        ("ID", cell(&k["id"])),
        ("Name", cell(&k["name"])),
        ("Fingerprint", fingerprint),
        ("Public key", cell(&k["public_key"])),
        ("Created", cell(&k["created_at"])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list_item(id: i64, name: &str, status: &str, ip: Value) -> Value {
        json!({"id": id, "name": name, "hostname": "web01.example.com", "status": status, "ip_address": ip,
               "location": "us-west", "plan": {"id": 1, "name": "Standard VPS", "vcpus": 2, "memory": 4096,
               "storage": 80}, "os": {"id": 5, "name": "Ubuntu 22.04 LTS"},
               "created_at": "2025-01-10T14:30:00Z", "updated_at": "2025-01-15T10:20:00Z"})
    }

    #[test]
    fn tracked_actions_show_their_state() {
        let open = json!({"id": 40, "type": "stop", "status": "in-progress", "server_id": 7,
                          "started_at": "2026-12-01T10:00:00.5Z", "completed_at": null, "error": null});
        let table = tracked_actions(std::slice::from_ref(&open));
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row, ["40", "stop", "in-progress", "2026-12-01T10:00:00.5Z", "-", "-"]);
        assert!(tracked_action(&open).contains("Completed:  -"), "{}", tracked_action(&open));
        let answer = json!({"status": "success", "message": "Server is stopping",
                            "server": {"id": 7, "name": "web", "status": "stopping"}, "action": open});
        assert_eq!(action(&answer), "Server is stopping: 7 web (stopping), action 40\n");
    }

    #[test]
    fn servers_are_an_aligned_table() {
        let items = [
            list_item(7, "web-server-01", "active", json!("203.0.113.10")),
            list_item(12345, "db", "provisioning", Value::Null),
        ];
        let want = "\
ID      NAME            STATUS         PLAN           LOCATION   IP
7       web-server-01   active         Standard VPS   us-west    203.0.113.10
12345   db              provisioning   Standard VPS   us-west    -
";
        assert_eq!(servers(&items), want);
        assert_eq!(servers(&[]), "ID   NAME   STATUS   PLAN   LOCATION   IP\n");
    }

    #[test]
    fn no_answer_reaches_the_terminal_raw() {
        assert_eq!(cell(&json!("a\u{1b}[31mb\nc")), "a?[31mb?c");
        assert_eq!((cell(&json!(null)), cell(&json!(3)), cell(&json!(true))), ("-".into(), "3".into(), "true".into()));
        let lines = error(400, None, r#"{"name\u001b": ["x\u0007"]}"#);
        assert_eq!(lines[1], "  name?: x?");
    }

    #[test]
    fn a_server_in_detail() {
        let mut s = list_item(7, "web", "active", json!("203.0.113.10"));
        s["ipv6_address"] = Value::Null;
        s["plan"]["bandwidth"] = json!(2048);
        s["backups_enabled"] = json!(true);
        s["resource_usage"] = Value::Null;
        let want = "\
ID:        7
Name:      web
Hostname:  web01.example.com
Status:    active
Plan:      Standard VPS (id 1): 2 vCPUs, 4096 MiB memory, 80 GiB disk, 2048 GiB bandwidth
OS:        Ubuntu 22.04 LTS (id 5)
Location:  us-west
IPv4:      203.0.113.10
IPv6:      -
Backups:   enabled
Usage:     not measured
Created:   2025-01-10T14:30:00Z
Updated:   2025-01-15T10:20:00Z
";
        assert_eq!(server(&s), want);
        s["resource_usage"] = json!({"cpu_percent": 12.5, "memory_used": 1024, "disk_used": null, "bandwidth_used": 3});
        s["protection"] = json!({"delete": true});
        let text = server(&s);
        assert!(text.contains("Usage:       CPU 12.5%, memory 1024 MiB, disk -, bandwidth 3 GiB\n"), "{text}");
        assert!(text.contains("Protection:  delete\n"), "{text}");
    }

    #[test]
    fn actions_and_the_catalog() {
        let a = json!({"status": "success", "message": "Server is stopping",
                       "server": {"id": 12, "name": "web-1", "status": "stopping"}});
        assert_eq!(action(&a), "Server is stopping: 12 web-1 (stopping)\n");
        let plans = [
            json!({"id": 1, "name": "Standard VPS", "vcpus": 2, "memory": 4096, "storage": 80,
                            "bandwidth": 2048, "monthly_price_cents": 1000}),
            json!({"id": 2, "name": "Performance VPS", "vcpus": 4, "memory": 8192, "storage": 160,
                            "bandwidth": 4096, "monthly_price_cents": 2005}),
        ];
        let want = "\
ID   NAME              VCPUS   MEMORY     STORAGE   BANDWIDTH   PRICE/MONTH
1    Standard VPS      2       4096 MiB   80 GiB    2048 GiB    10.00
2    Performance VPS   4       8192 MiB   160 GiB   4096 GiB    20.05
";
        assert_eq!(self::plans(&plans), want);
        assert_eq!(os(&[json!({"id": 3, "name": "Debian 12"})]), "ID   NAME\n3    Debian 12\n");
        assert_eq!(locations(&[json!({"code": "us-west", "name": "US West"})]), "CODE      NAME\nus-west   US West\n");
    }

    #[test]
    fn ssh_keys_show_their_fingerprint() {
        // As `ssh-keygen -l` prints it.
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ user@host";
        let (kind, fp) = fingerprint(key);
        assert_eq!(kind, "ssh-ed25519");
        assert_eq!(fp, "SHA256:T7SvZ2cslqpPj6nKzitCBHHlpVF3r3MvLwmFL0fk0IE");
        assert_eq!(fingerprint("ssh-ed25519 !!!").1, "-");
        let text = ssh_keys(&[json!({"id": 4, "name": "laptop", "public_key": key,
                                      "created_at": "2025-01-10T14:30:00Z"})]);
        assert_eq!(
            text.lines().next().unwrap(),
            "ID   NAME     TYPE          FINGERPRINT                                          CREATED"
        );
        assert!(text.lines().nth(1).unwrap().starts_with("4    laptop   ssh-ed25519   SHA256:"), "{text}");
    }
}
