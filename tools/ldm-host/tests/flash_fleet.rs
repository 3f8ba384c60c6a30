//! `ldm-host flash` against real sshd instances on 127.0.0.1 (Debian's openssh-server, started
//! here as the current user with its own host key, authorized_keys and config): four devices,
//! one of them with too little disk, a fifth that is unreachable, one with a half-sent bundle
//! to resume. The report must say what happened to each; a second flash is a no-op; an
//! unhealthy model is rolled back and the report says why.
//!
//! Without sshd the test skips loudly, except with CI=true (or LDM_REQUIRE_SSHD=1), where it
//! fails. `--ignored` runs the throughput measurement (LDM_FLASH_BIG=FILE.ldm adds a large model
//! to one device).
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ldm_edge::bundle;
use serde_json::Value;

const SSHD: &str = "/usr/sbin/sshd";

#[path = "../../../tests/support/scratch.rs"]
mod scratch;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> std::process::Output {
    let o = cmd.output().expect("command runs");
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The device binary, built beside ldm-host (built here if this test runs on its own).
fn ldm_bin() -> PathBuf {
    let host = PathBuf::from(env!("CARGO_BIN_EXE_ldm-host"));
    let ldm = host.with_file_name("ldm");
    if !ldm.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .current_dir(repo())
            .args(["build", "--release", "--bin", "ldm"]));
    }
    ldm
}

fn ldm_host(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ldm-host"))
        .args(args)
        .output()
        .expect("ldm-host runs")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// sshd is needed; says whether to go on.
fn have_sshd() -> bool {
    if Path::new(SSHD).exists() && which("ssh") {
        return true;
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("LDM_REQUIRE_SSHD").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "CI=true but {SSHD} or ssh is missing: apt-get install openssh-server openssh-client"
    );
    eprintln!("SKIPPED: {SSHD} or ssh not found (apt-get install openssh-server openssh-client)");
    false
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Local sshd instances and the keys to reach them; killed on drop.
struct Fleet {
    dir: PathBuf,
    user: String,
    client_key: PathBuf,
    known_hosts: PathBuf,
    daemons: Vec<Child>,
    public_key: PathBuf,
}

struct Dev {
    name: String,
    port: u16,
    root: PathBuf,
}

impl Fleet {
    fn new(dir: &Path) -> Fleet {
        let keygen = |path: &Path| {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path));
        };
        let (host_key, client_key) = (dir.join("host_key"), dir.join("client_key"));
        keygen(&host_key);
        keygen(&client_key);
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        // sshd run by root wants its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let user = String::from_utf8(run(Command::new("id").arg("-un")).stdout)
            .unwrap()
            .trim()
            .to_string();
        let out = dir.join("fleet");
        let pubkey = dir.join("fleet.pub");
        let o = ldm_host(&["keygen", "-o", s(&out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Fleet {
            dir: dir.to_path_buf(),
            user,
            client_key,
            known_hosts: dir.join("known_hosts"),
            daemons: vec![],
            public_key: pubkey,
        }
    }

    /// Starts one sshd on a free port with a fresh device root; `env` is set in its sessions
    /// (sshd_config SetEnv), which is how a device is told it has little disk.
    fn device(&mut self, name: &str, env: Option<&str>) -> Dev {
        let port = free_port();
        let root = self.dir.join(format!("root-{name}"));
        std::fs::create_dir_all(root.join("keys")).unwrap();
        std::fs::copy(&self.public_key, root.join("keys/fleet.pub")).unwrap();
        std::fs::write(root.join("board"), "rpi4\n").unwrap();
        let cfg = self.dir.join(format!("sshd-{name}.conf"));
        let d = &self.dir;
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
                 PidFile {pid}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nLogLevel ERROR\n{setenv}",
                hk = s(&d.join("host_key")),
                ak = s(&d.join("authorized_keys")),
                pid = s(&d.join(format!("sshd-{name}.pid"))),
                setenv = env.map_or(String::new(), |e| format!("SetEnv {e}\n")),
            ),
        )
        .unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sshd starts");
        self.daemons.push(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd on {port} never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let mut kh = std::fs::read_to_string(&self.known_hosts).unwrap_or_default();
        kh.push_str(&format!("[127.0.0.1]:{port} {}", host_pub.trim()));
        kh.push('\n');
        std::fs::write(&self.known_hosts, kh).unwrap();
        Dev {
            name: name.into(),
            port,
            root,
        }
    }

    fn fleet_file(&self, path: &Path, devs: &[&Dev], extra: &[(&str, u16, &Path)]) {
        let mut t = format!(
            "[defaults]\nuser = \"{}\"\nldm = \"{}\"\nidentity = \"{}\"\n\
             ssh_options = [\"-F\", \"/dev/null\", \"-o\", \"StrictHostKeyChecking=yes\", \
             \"-o\", \"UserKnownHostsFile={}\"]\n",
            self.user,
            s(&ldm_bin()),
            s(&self.client_key),
            s(&self.known_hosts)
        );
        let all = devs
            .iter()
            .map(|d| (d.name.as_str(), d.port, d.root.as_path()))
            .chain(extra.iter().copied());
        for (name, port, root) in all {
            t.push_str(&format!(
                "\n[[device]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\nroot = \"{}\"\n",
                s(root)
            ));
        }
        std::fs::write(path, t).unwrap();
    }

    fn bundle(&self, model: &Path, version: u64, out: &Path) {
        let key = self.dir.join("fleet.key");
        let v = version.to_string();
        let o = ldm_host(&[
            "bundle",
            "create",
            s(model),
            "--key",
            s(&key),
            "--version",
            &v,
            "--boards",
            "rpi4,jetson",
            "-o",
            s(out),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.daemons {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `flash` and returns (success, report).
fn flash(bundle: &Path, fleet: &Path, report: &Path, extra: &[&str]) -> (bool, Value) {
    let mut args = vec![
        "flash",
        s(bundle),
        "--fleet",
        s(fleet),
        "--parallel",
        "4",
        "--report",
        s(report),
        "-q",
    ];
    args.extend_from_slice(extra);
    let o = ldm_host(&args);
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    (o.status.success(), r)
}

fn device<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap()
}

fn active_version(root: &Path) -> Option<u64> {
    let o = run(Command::new(ldm_bin()).args(["status", "--json", "--root", s(root)]));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_ne!(v["active"]["verified"], Value::Bool(false), "{v}");
    v["active"]["version"].as_u64()
}

/// Hash of a whole tree (names, modes, contents) to prove a no-op changed nothing.
fn tree_hash(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    fn walk(base: &Path, dir: &Path, h: &mut blake3_like::H) {
        let mut ents: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            h.add(p.strip_prefix(base).unwrap().to_string_lossy().as_bytes());
            h.add(&md.permissions().mode().to_le_bytes());
            if md.is_dir() {
                walk(base, &p, h);
            } else {
                h.add(&std::fs::read(&p).unwrap());
            }
        }
    }
    let mut h = blake3_like::H::default();
    walk(dir, dir, &mut h);
    h.hex()
}

/// The bundle module's file hash, over a buffer (no extra dev-dependency for BLAKE3 here).
mod blake3_like {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    pub struct H(Vec<u8>);
    impl H {
        pub fn add(&mut self, b: &[u8]) {
            self.0.extend_from_slice(&(b.len() as u64).to_le_bytes());
            self.0.extend_from_slice(b);
        }
        pub fn hex(&self) -> String {
            // One file per call: tests hash trees in parallel.
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = crate::scratch::scratch("flash-tree").join(n.to_string());
            std::fs::write(&p, &self.0).unwrap();
            let d = ldm_edge::bundle::hash_file(&p).unwrap();
            let _ = std::fs::remove_file(&p);
            ldm_edge::bundle::keys::hex(&d)
        }
    }
}

/// The shapes model with its decoder's last convolution zeroed: a constant image.
fn constant_model(out: &Path) {
    use ldm_edge::format::{ModelFile, ModelWriter};
    let f = ModelFile::open(repo().join("models/shapes-32.ldm")).unwrap();
    let mut w = ModelWriter::new(f.meta().clone()).unwrap();
    for t in f.tensors() {
        let v = f.tensor(&t.name).unwrap();
        let mut bytes = v.bytes.to_vec();
        if t.name.starts_with("vae.decoder.conv_out.") {
            bytes.fill(0);
        }
        w.add_raw(&t.name, v.shape(), t.dtype, bytes).unwrap();
    }
    w.write(out).unwrap();
}

#[test]
fn flash_a_fleet_over_ssh() {
    if !have_sshd() {
        return;
    }
    let dir = scratch::fresh("flash-fleet");
    let mut fleet = Fleet::new(&dir);
    let a = fleet.device("dev-a", None);
    let b = fleet.device("dev-b", None);
    let c = fleet.device("dev-c", None);
    let d = fleet.device("dev-small", Some("LDM_TEST_FREE_BYTES=1000000"));
    let dead_port = free_port();
    let dead_root = dir.join("root-dead");
    let fleet_toml = dir.join("fleet.toml");
    fleet.fleet_file(
        &fleet_toml,
        &[&a, &b, &c, &d],
        &[("dev-dead", dead_port, &dead_root)],
    );
    let bundle1 = dir.join("v1.ldmb");
    fleet.bundle(&repo().join("models/shapes-32.ldm"), 1, &bundle1);
    let len = std::fs::metadata(&bundle1).unwrap().len();

    // dev-c holds the first half of this bundle from an interrupted transfer.
    let id = bundle::keys::hex(&bundle::hash_file(&bundle1).unwrap()[..16]);
    let bytes = std::fs::read(&bundle1).unwrap();
    std::fs::create_dir_all(c.root.join("incoming")).unwrap();
    let half = len / 2;
    std::fs::write(
        c.root.join(format!("incoming/{id}.ldmb.part")),
        &bytes[..half as usize],
    )
    .unwrap();
    // dev-b holds a same-named partial file of garbage (another writer, a disk error): its
    // install is refused, and flash sends the whole bundle again once.
    std::fs::create_dir_all(b.root.join("incoming")).unwrap();
    std::fs::write(
        b.root.join(format!("incoming/{id}.ldmb.part")),
        vec![0x5au8; half as usize],
    )
    .unwrap();

    // dev-a holds a stale partial of some other bundle, which the flash clears away.
    std::fs::create_dir_all(a.root.join("incoming")).unwrap();
    std::fs::write(a.root.join("incoming/0123.ldmb.part"), b"old").unwrap();

    // A dry run changes nothing and sends nothing.
    let hashes: Vec<String> = [&a, &b, &c, &d]
        .iter()
        .map(|x| tree_hash(&x.root))
        .collect();
    let (_, r) = flash(&bundle1, &fleet_toml, &dir.join("dry.json"), &["--dry-run"]);
    for x in [&a, &b, &c] {
        assert_eq!(device(&r, &x.name)["status"], "would_install", "{r}");
    }
    assert_eq!(device(&r, "dev-c")["resumed_from"].as_u64(), Some(half));
    let after: Vec<String> = [&a, &b, &c, &d]
        .iter()
        .map(|x| tree_hash(&x.root))
        .collect();
    assert_eq!(hashes, after, "a dry run changed a device");

    let t = Instant::now();
    let (ok, r) = flash(&bundle1, &fleet_toml, &dir.join("r1.json"), &[]);
    eprintln!("first flash: {:.2} s", t.elapsed().as_secs_f64());
    assert!(
        !ok,
        "flash must fail when some devices did not take the update"
    );
    for x in [&a, &b, &c] {
        let e = device(&r, &x.name);
        assert_eq!(e["status"], "installed", "{e}");
        assert_eq!(e["version_after"].as_u64(), Some(1));
        assert_eq!(e["install"]["health"]["width"].as_u64(), Some(32));
        assert_eq!(active_version(&x.root), Some(1));
        // The staged bundle is gone once installed.
        let left: Vec<_> = std::fs::read_dir(x.root.join("incoming"))
            .unwrap()
            .flatten()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    assert_eq!(device(&r, "dev-a")["bytes_sent"].as_u64(), Some(len));
    let eb = device(&r, "dev-b");
    assert_eq!(eb["resumed_from"].as_u64(), Some(half), "{eb}");
    assert_eq!(eb["bytes_sent"].as_u64(), Some(len - half + len), "{eb}");
    let ec = device(&r, "dev-c");
    assert_eq!(ec["resumed_from"].as_u64(), Some(half), "{ec}");
    assert_eq!(ec["bytes_sent"].as_u64(), Some(len - half), "{ec}");
    let es = device(&r, "dev-small");
    assert_eq!(es["status"], "refused", "{es}");
    assert!(
        es["reason"].as_str().unwrap().contains("not enough space"),
        "{es}"
    );
    assert_eq!(es["bytes_sent"].as_u64(), Some(0));
    assert_eq!(active_version(&d.root), None);
    let ed = device(&r, "dev-dead");
    assert_eq!(ed["status"], "failed", "{ed}");
    assert!(
        ed["reason"].as_str().unwrap().contains("unreachable"),
        "{ed}"
    );

    // The second flash is a no-op: nothing sent, nothing changed.
    let hashes: Vec<String> = [&a, &b, &c, &d]
        .iter()
        .map(|x| tree_hash(&x.root))
        .collect();
    let (_, r) = flash(&bundle1, &fleet_toml, &dir.join("r2.json"), &[]);
    for x in [&a, &b, &c] {
        let e = device(&r, &x.name);
        assert_eq!(e["status"], "current", "{e}");
        assert_eq!(e["bytes_sent"].as_u64(), Some(0));
    }
    assert_eq!(device(&r, "dev-small")["status"], "refused");
    assert_eq!(device(&r, "dev-dead")["status"], "failed");
    let after: Vec<String> = [&a, &b, &c, &d]
        .iter()
        .map(|x| tree_hash(&x.root))
        .collect();
    assert_eq!(hashes, after, "the second flash changed a device");

    // An unhealthy model is rolled back, and the report says why.
    let bad = dir.join("constant.ldm");
    constant_model(&bad);
    let bundle2 = dir.join("v2.ldmb");
    fleet.bundle(&bad, 2, &bundle2);
    let one = dir.join("one.toml");
    fleet.fleet_file(&one, &[&a], &[]);
    let (ok, r) = flash(&bundle2, &one, &dir.join("r3.json"), &[]);
    assert!(!ok);
    let e = device(&r, "dev-a");
    assert_eq!(e["status"], "rolled_back", "{e}");
    assert!(e["reason"].as_str().unwrap().contains("constant"), "{e}");
    assert_eq!(active_version(&a.root), Some(1));
}

/// Throughput figures for the README: the default model to four devices, and a large model
/// (LDM_FLASH_BIG=FILE.ldm) to one.
#[test]
#[ignore]
fn flash_throughput() {
    if !have_sshd() {
        return;
    }
    let dir = scratch::fresh("flash-throughput");
    let mut fleet = Fleet::new(&dir);
    let devs: Vec<Dev> = (0..4)
        .map(|i| fleet.device(&format!("dev-{i}"), None))
        .collect();
    let toml = dir.join("fleet.toml");
    fleet.fleet_file(&toml, &devs.iter().collect::<Vec<_>>(), &[]);
    let b = dir.join("v1.ldmb");
    fleet.bundle(&repo().join("models/shapes-32.ldm"), 1, &b);
    let len = std::fs::metadata(&b).unwrap().len();
    let t = Instant::now();
    let (ok, r) = flash(&b, &toml, &dir.join("r.json"), &[]);
    let secs = t.elapsed().as_secs_f64();
    assert!(ok, "{r}");
    eprintln!(
        "THROUGHPUT default model: {len} bytes to 4 devices in {secs:.2} s ({:.1} MB/s total)",
        4.0 * len as f64 / 1e6 / secs
    );
    if let Ok(big) = std::env::var("LDM_FLASH_BIG") {
        let bb = dir.join("big.ldmb");
        let t = Instant::now();
        fleet.bundle(Path::new(&big), 1, &bb);
        let bundle_secs = t.elapsed().as_secs_f64();
        let blen = std::fs::metadata(&bb).unwrap().len();
        let one = dir.join("one.toml");
        let d = fleet.device("big", None);
        fleet.fleet_file(&one, &[&d], &[]);
        let steps = std::env::var("LDM_FLASH_BIG_STEPS").unwrap_or_else(|_| "1".into());
        let mut t = std::fs::read_to_string(&one).unwrap();
        t = t.replace(
            "[defaults]\n",
            &format!("[defaults]\ninstall_args = [\"--health-steps\", \"{steps}\"]\n"),
        );
        std::fs::write(&one, t).unwrap();
        let t = Instant::now();
        let (ok, r) = flash(&bb, &one, &dir.join("big.json"), &[]);
        let secs = t.elapsed().as_secs_f64();
        assert!(ok, "{r}");
        let e = device(&r, "big");
        eprintln!(
            "THROUGHPUT large model: bundle create {bundle_secs:.1} s; {blen} bytes to 1 device in \
             {secs:.1} s ({:.1} MB/s end to end; health check {:.1} s of it)",
            blen as f64 / 1e6 / secs,
            e["install"]["health"]["seconds"].as_f64().unwrap_or(0.0)
        );
    }
}
