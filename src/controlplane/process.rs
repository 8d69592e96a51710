//! Child processes of the control plane that never outlive us.
//!
//! Every child is spawned by one keeper thread that lives as long as this process, with
//! `PR_SET_PDEATHSIG = SIGKILL`: when this process ends for any reason (the test harness
//! exits after a panicking test, Ctrl-C, a kill), the kernel kills the children. A graceful
//! [`Process::stop`] sends SIGTERM first.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn keeper() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("process-keeper".into())
            .spawn(move || {
                // This thread is the parent of every child; it never returns while the
                // process lives, so PDEATHSIG fires exactly when the process ends.
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the process keeper thread");
        Mutex::new(tx)
    })
}

/// A running child process with its output in a log file.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program args...`, with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Process> {
        let out =
            File::options().create(true).append(true).open(log).with_context(|| format!("open {}", log.display()))?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        die_with_parent(&mut command);
        let (tx, rx) = mpsc::channel();
        keeper().lock().expect("keeper lock").send((command, tx)).context("process keeper is gone")?;
        let child = rx
            .recv()
            .context("process keeper is gone")?
            .with_context(|| format!("start {} ({})", name, program.display()))?;
        tracing::debug!(name, pid = child.id(), "Started process");
        Ok(Process { name: name.to_string(), child, log: log.to_path_buf() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails with the tail of the log if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); last lines of {}:\n{}", self.name, self.log.display(), self.log_tail(30));
        }
        Ok(())
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`; waits until the process is gone.
    pub fn stop(&mut self, grace: Duration) {
        if self.has_exited() {
            return;
        }
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.has_exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(name = %self.name, "Process did not stop in {:?}; killing it", grace);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // The parent as the child will see it (the keeper thread's process: this one). Not "is
    // the parent PID 1": this process may itself be PID 1 (of a PID namespace).
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we own and have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it right away).
///
/// It is drawn at random from below the kernel's ephemeral range: a port the kernel hands
/// out (`bind` to port 0) is one it also gives to outgoing connections, and a busy process
/// (a client retrying against loopback, say) could take it before the caller binds it.
/// Resolves once something listens on 127.0.0.1:`port` (60 s at most).
pub(super) async fn wait_for_port(port: u16) -> Result<()> {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("nothing listens on 127.0.0.1:{port} after 60 s")
}

pub fn free_port() -> Result<u16> {
    use rand::RngExt as _;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 12_000 {
        for _ in 0..100 {
            let port = rand::rng().random_range(10_000..ephemeral_low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A process that is started again whenever it exits (as its Deployment would restart it
/// in a cluster: virt-controller exits when it loses its leader lease), until stopped.
pub struct Supervised {
    name: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    current: std::sync::Arc<Mutex<Option<u32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervised {
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Supervised> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut first = Process::spawn(name, program, args, log)?;
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(Some(first.pid())));
        let (n, p, a, l) = (name.to_string(), program.to_path_buf(), args.to_vec(), log.to_path_buf());
        let (stop2, current2) = (stop.clone(), current.clone());
        let thread = std::thread::Builder::new().name(format!("supervise-{name}")).spawn(move || {
            loop {
                let _ = first.child.wait();
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                tracing::info!(name = %n, "Process exited; starting it again");
                std::thread::sleep(Duration::from_secs(1));
                match Process::spawn(&n, &p, &a, &l) {
                    Ok(next) => {
                        *current2.lock().expect("lock") = Some(next.pid());
                        first = next;
                    }
                    Err(e) => {
                        tracing::error!(name = %n, "Could not restart: {e:#}");
                        return;
                    }
                }
                if stop2.load(Ordering::SeqCst) {
                    signal(first.pid(), libc::SIGTERM);
                }
            }
        })?;
        Ok(Supervised { name: name.to_string(), stop, current, thread: Some(thread) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills the current process without stopping supervision (to test restarts).
    pub fn kill_current(&self) {
        if let Some(pid) = *self.current.lock().expect("lock") {
            signal(pid, libc::SIGKILL);
        }
    }

    /// Stops supervising and terminates the process.
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(pid) = *self.current.lock().expect("lock") {
            signal(pid, libc::SIGTERM);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}
