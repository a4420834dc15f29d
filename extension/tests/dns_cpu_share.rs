//! The UDP listener held to a tenth of a CPU (a CFS quota on its thread), as Lambda holds a
//! function of little memory: the thread then counts as short of CPU and sends each batch's
//! answers together, and every answer must still reach the client that asked, with its ID and
//! the right record. Its own process, so the listener's thread is the only one of its name.
//!
//! Needs the cgroup v1 "cpu" controller, writable (as root): without it the test is skipped with
//! a note, and fails under CI (`warden_tests::prerequisite`).

mod dns_support;

use dns_support::*;
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use std::fs;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;
use warden_tests::prerequisite;

const CPU_CGROUP: &str = "/sys/fs/cgroup/cpu";

/// A cgroup holding one thread to `quota_us` per `period_us`; the thread leaves it on drop.
struct Quota {
    dir: PathBuf,
    tid: String,
}

impl Quota {
    /// The quota, or why it cannot be set here and how to get a controller that can.
    fn hold(tid: &str, period_us: u32, quota_us: u32) -> Result<Quota, String> {
        let root = Path::new(CPU_CGROUP);
        if !root.join("cpu.cfs_quota_us").exists() {
            return Err(format!(
                "no cgroup v1 cpu controller at {CPU_CGROUP}: as root, \
                 mkdir -p {CPU_CGROUP} && mount -t cgroup -o cpu cpu {CPU_CGROUP}"
            ));
        }
        let dir = root.join(format!("warden-dns-test-{}", std::process::id()));
        fs::create_dir(&dir)
            .map_err(|e| format!("cannot create {} ({e}): run as root", dir.display()))?;
        let quota = Quota {
            dir,
            tid: tid.to_string(),
        };
        let held = fs::write(quota.dir.join("cpu.cfs_period_us"), period_us.to_string())
            .and_then(|()| fs::write(quota.dir.join("cpu.cfs_quota_us"), quota_us.to_string()))
            .and_then(|()| fs::write(quota.dir.join("tasks"), tid));
        held.map(|()| quota)
            .map_err(|e| format!("cannot set a CFS quota under {CPU_CGROUP} ({e}): run as root"))
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        let _ = fs::write(Path::new(CPU_CGROUP).join("tasks"), &self.tid);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The thread id of the listener's UDP thread ("warden-dns-udp-0", cut to 15 bytes in `comm`).
fn udp_thread() -> Option<String> {
    fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
        let task = task.ok()?;
        let comm = fs::read_to_string(task.path().join("comm")).ok()?;
        comm.starts_with("warden-dns-udp")
            .then(|| task.file_name().to_string_lossy().into())
    })
}

/// (ns waited for a CPU while runnable, time slices) of thread `tid`.
fn waits(tid: &str) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).expect("schedstat");
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().expect("number"))
        .collect();
    (fields[1], fields[2])
}

#[test]
fn every_answer_arrives_whole_while_the_listener_is_short_of_cpu() {
    let h = Harness::start(Setup::default());
    let cached = dig_answers(h.port, &["www.test", "A"]);
    assert_eq!(cached.len(), 1, "{cached:?}");
    let tid = udp_thread().expect("the listener's UDP thread");
    let Some(_quota) = prerequisite(
        "writable cgroup v1 cpu controller",
        Quota::hold(&tid, 10_000, 1_000),
    ) else {
        return;
    };
    let before = waits(&tid);

    // 64 clients, each with a query outstanding at once, 40 rounds: batches queue up behind
    // the quota, so they are answered in batches.
    const CLIENTS: u16 = 64;
    const ROUNDS: u16 = 40;
    let clients: Vec<UdpSocket> = (0..CLIENTS)
        .map(|_| {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            socket
        })
        .collect();
    let mut buf = [0u8; 512];
    for round in 0..ROUNDS {
        for (i, client) in (0u16..).zip(&clients) {
            let query = query_bytes(round * CLIENTS + i, "www.test.", RecordType::A, None);
            client
                .send_to(&query, (Ipv4Addr::LOCALHOST, h.port))
                .expect("send");
        }
        for (i, client) in (0u16..).zip(&clients) {
            let (len, _) = client
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}, client {i}: no answer: {e}"));
            let answer = Message::from_vec(&buf[..len]).expect("a DNS message");
            assert_eq!(
                answer.metadata.id,
                round * CLIENTS + i,
                "answer for another query"
            );
            let records: Vec<String> = answer
                .answers
                .iter()
                .map(|r| match &r.data {
                    RData::A(a) => a.to_string(),
                    other => format!("{other:?}"),
                })
                .collect();
            assert_eq!(records, ["192.0.2.1"], "round {round}, client {i}");
        }
    }

    // The quota did hold the thread back: far more than the 100 µs per time slice from which
    // it counts as short of CPU.
    let after = waits(&tid);
    let (waited, slices) = (after.0 - before.0, (after.1 - before.1).max(1));
    assert!(
        waited / slices >= 100_000,
        "{waited} ns waited over {slices} slices"
    );
    assert_eq!(h.upstream.count("www.test.", RecordType::A), 1, "all hits");
}
