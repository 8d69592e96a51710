//! What nodes leave on the machine, and its removal: stale shims, mounts and network namespaces
//! of dead runs, a node's sandboxes, mounts, iptables chains and bridge once it stops, and the
//! check that nothing is left.

use std::path::Path;
use std::time::Duration;

use super::{BRIDGE, run};

/// The iptables chains a node makes (kube-proxy's and kubelet's, and the fence).
const OWN_CHAINS: [&str; 2] = ["KUBE-", "VPS-"];

/// What a node of a process that died without its exit handler (killed) left: containerd
/// shims whose containerd socket is gone, mounts under the folders of dead control planes,
/// the pods' network namespaces (one real node runs on a machine at a time).
pub(super) fn clean_stale() {
    kill_stale_shims();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dead = |path: &str| {
        path.split('/')
            .find_map(|part| part.strip_prefix("vps-cp-")?.split('-').next()?.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut stale: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| dead(m)).collect();
    stale.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in stale {
        let _ = run("umount", &["-l", mount]);
    }
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("cni-") {
                let _ = run("ip", &["netns", "delete", &name]);
            }
        }
    }
}

/// Kills containerd shims whose containerd socket is gone.
fn kill_stale_shims() {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.first().is_some_and(|a| a.ends_with("containerd-shim-runc-v2")) {
            continue;
        }
        let socket = args.iter().skip_while(|a| *a != "-address").nth(1);
        if socket.is_some_and(|s| s.ends_with("node/containerd/containerd.sock") && !Path::new(s).exists()) {
            // SAFETY: SIGKILL to an orphaned shim of a dead node.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Kills every container and sandbox containerd runs for kubelet.
pub(super) fn stop_sandboxes(socket: &Path) {
    let address = socket.display().to_string();
    let tasks = run("ctr", &["--address", &address, "-n", "k8s.io", "tasks", "list", "-q"]).unwrap_or_default();
    for task in tasks.lines().filter(|t| !t.is_empty()) {
        let _ = run("ctr", &["--address", &address, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", task]);
    }
    std::thread::sleep(Duration::from_millis(500));
    for task in tasks.lines().filter(|t| !t.is_empty()) {
        let _ = run("ctr", &["--address", &address, "-n", "k8s.io", "tasks", "delete", "-f", task]);
    }
}

/// What a node leaves when its processes are gone, removed: mounts under its folder,
/// kube-proxy's and kubelet's iptables chains, the bridge, the pods' network namespaces.
pub fn clean_up(dir: &Path, kube_proxy: &Path) {
    // Mounts under the node's folder (kubelet's pod volumes, containerd's snapshots), deepest first.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut ours: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in ours {
        let _ = run("umount", &["-l", &mount]);
    }
    let _ = run(&kube_proxy.display().to_string(), &["--cleanup"]);
    // kubelet's chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) and what jumps to them.
    for table in ["filter", "nat", "mangle"] {
        let rules = run("iptables", &["-t", table, "-S"]).unwrap_or_default();
        // Rules of built-in chains that jump to a KUBE- chain (those inside go with it).
        let jumps = rules.lines().filter(|r| {
            r.starts_with("-A ") && !own_chain(&r[3..]) && OWN_CHAINS.iter().any(|c| r.contains(&format!("-j {c}")))
        });
        for rule in jumps {
            let words = shell_words(&rule[3..]);
            let mut args = vec!["-t", table, "-D"];
            args.extend(words.iter().map(String::as_str));
            let _ = run("iptables", &args);
        }
        for chain in rules.lines().filter_map(|r| r.strip_prefix("-N ")).filter(|c| own_chain(c)) {
            let _ = run("iptables", &["-t", table, "-F", chain]);
            let _ = run("iptables", &["-t", table, "-X", chain]);
        }
    }
    let _ = run("ip", &["link", "delete", BRIDGE]);
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("cni-") {
                let _ = run("ip", &["netns", "delete", &name]);
            }
        }
    }
}

/// Whether `text` (a chain's name, or a rule from its chain's name on) is a node's chain.
fn own_chain(text: &str) -> bool {
    OWN_CHAINS.iter().any(|c| text.starts_with(c))
}

/// The words of an `iptables -S` rule, double-quoted ones (comments) kept whole.
fn shell_words(rule: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// What is left on the machine by nodes (checked by the real-node suite after its node has
/// stopped): iptables chains of kube-proxy or kubelet, the bridge, pod network namespaces,
/// mounts under `dir`.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for table in ["filter", "nat", "mangle"] {
        let rules = run("iptables", &["-t", table, "-S"]).unwrap_or_default();
        left.extend(
            rules
                .lines()
                .filter(|l| OWN_CHAINS.iter().any(|c| l.contains(c)))
                .map(|l| format!("iptables -t {table}: {l}")),
        );
    }
    if run("ip", &["link", "show", BRIDGE]).is_ok() {
        left.push(format!("the bridge {BRIDGE}"));
    }
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        left.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cni-"))
                .map(|n| format!("netns {n}")),
        );
    }
    let prefix = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(|m| format!("mount {m}")),
    );
    left
}

#[cfg(test)]
mod tests {
    #[test]
    fn rules_are_split_as_the_shell_would() {
        let rule = r#"PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#;
        assert_eq!(
            super::shell_words(rule),
            ["PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]
        );
    }
}
