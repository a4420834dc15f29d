//! Memory handed back after a burst: the REAL egress-warden under the local Lambda emulator
//! carries 1,000 CONNECT tunnels at once (16 KiB echoed through each, from an upstream on
//! 127.0.0.2); within 10 s of their closing, its RSS is at most twice what it was idle. A
//! function pays for its memory for the life of the environment.

use std::time::{Duration, Instant};
use warden_tests::exclusive_async;
use warden_tests::load::{echo_upstream, raise_fd_limit, rss_kib, tunnel, Tunnel};
use warden_tests::warden::{
    free_port, shut_down_cleanly, started_through_init, ExtensionsDir, EXTENSION_NAME,
};

const TUNNELS: usize = 1_000;
const ECHOED: usize = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_given_back_after_a_thousand_tunnels() {
    // A measurement with a thousand sockets: no other heavy test beside it.
    let _turn = exclusive_async().await;
    raise_fd_limit();
    let echo = echo_upstream().await.expect("echo upstream");
    let d = ExtensionsDir::with_warden();
    let proxy = free_port();
    let mut emu =
        started_through_init(d.proxy_config(proxy).timeout(Duration::from_secs(60))).await;
    let pid = emu.pid(EXTENSION_NAME).expect("pid");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid);

    let tunnels: Vec<_> = (0..TUNNELS)
        .map(|_| tokio::spawn(tunnel(proxy, echo, ECHOED)))
        .collect();
    let mut open = Vec::new();
    let mut echoed = 0;
    for t in tunnels {
        let (outcome, stream) = t.await.expect("tunnel task");
        echoed += usize::from(outcome == Tunnel::Echoed);
        open.extend(stream);
    }
    let peak = rss_kib(pid);
    assert_eq!(echoed, TUNNELS, "every tunnel carried its bytes both ways");
    drop(open);

    let closed = Instant::now();
    let mut now = rss_kib(pid);
    while now > idle * 3 / 2 && closed.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = rss_kib(pid);
    }
    eprintln!(
        "RSS idle {idle} KiB, with {TUNNELS} tunnels {peak} KiB, {} ms after they closed {now} KiB",
        closed.elapsed().as_millis()
    );
    assert!(
        now <= 2 * idle,
        "RSS {now} KiB 10 s after the tunnels closed; idle it was {idle} KiB (peak {peak} KiB)"
    );
    shut_down_cleanly(&mut emu).await;
}
