//! The admin port's rules for peers off loopback, on the wire: the sidecar runs in a network
//! namespace of its own, reached from the host over a veth pair, so that it sees the host's
//! address on that link as the peer, not a 127.x one. Needs root (CAP_NET_ADMIN and
//! CAP_SYS_ADMIN) and `ip`; without them the tests say so and pass.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use asyncpool_testkit::sidecar::*;
use bytes::Bytes;

const TOKEN: &str = "s3cret-drain-token";
const WAIT: Duration = Duration::from_secs(5);
/// Network namespaces of these tests are named `NETNS_PREFIX<pid>-<n>`, their host-side links
/// `LINK_PREFIX<pid in hex>-<n>h` (at most 15 bytes).
const NETNS_PREFIX: &str = "asyncpool-test-";
const LINK_PREFIX: &str = "apd";

/// A network namespace with a veth pair to the host, on a private /30 of 10.251.0.0/16:
/// the first address on the host's side, `inside` on the namespace's. Drop deletes both.
struct Netns {
    ip: String,
    name: String,
    host_link: String,
    inside: Ipv4Addr,
}

/// Why network namespaces cannot be made here, if they cannot; else the `ip` to use.
fn ip_command() -> Result<String, String> {
    let ip = ["ip", "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"]
        .into_iter()
        .find(|ip| {
            Command::new(ip)
                .arg("-V")
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .ok_or("no `ip` command (iproute2)")?;
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or("no CapEff in /proc/self/status")?;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    for (cap, name) in [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ] {
        if effective & (1 << cap) == 0 {
            return Err(format!("not root: no {name}"));
        }
    }
    Ok(ip.to_string())
}

/// Runs `ip args`; its stdout, or what failed.
fn run_ip(ip: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(ip)
        .args(args)
        .output()
        .map_err(|e| format!("{ip} {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{ip} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    /// A new namespace, or `None` (said on stderr) when this host cannot make one. Any failure
    /// once it can fails the test.
    fn create() -> Option<Netns> {
        let ip = match ip_command() {
            Ok(ip) => ip,
            Err(why) => {
                // Straight to the stream, past the test harness's capture of a passing test.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: network namespaces cannot be made here ({why}); the off-loopback \
                     admin tests did not run"
                );
                return None;
            }
        };
        let ip_ok = |args: &[&str]| run_ip(&ip, args).unwrap_or_else(|e| panic!("{e}"));
        sweep_stale(&ip);

        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // A /30 from the pid and the counter, skipping any that a route on the host covers or
        // falls in.
        let (host, inside) = (0..64u32)
            .map(|attempt| {
                let block = (pid
                    .wrapping_mul(8)
                    .wrapping_add(n)
                    .wrapping_add(attempt * 97))
                    % 16384;
                let base = u32::from(Ipv4Addr::new(10, 251, 0, 0)) + block * 4;
                (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
            })
            .find(|(host, _)| {
                let net = format!("{}/30", Ipv4Addr::from(u32::from(*host) - 1));
                let covering = ip_ok(&["-4", "route", "show", "table", "all", "to", "match", &net]);
                let within = ip_ok(&["-4", "route", "show", "table", "all", "to", "root", &net]);
                covering
                    .lines()
                    .chain(within.lines())
                    .all(|route| route.starts_with("default"))
            })
            .expect("no free /30 in 10.251.0.0/16 after 64 tries");

        let ns = Netns {
            name: format!("{NETNS_PREFIX}{pid}-{n}"),
            host_link: format!("{LINK_PREFIX}{pid:x}-{n}h"),
            ip: ip.clone(),
            inside,
        };
        let inside_link = format!("{LINK_PREFIX}{pid:x}-{n}n");
        assert!(
            ns.host_link.len() <= 15,
            "link name {} too long",
            ns.host_link
        );
        ip_ok(&["netns", "add", &ns.name]);
        // From here on, the namespace is deleted on drop, whatever fails next.
        let ns_ip = |args: &[&str]| {
            let full: Vec<&str> = ["-n", ns.name.as_str()]
                .iter()
                .chain(args)
                .copied()
                .collect();
            ip_ok(&full)
        };
        ip_ok(&[
            "link",
            "add",
            &ns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inside_link,
            "netns",
            &ns.name,
        ]);
        ip_ok(&["addr", "add", &format!("{host}/30"), "dev", &ns.host_link]);
        ns_ip(&["addr", "add", &format!("{inside}/30"), "dev", &inside_link]);
        ns_ip(&["link", "set", "lo", "up"]);
        ns_ip(&["link", "set", &inside_link, "up"]);
        ip_ok(&["link", "set", &ns.host_link, "up"]);
        // Both ends up: the carrier comes a moment later.
        let operstate = format!("/sys/class/net/{}/operstate", ns.host_link);
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(&operstate).is_ok_and(|s| s.trim() == "up") {
            assert!(
                start.elapsed() < WAIT,
                "{} not up within {WAIT:?}",
                ns.host_link
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(ns)
    }

    /// The sidecar inside the namespace, on its address there; its admin port is reached from
    /// the host, through the veth pair.
    async fn sidecar(&self, args: &[&str]) -> Sidecar {
        let wrapper = [self.ip.as_str(), "netns", "exec", self.name.as_str()];
        Sidecar::start_wrapped(&wrapper, IpAddr::V4(self.inside), args, &[]).await
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes the other. The namespace goes once the last
        // process in it has (the sidecar is killed on its own drop).
        let link = run_ip(&self.ip, &["link", "del", &self.host_link]);
        let netns = run_ip(&self.ip, &["netns", "del", &self.name]);
        for result in [link, netns] {
            if let Err(error) = result {
                let _ = writeln!(std::io::stderr(), "cleanup: {error}");
            }
        }
    }
}

/// Deletes what runs killed before their drop (Ctrl-C) left behind: our namespaces and host
/// links, by name, of a process that no longer exists. (A sidecar such a run orphaned keeps its
/// namespace alive until it exits; deleting the link still frees the address range.)
fn sweep_stale(ip: &str) {
    let dead = |pid: Option<u32>| {
        pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(list) = run_ip(ip, &["netns", "list"]) {
        for name in list
            .lines()
            .filter_map(|line| line.split_whitespace().next())
        {
            let pid = name
                .strip_prefix(NETNS_PREFIX)
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse().ok());
            if dead(pid) {
                let _ = run_ip(ip, &["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = run_ip(ip, &["-o", "link", "show", "type", "veth"]) {
        // `N: apd<pid in hex>-<n>h@ifM: ...`
        for link in links.lines().filter_map(|line| line.split(": ").nth(1)) {
            let link = link.split('@').next().unwrap_or(link);
            let pid = link
                .strip_prefix(LINK_PREFIX)
                .and_then(|rest| rest.strip_suffix('h'))
                .and_then(|rest| rest.split_once('-'))
                .filter(|(_, n)| n.parse::<u32>().is_ok())
                .and_then(|(pid, _)| u32::from_str_radix(pid, 16).ok());
            if dead(pid) {
                let _ = run_ip(ip, &["link", "del", link]);
            }
        }
    }
}

async fn post(admin: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    request_with(admin, "POST", path, headers, Bytes::from(body.to_string()))
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The drain state as `/readyz` (the kubelet's view) and `/metrics` report it, which must agree.
async fn draining(admin: SocketAddr) -> bool {
    let readyz = get(admin, "/readyz").await.expect("GET /readyz");
    let metrics = get(admin, "/metrics").await.expect("GET /metrics");
    let metrics = text(&metrics);
    let gauge = metrics
        .lines()
        .find_map(|line| line.strip_prefix("asyncpool_sidecar_draining "))
        .unwrap_or_else(|| panic!("no draining gauge in {metrics}"));
    match (readyz.status, gauge) {
        (200, "0") => false,
        (503, "1") => true,
        other => panic!("/readyz and the draining gauge disagree: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_drain_needs_the_drain_token() {
    let Some(ns) = Netns::create() else { return };
    let sidecar = ns
        .sidecar(&["--source", "report", "--drain-token", TOKEN])
        .await;
    let admin = sidecar.admin;
    assert!(!draining(admin).await);

    let bearer_wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    let refused: &[(&str, &[(&str, &str)])] = &[
        ("no token", &[]),
        ("a wrong token", &[("authorization", "Bearer wrong")]),
        ("the token and more", &[("authorization", &bearer_wrong)]),
        ("an empty bearer", &[("authorization", "Bearer ")]),
        ("the token without a scheme", &[("authorization", TOKEN)]),
        ("the token as Basic", &[("authorization", &basic)]),
        ("the token in another header", &[("x-drain-token", TOKEN)]),
    ];
    for (what, headers) in refused {
        let reply = post(admin, "/drain", headers, "").await;
        assert_eq!(reply.status, 403, "{what}: {}", text(&reply));
        assert!(
            text(&reply).contains("loopback or with the drain token"),
            "{what}: {}",
            text(&reply)
        );
        assert!(!draining(admin).await, "{what} started a drain");
    }

    let bearer = format!("Bearer {TOKEN}");
    let reply = post(admin, "/drain", &[("authorization", &bearer)], "").await;
    assert_eq!(reply.status, 202, "{}", text(&reply));
    assert_eq!(
        reply.json(),
        serde_json::json!({"draining": true, "started": true})
    );
    wait_until("the drain to show", WAIT, || draining(admin)).await;
    // A second one is accepted and says the drain was already under way.
    let again = post(admin, "/drain", &[("authorization", &bearer)], "").await;
    assert_eq!(again.status, 202, "{}", text(&again));
    assert_eq!(again.json()["started"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_without_a_configured_token_neither_drain_nor_report_is_accepted() {
    let Some(ns) = Netns::create() else { return };
    let sidecar = ns.sidecar(&["--source", "report"]).await;
    let admin = sidecar.admin;

    // No token configured: no header opens /drain.
    for headers in [
        &[][..],
        &[("authorization", "Bearer ")],
        &[("authorization", "Bearer x")],
    ] {
        let reply = post(admin, "/drain", headers, "").await;
        assert_eq!(reply.status, 403, "{headers:?}: {}", text(&reply));
        assert!(!draining(admin).await, "{headers:?} started a drain");
    }

    // A valid report, refused for its address alone, and not applied: still no data.
    let reply = post(
        admin,
        "/report",
        &[("content-type", "application/json")],
        r#"{"queued": 5, "inFlight": 2}"#,
    )
    .await;
    assert_eq!(reply.status, 403, "{}", text(&reply));
    assert!(text(&reply).contains("loopback only"), "{}", text(&reply));
    let queue = get(admin, "/queue").await.expect("GET /queue");
    assert_eq!(queue.status, 503, "{}", text(&queue));
    assert!(queue.json()["error"].is_string(), "{}", text(&queue));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_token_does_not_lock_out_loopback() {
    // The preStop hook's call: loopback, no token, while one is configured.
    let sidecar = Sidecar::start(&["--source", "report", "--drain-token", TOKEN]).await;
    assert!(!draining(sidecar.admin).await);
    let reply = post(sidecar.admin, "/drain", &[], "").await;
    assert_eq!(reply.status, 202, "{}", text(&reply));
    wait_until("the drain to show", WAIT, || draining(sidecar.admin)).await;
}
