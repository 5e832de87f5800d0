//! What an idle simulated hour costs under three ways of driving hosts:
//! turmoil-net's `ClientServer` fixture (1 ms fabric ticks), one paused
//! runtime stepped at 1 ms and 10 ms, and one paused runtime left to
//! advance to its next timer by itself (issue 14's evaluation).
use std::time::{Duration, Instant};
use tokio::task::LocalSet;
use tokio::time::sleep;
use turmoil_net::fixture::ClientServer;
use turmoil_net::shim::tokio::net::TcpListener;

const HOUR: Duration = Duration::from_secs(3600);
const HOSTS: usize = 6;

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn main() {
    // `ONLY=fixture|stepped|auto` runs one part (to time its CPU alone).
    let only = std::env::var("ONLY").ok();
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if runs("fixture") {
        fixture();
    }
    if runs("stepped") {
        stepped();
    }
    if runs("auto") {
        auto_advance();
    }
}

fn fixture() {
    // 1. turmoil-net's own fixture: one paused runtime, 1 ms fabric ticks.
    let t = Instant::now();
    let mut cs = ClientServer::new();
    for i in 0..HOSTS {
        cs = cs.server(format!("h{i}"), async {
            let l = TcpListener::bind("0.0.0.0:80").await.unwrap();
            loop {
                let _ = l.accept().await;
            }
        });
    }
    cs.run("client", async { sleep(HOUR).await });
    println!(
        "turmoil-net ClientServer fixture (1 ms ticks): idle hour {:?}",
        t.elapsed()
    );
}

fn stepped() {
    // 2. One paused runtime, host tasks on one LocalSet, stepped at 1 ms and 10 ms.
    for tick in [Duration::from_millis(1), Duration::from_millis(10)] {
        let rt = paused();
        let t = Instant::now();
        rt.block_on(async {
            let set = LocalSet::new();
            for _ in 0..HOSTS {
                set.spawn_local(async {
                    loop {
                        sleep(Duration::from_secs(600)).await;
                    }
                });
            }
            let client = set.spawn_local(async { sleep(HOUR).await });
            while !client.is_finished() {
                set.run_until(sleep(tick)).await;
            }
        });
        println!(
            "one paused runtime, stepped at {tick:?}: idle hour {:?}",
            t.elapsed()
        );
    }
}

fn auto_advance() {
    // 3. One paused runtime, event-driven: tokio advances to the next timer.
    let rt = paused();
    let t = Instant::now();
    rt.block_on(async {
        let set = LocalSet::new();
        for _ in 0..HOSTS {
            set.spawn_local(async {
                loop {
                    sleep(Duration::from_secs(600)).await;
                }
            });
        }
        set.run_until(sleep(HOUR)).await;
    });
    println!(
        "one paused runtime, auto-advance to next timer: idle hour {:?}",
        t.elapsed()
    );
}
