//! `vps-operator local`, as a user runs it: everything comes up, the env file's URL and token
//! work, SIGTERM leaves no process behind, and a restart on the same data dir finds the
//! servers and the same tokens again.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn start(data_dir: &Path, env_file: &Path) -> Child {
    let _ = std::fs::remove_file(env_file);
    Command::new(env!("CARGO_BIN_EXE_vps-operator"))
        .args(["local", "--port", "0", "--data-dir"])
        .arg(data_dir)
        .arg("--env-file")
        .arg(env_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vps-operator local")
}

/// Waits for the env file and parses it.
fn wait_env(child: &mut Child, env_file: &Path) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(text) = std::fs::read_to_string(env_file)
            && text.contains("VPS_API_TOKEN_2=")
        {
            return text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
        }
        assert!(child.try_wait().unwrap().is_none(), "vps-operator local exited before it was ready");
        assert!(Instant::now() < deadline, "no env file after 300 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Processes (other than `except`) whose command line names `needle`.
fn processes_naming(needle: &str, except: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == except || pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// Sends SIGTERM and checks that the child and every process it started are gone.
fn stop(mut child: Child, data_dir: &Path) {
    let pid = child.id();
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "vps-operator local did not stop within 90 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "vps-operator local exited with {status}");
    let left = processes_naming(&data_dir.display().to_string(), pid);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

async fn call(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json");
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.text().await.unwrap()).unwrap_or(Value::Null))
}

#[tokio::test]
async fn local_run_serves_the_api_stops_cleanly_and_survives_a_restart() {
    if std::env::var("VPS_TEST_CLUSTER").is_ok_and(|v| v == "existing") {
        eprintln!("skipped on an existing cluster: it starts a control plane of its own");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let env_file = dir.path().join("env");

    let mut child = start(&data_dir, &env_file);
    let env = wait_env(&mut child, &env_file);
    let url = env["VPS_API_URL"].clone();
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with('/'), "{url}");
    assert!(Path::new(&env["KUBECONFIG"]).exists());
    let (token, token_2) = (env["VPS_API_TOKEN"].clone(), env["VPS_API_TOKEN_2"].clone());

    let body = json!({"name": "web-server-01", "plan_id": 1, "os_id": 5, "location": "us-west",
        "hostname": "web01.example.com", "backups_enabled": true});
    let (status, created) = call("POST", &format!("{url}/api/v1/servers/"), &token, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, server) = call("GET", &format!("{url}/api/v1/servers/{id}/"), &token, None).await;
        if server["status"] == "active" && server["ip_address"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "never active: {server}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The second account sees none of the first one's servers.
    let (status, list) = call("GET", &format!("{url}/api/v1/servers/"), &token_2, None).await;
    assert_eq!((status, list["count"].as_i64()), (200, Some(0)), "{list}");
    stop(child, &data_dir);

    let mut child = start(&data_dir, &env_file);
    let env = wait_env(&mut child, &env_file);
    assert_eq!(env["VPS_API_TOKEN"], token, "the tokens survive a restart");
    assert_eq!(env["VPS_API_TOKEN_2"], token_2);
    let url = env["VPS_API_URL"].clone();
    let (status, server) = call("GET", &format!("{url}/api/v1/servers/{id}/"), &token, None).await;
    assert_eq!(status, 200, "{server}");
    assert_eq!(server["name"], "web-server-01");
    stop(child, &data_dir);
}
