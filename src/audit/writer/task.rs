//! The writer task: the one place that drains the message queue, batches it and hands it to [`Core`].
//!
//! It owns the queue's receiving end and the blocking thread the file work runs on; it must not encode
//! records or touch the log file itself.

use super::*;

pub(super) async fn run_writer(
    mut core: Core,
    mut rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    durable_tx: watch::Sender<u64>,
    batch_delay: Duration,
) {
    let mut running = true;
    while running {
        let mut batch = Vec::with_capacity(256);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break; // every handle is gone and the queue is empty
        }
        let mut urgent = batch.iter().any(Msg::is_urgent);
        if !urgent {
            let sleep = tokio::time::sleep_until(Instant::now() + batch_delay);
            tokio::pin!(sleep);
            while !urgent && batch.len() < MAX_BATCH {
                let before = batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, MAX_BATCH - before) => {
                        if n == 0 { running = false; break; }
                        urgent = batch[before..].iter().any(Msg::is_urgent);
                    }
                    _ = &mut sleep => break,
                }
            }
        }
        // Take whatever else is already queued into the same fsync.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if batch.iter().any(|m| matches!(m, Msg::Close { .. })) {
            running = false;
            // Nothing new may enter, but everything already queued is written in this last batch.
            rx.close();
            while let Ok(m) = rx.try_recv() {
                batch.push(m);
            }
        }
        // The batch has left the queue: its events no longer count against the byte budget.
        let taken: u64 = batch
            .iter()
            .map(|m| match m {
                Msg::Event { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum();
        shared.queued_bytes.fetch_sub(taken, Ordering::AcqRel);
        let dropped = shared.dropped_pending.swap(0, Ordering::Relaxed);
        let finish = !running;
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = core.commit(batch, dropped);
            if finish {
                core.finish();
            }
            (core, outcome)
        })
        .await;
        let Ok((c, outcome)) = joined else {
            tracing::error!(path = %shared.path.display(), "audit writer panicked; no further records are written");
            return;
        };
        core = c;
        shared
            .durable_events
            .fetch_add(outcome.events_written, Ordering::Relaxed);
        shared
            .lost
            .fetch_add(outcome.events_lost, Ordering::Relaxed);
        durable_tx.send_replace(core.durable_seq);
        for (done, result) in outcome.replies {
            let _ = done.send(result);
        }
    }
    if running {
        // All handles dropped without close(): everything queued was committed above.
        let _ = tokio::task::spawn_blocking(move || core.finish()).await;
    }
}
