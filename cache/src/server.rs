//! How vipavatar starts `redis-server`: one command line ([`ServerOptions`]) that the service's
//! private server and every test use, and [`TestRedis`], the throwaway server of a test binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket (TCP off).
    Socket(PathBuf),
    /// A loopback TCP port.
    Port(u16),
}

/// A `redis-server` command line: its files in `dir`, its log in `{dir}/redis.log`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub dir: PathBuf,
    pub listen: Listen,
    /// AOF on (the service's data); off for tests.
    pub persistent: bool,
}

impl ServerOptions {
    /// The URL clients connect to.
    pub fn url(&self) -> String {
        match &self.listen {
            Listen::Socket(socket) => format!("redis+unix://{}", socket.display()),
            Listen::Port(port) => format!("redis://127.0.0.1:{port}"),
        }
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The arguments after `redis-server`.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--dir".into(), self.dir.clone().into()];
        let appendonly = if self.persistent { "yes" } else { "no" };
        for a in ["--appendonly", appendonly, "--save", "", "--daemonize", "no", "--protected-mode", "yes"] {
            args.push(a.into());
        }
        args.push("--logfile".into());
        args.push(self.log_file().into());
        match &self.listen {
            Listen::Socket(socket) => {
                for a in ["--port", "0", "--unixsocketperm", "700", "--unixsocket"] {
                    args.push(a.into());
                }
                args.push(socket.clone().into());
            }
            Listen::Port(port) => {
                for a in ["--bind", "127.0.0.1", "--port"] {
                    args.push(a.into());
                }
                args.push(port.to_string().into());
            }
        }
        args
    }

    /// `redis-server` with [`Self::args`], its standard streams closed (it logs to its file).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("redis-server");
        cmd.args(self.args()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    /// A socket server with its files in `dir`, AOF off (tests).
    pub fn ephemeral(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), listen: Listen::Socket(dir.join("redis.sock")), persistent: false }
    }
}

/// Wait (up to 10 s) until `socket` exists, panicking otherwise: the start-up wait of tests.
pub fn wait_for_socket(socket: &Path) {
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start ({})", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A redis-server for one test binary that dies with the process: a shell holds the server and
/// stops it (and removes its directory) when our end of its stdin closes, however the binary
/// exits.
pub struct TestRedis {
    url: String,
    _guard: Child,
}

impl TestRedis {
    /// Start one in `{tmp}/vipavatar-{tag}-{pid}`.
    pub fn start(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vipavatar-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let options = ServerOptions::ephemeral(&dir);
        let script = r#"dir="$1"; shift; redis-server "$@" & pid=$!; read _; kill $pid; wait $pid; rm -rf "$dir""#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&dir)
            .args(options.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        wait_for_socket(&dir.join("redis.sock"));
        Self { url: options.url(), _guard: child }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}
