//! Real guests: virt-handler's part done for real for an instance whose root disk is cloned
//! from a real image (its DataSource carries [`GUEST_IMAGE_ANNOTATION`], the folder
//! `scripts/build-guest-image.sh` printed). The simulator boots qemu (software emulation, as
//! KubeVirt's `useEmulation`) with a copy-on-write overlay of that image per root disk (kept
//! across stops, removed with the disk), one vCPU and the instance's memory (capped for this
//! machine), and its cloud-init NoCloud user data and network data exactly as the operator wrote
//! them into the VM. The instance is Running only once the guest's serial console shows its
//! login prompt; its SSH port is forwarded to a loopback port, shown on the instance
//! ([`SSH_ANNOTATION`]). A stop is an ACPI shutdown (QMP `system_powerdown`), a reset QMP's
//! `system_reset`. qemu's user networking is restricted: the guest reaches nothing beyond it.
//! At most `--real-guests` run at once (the others stay simulated); every qemu dies with the
//! simulator (killed on drop, and by the kernel when the simulator dies: `PR_SET_PDEATHSIG`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use kube::runtime::reflector::ObjectRef;

use crate::kubevirt::DataSource;

pub use crate::api::{GUEST_IMAGE_ANNOTATION, GUEST_SSH_ANNOTATION as SSH_ANNOTATION};
/// What the guest's serial console prints once it is up.
const LOGIN_PROMPT: &str = " login: ";

/// The real guests of this simulator.
pub struct Guests {
    /// Overlays, seeds, serial logs and QMP sockets live here.
    root: PathBuf,
    max: usize,
    memory_cap_mib: u64,
    running: Mutex<HashMap<String, Arc<Guest>>>,
    /// The real image of each DataSource looked up, and when.
    images: Mutex<HashMap<(String, String), Lookup>>,
}

/// When a DataSource was looked at, and the real image it named.
type Lookup = (Instant, Option<PathBuf>);

/// How long a DataSource's real image (or its lack of one) is believed.
const IMAGE_LOOKUP_TTL: Duration = Duration::from_secs(60);

/// One running qemu.
pub struct Guest {
    pub ssh_port: u16,
    dir: PathBuf,
    child: tokio::sync::Mutex<Child>,
    powering_down: std::sync::atomic::AtomicBool,
}

/// What a guest is booted from: the instance's spec and its root disk.
pub struct Boot {
    /// `namespace/name` of the instance.
    pub key: String,
    pub image: PathBuf,
    /// The overlay's file name: the root disk's namespace, name and uid.
    pub disk: String,
    pub user_data: String,
    pub network_data: Option<String>,
    pub instance_id: String,
    pub memory_mib: u64,
    pub mac: Option<String>,
}

impl Guests {
    pub fn new(root: PathBuf, max: usize, memory_cap_mib: u64) -> Guests {
        Guests { root, max, memory_cap_mib, running: Mutex::default(), images: Mutex::default() }
    }

    /// The real image the DataSource `ns/name` names, if any.
    async fn image_of(&self, client: &Client, ns: &str, name: &str) -> Result<Option<PathBuf>, kube::Error> {
        let key = (ns.to_string(), name.to_string());
        if let Some((at, image)) = self.images.lock().expect("guests lock").get(&key)
            && at.elapsed() < IMAGE_LOOKUP_TTL
        {
            return Ok(image.clone());
        }
        let source = Api::<DataSource>::namespaced(client.clone(), ns).get_opt(name).await?;
        let image = source.and_then(|s| s.annotations().get(GUEST_IMAGE_ANNOTATION).map(PathBuf::from));
        self.images.lock().expect("guests lock").insert(key, (Instant::now(), image.clone()));
        Ok(image)
    }

    /// The running guest of instance `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Guest>> {
        self.running.lock().expect("guests lock").get(key).cloned()
    }

    /// Whether another guest may start.
    pub fn has_room(&self) -> bool {
        self.running.lock().expect("guests lock").len() < self.max
    }

    /// Boots a guest for `boot` (its overlay made on first use).
    pub async fn boot(&self, boot: Boot) -> anyhow::Result<Arc<Guest>> {
        let disks = self.root.join("disks");
        let dir = self.root.join("run").join(boot.key.replace('/', "_"));
        tokio::fs::create_dir_all(&disks).await?;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&dir).await?;
        let overlay = disks.join(format!("{}.qcow2", boot.disk));
        if !overlay.exists() {
            let mut create = Command::new("qemu-img");
            create
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(boot.image.join("disk.img"))
                .arg(&overlay);
            run(create, "qemu-img").await?;
        }
        let seed = dir.join("seed.img");
        write_seed(&dir, &seed, &boot).await?;
        let ssh_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let net = match boot.network_data.as_deref().and_then(slirp_network) {
            Some((net, gateway, guest)) => {
                format!("net={net},host={gateway},hostfwd=tcp:127.0.0.1:{ssh_port}-{guest}:22")
            }
            None => format!("net=198.18.255.0/24,host=198.18.255.1,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
        };
        let mac = boot.mac.clone().unwrap_or_else(|| "52:54:00:00:00:01".into());
        let memory = boot.memory_mib.clamp(256, self.memory_cap_mib);
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-nographic", "-display", "none"])
            // One vCPU whatever the plan: emulation on this machine's two cores.
            .args(["-smp", "1", "-m", &memory.to_string()])
            .arg("-kernel")
            .arg(boot.image.join("vmlinuz"))
            .arg("-initrd")
            .arg(boot.image.join("initrd.img"))
            .args(["-append", "root=/dev/vda console=ttyS0 rw"])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", seed.display()))
            .args(["-netdev", &format!("user,id=n0,restrict=on,{net}")])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")])
            .arg("-chardev")
            .arg(format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={}",
                dir.join("console.sock").display(),
                dir.join("serial.log").display()
            ))
            .args(["-serial", "chardev:serial0", "-monitor", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.err"))?)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the child dies when the simulator does.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().context("start qemu-system-x86_64 (scripts/build-guest-image.sh installs it)")?;
        tracing::info!(instance = boot.key, ssh_port, memory, "Booting a real guest");
        let guest =
            Arc::new(Guest { ssh_port, dir, child: tokio::sync::Mutex::new(child), powering_down: Default::default() });
        self.running.lock().expect("guests lock").insert(boot.key, guest.clone());
        Ok(guest)
    }

    /// Forgets the guest of `key` (its qemu has exited, or is killed now).
    pub async fn remove(&self, key: &str) {
        let guest = self.running.lock().expect("guests lock").remove(key);
        if let Some(guest) = guest {
            let mut child = guest.child.lock().await;
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Removes the overlays of root disks that are gone, every few seconds, forever.
    pub async fn collect_overlays(&self, client: Client) {
        let claims: Api<PersistentVolumeClaim> = Api::all(client);
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let Ok(mut dir) = tokio::fs::read_dir(self.root.join("disks")).await else { continue };
            let Ok(list) = claims.list_metadata(&ListParams::default()).await else { continue };
            let live: Vec<String> = list.items.iter().map(disk_name).collect();
            while let Ok(Some(entry)) = dir.next_entry().await {
                let name = entry.file_name().to_string_lossy().trim_end_matches(".qcow2").to_string();
                if !live.contains(&name) {
                    tracing::info!(overlay = name, "The root disk is gone: removing its overlay");
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
    }
}

/// The overlay name of a root disk's claim: namespace, name and uid.
pub fn disk_name(claim: &impl kube::Resource) -> String {
    let meta = claim.meta();
    format!(
        "{}_{}_{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default()
    )
}

impl Guest {
    /// Whether the guest is up: its serial console showed the login prompt.
    pub async fn booted(&self) -> bool {
        let log = tokio::fs::read(self.dir.join("serial.log")).await.unwrap_or_default();
        String::from_utf8_lossy(&log).contains(LOGIN_PROMPT)
    }

    /// What its serial console printed, carriage returns removed.
    pub async fn serial(&self) -> String {
        let log = tokio::fs::read(self.dir.join("serial.log")).await.unwrap_or_default();
        String::from_utf8_lossy(&log).replace('\r', "")
    }

    /// Whether qemu has exited.
    pub async fn exited(&self) -> bool {
        self.child.lock().await.try_wait().ok().flatten().is_some()
    }

    /// Asks the guest to shut down (an ACPI power button press), once.
    pub async fn power_down(&self) -> anyhow::Result<()> {
        if self.powering_down.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.qmp(serde_json::json!({"execute": "system_powerdown"})).await
    }

    /// Resets the machine (a hard reboot).
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.qmp(serde_json::json!({"execute": "system_reset"})).await
    }

    /// Asks the guest to reboot itself (Ctrl-Alt-Delete: systemd reboots cleanly).
    pub async fn soft_reboot(&self) -> anyhow::Result<()> {
        let keys: Vec<Value> =
            ["ctrl", "alt", "delete"].iter().map(|k| serde_json::json!({"type": "qcode", "data": k})).collect();
        self.qmp(serde_json::json!({"execute": "send-key", "arguments": {"keys": keys}})).await
    }

    /// Runs one QMP command.
    async fn qmp(&self, command: Value) -> anyhow::Result<()> {
        let stream = tokio::net::UnixStream::connect(self.dir.join("qmp.sock")).await.context("connect to QMP")?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        lines.next_line().await?; // the greeting
        for execute in [serde_json::json!({"execute": "qmp_capabilities"}), command] {
            write.write_all(format!("{execute}\n").as_bytes()).await?;
            loop {
                let line = lines.next_line().await?.context("QMP closed")?;
                let answer: Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(error) = answer.get("error") {
                    anyhow::bail!("QMP {execute}: {error}");
                }
                if answer.get("return").is_some() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Where its serial console can be connected to (a Unix socket).
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
}

/// Writes the NoCloud seed (`cidata`) of `boot` with `cloud-localds`.
async fn write_seed(dir: &Path, seed: &Path, boot: &Boot) -> anyhow::Result<()> {
    let user_data = dir.join("user-data");
    let meta_data = dir.join("meta-data");
    tokio::fs::write(&user_data, &boot.user_data).await?;
    tokio::fs::write(&meta_data, format!("instance-id: {}\n", boot.instance_id)).await?;
    let mut command = Command::new("cloud-localds");
    if let Some(network_data) = &boot.network_data {
        let path = dir.join("network-config");
        tokio::fs::write(&path, network_data).await?;
        command.arg("-N").arg(path);
    }
    command.arg(seed).arg(&user_data).arg(&meta_data);
    run(command, "cloud-localds").await
}

/// Runs one of the tools `scripts/build-guest-image.sh` installs, to its successful end.
async fn run(mut command: Command, tool: &str) -> anyhow::Result<()> {
    let status =
        command.status().await.with_context(|| format!("run {tool} (scripts/build-guest-image.sh installs it)"))?;
    anyhow::ensure!(status.success(), "{tool} failed: {status}");
    Ok(())
}

/// qemu's user network for a guest configured by `network_data`: its IPv4 network, gateway and
/// address (so that the forwarded SSH port reaches the address the guest gave itself).
fn slirp_network(network_data: &str) -> Option<(String, String, String)> {
    let config: serde_yaml::Value = serde_yaml::from_str(network_data).ok()?;
    let (_, ethernet) = config.get("ethernets")?.as_mapping()?.iter().next()?;
    let cidr =
        ethernet.get("addresses")?.as_sequence()?.iter().filter_map(|a| a.as_str()).find(|a| !a.contains(':'))?;
    let gateway = ethernet
        .get("routes")?
        .as_sequence()?
        .iter()
        .find(|r| r.get("to").and_then(|t| t.as_str()) == Some("0.0.0.0/0"))?
        .get("via")?
        .as_str()?;
    let (address, _) = cidr.split_once('/')?;
    Some((cidr.to_string(), gateway.to_string(), address.to_string()))
}

/// What a real guest boots from, for instance `vmi`: `None` unless its VM's root disk is
/// cloned from a DataSource with [`GUEST_IMAGE_ANNOTATION`] (looked up once a minute at most).
pub async fn boot_of(sim: &super::Sim, vmi: &DynamicObject) -> Result<Option<Boot>, kube::Error> {
    let ns = vmi.namespace().unwrap_or_default();
    let vm_name = vmi.labels().get("vm.kubevirt.io/name").cloned().unwrap_or_else(|| vmi.name_any());
    let Some(vm) = sim.vms.get(&ObjectRef::new(&vm_name).within(&ns)) else { return Ok(None) };
    let source = vm.spec.data_volume_templates.first().map(|t| t["spec"]["sourceRef"].clone()).unwrap_or_default();
    let (Some(source_ns), Some(source_name)) = (source["namespace"].as_str(), source["name"].as_str()) else {
        return Ok(None);
    };
    let Some(image) = sim.guests.image_of(&sim.client, source_ns, source_name).await? else { return Ok(None) };
    let spec = &vmi.data["spec"];
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    let Some(dv_name) = volumes.iter().find_map(|v| v["dataVolume"]["name"].as_str()) else { return Ok(None) };
    let Some(claim) = Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), &ns).get_opt(dv_name).await? else {
        return Ok(None);
    };
    let cloud_init = volumes.iter().find_map(|v| v.get("cloudInitNoCloud")).cloned().unwrap_or_default();
    let memory = spec["domain"]["memory"]["guest"]
        .as_str()
        .or(spec["domain"]["resources"]["requests"]["memory"].as_str())
        .and_then(crate::kubevirt::quantity_bytes)
        .unwrap_or(1 << 30);
    Ok(Some(Boot {
        key: format!("{ns}/{}", vmi.name_any()),
        image,
        disk: disk_name(&claim),
        user_data: cloud_init["userData"].as_str().unwrap_or("#cloud-config\n").to_string(),
        network_data: cloud_init["networkData"].as_str().map(String::from),
        instance_id: format!("{}.{ns}", vmi.name_any()),
        memory_mib: u64::try_from(memory / (1 << 20)).unwrap_or(1024),
        mac: spec["domain"]["devices"]["interfaces"][0]["macAddress"].as_str().map(String::from),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_network_holds_the_address_the_guest_configures() {
        let data = "version: 2\nethernets:\n  eth0:\n    match: {macaddress: '02:00:c6:12:41:05'}\n    set-name: eth0\n    \
                    addresses: [198.18.65.5/18, '2001:db8:201::5/64']\n    routes:\n    - {to: 0.0.0.0/0, via: 198.18.64.1}\n    \
                    - {to: '::/0', via: '2001:db8:201::1'}\n";
        assert_eq!(slirp_network(data), Some(("198.18.65.5/18".into(), "198.18.64.1".into(), "198.18.65.5".into())));
        assert_eq!(slirp_network("version: 2\n"), None);
    }
}
