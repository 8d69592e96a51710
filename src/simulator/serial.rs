//! A simulated guest's serial port: what it printed while booting, and what its console
//! sessions showed since (the echo of typed input). KubeVirt writes a guest's serial output to
//! a file its launcher Pod's `guest-console-log` container tails; here the same transcript is
//! what the console shows on connecting ([`super::console`]) and what the simulated kubelet
//! serves as that container's log ([`super::kubelet`]).

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::DynamicObject;

/// The most a transcript keeps of what consoles showed (the oldest bytes go first).
const KEPT: usize = 64 * 1024;
/// The most transcripts kept (instances whose Pod was never seen to end).
const MAX_TRANSCRIPTS: usize = 4096;

/// The host name the instance's cloud-init user data gives it.
pub fn hostname(vmi: &DynamicObject) -> Option<String> {
    let user_data = vmi.data["spec"]["volumes"]
        .as_array()?
        .iter()
        .find_map(|v| v["cloudInitNoCloud"]["userData"].as_str())?
        .to_string();
    let config: serde_yaml::Value = serde_yaml::from_str(&user_data).ok()?;
    config.get("hostname")?.as_str().map(String::from)
}

/// The login prompt of `host`.
pub fn prompt(host: &str) -> String {
    format!("{host} login: ")
}

/// What a Debian 12 cloud guest prints on its serial port from the kernel to the login prompt,
/// with `\r\n` line ends as a terminal gets them.
pub fn boot(host: &str, vcpus: u64, memory: &str, addresses: &[String]) -> String {
    let mut lines = vec![
        "[    0.000000] Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1".to_string(),
        "[    0.000000] Command line: BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-cloud-amd64 root=/dev/vda1 ro console=tty0 console=ttyS0,115200".to_string(),
        "[    0.000000] Hypervisor detected: KVM".to_string(),
        format!("[    0.012000] smpboot: Allowing {vcpus} CPUs, 0 hotplug CPUs"),
        format!("[    0.016000] Memory: {memory} guest memory"),
        "[    0.420000] virtio_blk virtio2: [vda] 20971520 512-byte logical blocks".to_string(),
        "[    0.980000] EXT4-fs (vda1): mounted filesystem with ordered data mode.".to_string(),
        "[    1.400000] systemd[1]: systemd 252.31-1~deb12u1 running in system mode".to_string(),
        "[  OK  ] Started systemd-journald.service - Journal Service.".to_string(),
        "[  OK  ] Finished cloud-init-local.service - Initial cloud-init job (pre-networking).".to_string(),
        "[  OK  ] Reached target network-pre.target - Preparation for Network.".to_string(),
    ];
    for address in addresses {
        lines.push(format!("ci-info: | eth0 | True | {address} | global |"));
    }
    lines.extend([
        format!(
            "[  OK  ] Finished cloud-init.service - Initial cloud-init job (metadata service crawler): hostname {host}."
        ),
        "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.".to_string(),
        "[  OK  ] Reached target multi-user.target - Multi-User System.".to_string(),
        String::new(),
        format!("Debian GNU/Linux 12 {host} ttyS0"),
        String::new(),
    ]);
    let mut text = lines.join("\r\n");
    text.push_str("\r\n");
    text.push_str(&prompt(host));
    text
}

/// The boot transcript of a simulated instance, from its spec and the addresses it reports.
pub fn boot_of(vmi: &DynamicObject) -> String {
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let host = hostname(vmi).unwrap_or(name);
    let domain = &vmi.data["spec"]["domain"];
    let vcpus = domain["cpu"]["cores"].as_u64().unwrap_or(1);
    let memory = domain["memory"]["guest"].as_str().unwrap_or("1Gi").to_string();
    let addresses = vmi.data["status"]["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["ipAddresses"].as_array().into_iter().flatten())
        .filter_map(|a| a.as_str().map(String::from))
        .collect::<Vec<_>>();
    boot(&host, vcpus, &memory, &addresses)
}

/// What each instance's consoles showed, by the instance's uid.
#[derive(Default)]
pub struct Transcripts(Mutex<HashMap<String, Vec<u8>>>);

impl Transcripts {
    /// Appends what a console showed of the instance `uid`.
    pub fn record(&self, uid: &str, bytes: &[u8]) {
        let mut all = self.0.lock().unwrap();
        if !all.contains_key(uid) && all.len() >= MAX_TRANSCRIPTS {
            all.clear();
        }
        let kept = all.entry(uid.to_string()).or_default();
        kept.extend_from_slice(bytes);
        if kept.len() > KEPT {
            kept.drain(..kept.len() - KEPT);
        }
    }

    /// What consoles showed of the instance `uid` so far.
    pub fn of(&self, uid: &str) -> Vec<u8> {
        self.0.lock().unwrap().get(uid).cloned().unwrap_or_default()
    }

    /// Forgets the instance `uid` (its launcher is gone, and so is its log).
    pub fn forget(&self, uid: &str) {
        self.0.lock().unwrap().remove(uid);
    }
}

/// The last `lines` lines of `text` (all with `None`), as kubelet's `tailLines`.
pub fn tail(text: &[u8], lines: Option<usize>) -> &[u8] {
    let Some(n) = lines else { return text };
    if n == 0 {
        return &text[text.len()..];
    }
    // A final line without its newline counts as a line.
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_ends_at_the_login_prompt_and_names_the_host_and_its_addresses() {
        let text = boot("web-1", 2, "2048Mi", &["198.51.100.5".into()]);
        assert!(text.ends_with("\r\nweb-1 login: "), "{text}");
        assert!(text.contains("smpboot: Allowing 2 CPUs"));
        assert!(text.contains("| 198.51.100.5 |"));
        assert!(text.contains("Debian GNU/Linux 12 web-1 ttyS0"));
    }

    #[test]
    fn tail_counts_lines_as_kubelet_does() {
        let text = b"a\nb\nc\n";
        assert_eq!(tail(text, None), text);
        assert_eq!(tail(text, Some(2)), b"b\nc\n");
        assert_eq!(tail(text, Some(5)), text);
        assert_eq!(tail(text, Some(0)), b"");
        assert_eq!(tail(b"a\nb\nprompt: ", Some(2)), b"b\nprompt: ");
        assert_eq!(tail(b"a\nb\nprompt: ", Some(1)), b"prompt: ");
    }

    #[test]
    fn transcripts_keep_the_newest_bytes_and_forget_ended_instances() {
        let t = Transcripts::default();
        t.record("u1", b"hello ");
        t.record("u1", b"world");
        assert_eq!(t.of("u1"), b"hello world");
        t.record("u2", &vec![b'x'; KEPT + 10]);
        assert_eq!(t.of("u2").len(), KEPT);
        t.forget("u1");
        assert!(t.of("u1").is_empty());
    }
}
