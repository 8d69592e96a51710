//! Tokens: revocation reaches the gateway through its watch; the subcommands.

use super::prelude::*;

#[tokio::test]
async fn a_revoked_token_stops_working() {
    let (client, g, t) = setup("revoked", 100_000).await;
    // Revoked tokens stop working.
    assert!(vps_operator::tokens::revoke_token(&client, gw::SYSTEM_NAMESPACE, &t.token).await.unwrap());
    eventually("the revoked token is refused", || async {
        g.call("GET", "/api/v1/servers/", Some(&t.token), None).await.status == 401
    })
    .await;
}

#[tokio::test]
async fn token_subcommands_create_and_revoke() {
    let (client, g, t) = setup("token-cli", 100_000).await;
    let kubeconfig = support::shared().kubeconfig.clone();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vps-operator"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("VPS_API_TOKEN")
            .output()
            .expect("run vps-operator");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, token, err) = cli(&["token", "create", "--account", &t.account]);
    assert!(ok, "{err}");
    assert!(token.starts_with("vps_"), "{token}");
    g.wait_token(&token).await;
    // Only the hash is stored.
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), gw::SYSTEM_NAMESPACE)
        .list(&ListParams::default().labels(&format!("vps.org/account={}", t.account)))
        .await
        .unwrap();
    assert_eq!(secrets.items.len(), 2);
    for secret in &secrets.items {
        let dump = serde_json::to_string(secret).unwrap();
        assert!(!dump.contains(&token) && !dump.contains(&t.token));
        let hashes: Vec<String> =
            secret.data.as_ref().unwrap().values().map(|v| String::from_utf8_lossy(&v.0).into_owned()).collect();
        assert!(hashes.iter().any(|h| h.len() == 64), "{hashes:?}");
    }
    assert!(!cli(&["token", "create", "--account", "no-such-account"]).0);

    let (ok, _, err) = cli(&["token", "revoke", "--token", &token]);
    assert!(ok, "{err}");
    eventually("the revoked token is refused", || async {
        g.call("GET", "/api/v1/servers/", Some(&token), None).await.status == 401
    })
    .await;
    // The account's other token still works, until the account's tokens are all revoked.
    assert_eq!(g.call("GET", "/api/v1/servers/", Some(&t.token), None).await.status, 200);
    let (ok, _, err) = cli(&["token", "revoke", "--account", &t.account]);
    assert!(ok, "{err}");
    eventually("every token of the account is refused", || async {
        g.call("GET", "/api/v1/servers/", Some(&t.token), None).await.status == 401
    })
    .await;
}

#[tokio::test]
async fn the_gateway_subcommand_serves_until_sigterm() {
    let client = support::client().await;
    let t = gw::tenant(&client, "gateway-cli", 100_000).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vps-operator"))
        .args(["gateway", "--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "127.0.0.1:0"])
        .args(["--system-namespace", gw::SYSTEM_NAMESPACE])
        .env("KUBECONFIG", &support::shared().kubeconfig)
        .kill_on_drop(true)
        .spawn()
        .expect("start the gateway");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the gateway is ready", || async {
        matches!(http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let r = http.get(format!("{base}/api/v1/os")).bearer_auth(&t.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["results"][0]["name"], "Debian 12");
    let pid = child.id().expect("running") as i32;
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}
