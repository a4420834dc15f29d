//! The TCP listener (RFC 7766): two-byte length framing, queries on one connection answered
//! in order, an idle timeout, and a cap on connections (beyond it a new one waits up to 100 ms for
//! a slot, then is closed).

use super::core::{Core, Handled, Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// How long a client over the connection cap waits for a slot before it is turned away.
const SLOT_WAIT: Duration = Duration::from_millis(100);

pub(crate) fn spawn(core: Arc<Core>, listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(accept_loop(core, listener))
}

async fn accept_loop(core: Arc<Core>, listener: TcpListener) {
    // Connections live in this set, so aborting the accept loop ends them too.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: give closing connections a moment.
                tracing::debug!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Reaped after the accept, not before: connections that ended while it waited must
        // not count against the newcomer.
        while connections.try_join_next().is_some() {}
        if connections.len() >= core.tuning.tcp_max_connections {
            // Clients that just closed may not have been seen closing yet: a slot that frees
            // within a moment goes to this one.
            let freed = timeout(SLOT_WAIT, connections.join_next()).await;
            if !matches!(freed, Ok(Some(_))) {
                drop(stream);
                continue;
            }
        }
        connections.spawn(serve(core.clone(), stream));
    }
}

async fn serve(core: Arc<Core>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let idle = core.tuning.tcp_idle;
    let mut packet = Vec::new();
    let mut key = Vec::new();
    let mut out = Vec::new();
    let mut frame = Vec::new();
    loop {
        let mut len = [0u8; 2];
        if !matches!(timeout(idle, stream.read_exact(&mut len)).await, Ok(Ok(_))) {
            return;
        }
        packet.resize(usize::from(u16::from_be_bytes(len)), 0);
        if !matches!(
            timeout(idle, stream.read_exact(&mut packet)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        match core.handle(&packet, Transport::Tcp, core.now(), &mut key, &mut out) {
            Handled::Reply => {}
            // Garbage on a stream: the framing can no longer be trusted.
            Handled::Ignore => return,
            Handled::Miss(missed) => core.answer_miss(&missed, &mut out).await,
        }
        frame.clear();
        frame.extend_from_slice(&(out.len() as u16).to_be_bytes());
        frame.extend_from_slice(&out);
        if !matches!(timeout(idle, stream.write_all(&frame)).await, Ok(Ok(()))) {
            return;
        }
    }
}
