//! A real guest: a server of the Debian 12 image that `scripts/build-guest-image.sh` builds
//! from Debian's packages boots in qemu (the node simulator's real-guest mode), takes its
//! cloud-init data as the operator wrote it, and lets its customer's SSH key in; its boot log
//! and serial console are its own, it reboots in place, shuts down cleanly on stop, keeps its
//! disk across a reboot and a start, and leaves nothing behind when deleted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::SinkExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use vps_operator::api::{GUEST_SSH_ANNOTATION, VpsLocation};
use vps_operator::kubevirt::VirtualMachineInstance;

use super::{action, setup, wait_status_within};

/// Runs `command` in the guest over SSH, as the image's default user with `key`.
fn ssh(port: u16, key: &Path, command: &str) -> String {
    let out = ssh_output(port, key, command);
    assert!(out.status.success(), "ssh {command}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `command` printed, or `None` while the guest does not let SSH in.
fn try_ssh(port: u16, key: &Path, command: &str) -> Option<String> {
    let out = ssh_output(port, key, command);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ssh_output(port: u16, key: &Path, command: &str) -> std::process::Output {
    std::process::Command::new("ssh")
        .args(["-p", &port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "debian@127.0.0.1",
            command,
        ])
        .output()
        .expect("run ssh")
}

/// The guest's serial console as the simulator logs it.
fn serial_log(namespace: &str, name: &str) -> String {
    let path = guests_dir().join("run").join(format!("{namespace}_{name}")).join("serial.log");
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The port the simulator forwards to the guest's SSH port (on its instance).
async fn ssh_port(vmis: &Api<VirtualMachineInstance>, name: &str) -> u16 {
    let vmi = vmis.get(name).await.unwrap();
    let forwarded = vmi.metadata.annotations.unwrap_or_default().get(GUEST_SSH_ANNOTATION).cloned();
    forwarded.and_then(|a| a.rsplit(':').next()?.parse().ok()).expect("the instance shows its forwarded SSH port")
}

/// The simulator's folder of real guests (it runs in this test process).
fn guests_dir() -> PathBuf {
    std::env::temp_dir().join(format!("vps-operator-guests-{}", std::process::id()))
}

#[tokio::test]
async fn a_real_guest_boots_with_the_customers_key_and_keeps_its_disk() {
    // Once per test command: not again with slow simulated hosts, and not on an existing
    // cluster (its hosts are not this process's simulator).
    if super::support::existing_cluster() || std::env::var_os("VPS_SIM_DELAY").is_some() {
        eprintln!("skipped: the real guest boots once, in the first run on this machine's own control plane");
        return;
    }
    let (client, gw, t) = setup("real-guest").await;
    let image = tokio::task::spawn_blocking(|| {
        vps_operator::testbed::build_guest_image(&vps_operator::controlplane::source_root())
    })
    .await
    .unwrap()
    .expect("build the guest image");
    vps_operator::testbed::install_guest_image(&client, &image).await.unwrap();

    // A provider network, so that the guest configures its address itself from cloud-init.
    super::create_attachment(&client, &t.namespace).await;
    let code = format!("rg-{}", t.namespace.rsplit('-').next().unwrap());
    let location: VpsLocation = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsLocation", "metadata": {"name": code},
        "spec": {"displayName": "Real guests", "nodeSelector": {"topology.kubernetes.io/region": "us-west"},
                 "network": {"attachment": format!("{}/public", t.namespace),
                             "ipv4": {"cidr": "203.0.113.16/28", "gateway": "203.0.113.17"}}},
    }))
    .unwrap();
    Api::<VpsLocation>::all(client.clone()).create(&PostParams::default(), &location).await.unwrap();

    // The customer's key.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "customer@example.com", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let public_key = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let added = gw
        .call(
            "POST",
            "/api/v1/ssh-keys/",
            Some(&t.token),
            Some(json!({"name": "laptop", "public_key": public_key.trim()})),
        )
        .await;
    assert_eq!(added.status, 201, "{added:?}");

    // The gateway knows the image and the location once its caches show them.
    let body = json!({"name": "guest01", "plan_id": 1, "os_id": vps_operator::testbed::GUEST_IMAGE_ID,
                      "location": code, "hostname": "guest01.example.com", "ssh_key_id": added.body["id"]});
    let deadline = Instant::now() + Duration::from_secs(30);
    let created = loop {
        let created = gw.call("POST", "/api/v1/servers/", Some(&t.token), Some(body.clone())).await;
        if created.status == 201 || Instant::now() > deadline {
            break created;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_i64().unwrap();
    let name = format!("srv-{id}");
    let booted = Instant::now();
    let active = wait_status_within(&gw, &t.token, id, "active", 600).await;
    eprintln!("the real guest was active {} s after its create", booted.elapsed().as_secs());
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &t.namespace);
    let port = ssh_port(&vmis, &name).await;
    assert_eq!(ssh(port, &key, "hostname").trim(), "guest01.example.com");
    let ip = active["ip_address"].as_str().expect("an address").to_string();
    assert!(ip.starts_with("203.0.113."), "{ip}");
    let addresses = ssh(port, &key, "ip -4 addr show eth0");
    assert!(addresses.contains(&format!("inet {ip}/28")), "the guest has the address the API shows: {addresses}");
    ssh(port, &key, "echo kept > marker && sync");

    // The boot log is the guest's own serial console, and so is the console.
    let log = gw.call("GET", &format!("/api/v1/servers/{id}/console-output/"), Some(&t.token), None).await;
    assert_eq!(log.status, 200, "{log:?}");
    let text = log.body["output"].as_str().unwrap();
    // Its last lines: cloud-init's own output, then getty's prompt with the hostname it set.
    assert!(text.contains("cloud-init[") && text.contains("guest01 login: "), "the guest's boot log: {text}");
    let console = gw.call("POST", &format!("/api/v1/servers/{id}/console/"), Some(&t.token), None).await;
    assert_eq!(console.status, 200, "{console:?}");
    let (mut ws, _) = tokio_tungstenite::connect_async(console.body["wss_url"].as_str().unwrap())
        .await
        .expect("the serial console opens");
    ws.send(Message::binary(b"\r".to_vec())).await.unwrap();
    let mut seen = Vec::new();
    let prompt = super::console_until(&mut ws, &mut seen, b"login: ").await;
    assert!(String::from_utf8_lossy(&prompt).contains("guest01 login: "), "getty's prompt: {prompt:?}");
    drop(ws);

    // A reboot (soft: the guest asked, with Ctrl-Alt-Delete) restarts the guest in place.
    let boot_id = ssh(port, &key, "cat /proc/sys/kernel/random/boot_id");
    assert_eq!(action(&gw, &t.token, id, "reboot").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if try_ssh(port, &key, "cat /proc/sys/kernel/random/boot_id").is_some_and(|b| b != boot_id) {
            break;
        }
        assert!(Instant::now() < deadline, "the guest did not come back from its reboot");
    }
    assert_eq!(ssh_port(&vmis, &name).await, port, "the same instance");
    assert!(serial_log(&t.namespace, &name).contains("reboot: Restarting system"), "a clean reboot");
    assert_eq!(ssh(port, &key, "cat marker").trim(), "kept");

    // A stop is a clean shutdown.
    assert_eq!(action(&gw, &t.token, id, "stop").await.status, 200);
    wait_status_within(&gw, &t.token, id, "stopped", 120).await;
    let serial = serial_log(&t.namespace, &name);
    assert!(
        serial.contains("reboot: Power down"),
        "the guest shut itself down: {}",
        &serial[serial.len().saturating_sub(2000)..]
    );

    // Started again, on the same disk.
    assert_eq!(action(&gw, &t.token, id, "start").await.status, 200);
    wait_status_within(&gw, &t.token, id, "active", 600).await;
    let port = ssh_port(&vmis, &name).await;
    assert_eq!(ssh(port, &key, "cat marker").trim(), "kept");

    // Deleted: no qemu left, and its disk's overlay goes.
    assert_eq!(gw.call("DELETE", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await.status, 204);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let qemu =
            std::process::Command::new("pgrep").args(["-f", &format!("{}_{name}", t.namespace)]).output().unwrap();
        let overlays = std::fs::read_dir(guests_dir().join("disks"))
            .map(|d| {
                d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with(&t.namespace)).count()
            })
            .unwrap_or(0);
        if qemu.stdout.is_empty() && overlays == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a qemu or the overlay is left after the delete");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
