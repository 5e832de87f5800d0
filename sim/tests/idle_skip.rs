//! Issue 14, item 1: eliding idle ticks (the vendored turmoil's
//! `Builder::skip_idle_time`, `vendor/README.md`) gives exactly the run that
//! stepping every tick gives. `tests/scenarios.rs` proves it for every
//! scenario; this world is built to hit the edges: timers between ticks, on
//! tick boundaries and sub-millisecond apart, a local-set task and a
//! runtime task per connection, messages in both directions, long idle gaps
//! and an unbiased `select!`, whose pick tokio draws from the seed each
//! `block_on` takes from the runtime's generator (so a skip that
//! mis-accounts the elided `block_on`s changes this log).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use turmoil::net::{TcpListener, TcpStream};

type Log = Arc<Mutex<Vec<String>>>;

const TICK: Duration = Duration::from_millis(1);

fn note(log: &Log, line: String) {
    log.lock()
        .unwrap()
        .push(format!("{:?} {line}", turmoil::elapsed()));
}

/// Eight unbiased two-way picks: tokio draws each from the thread's RNG,
/// which every `block_on` reseeds from the runtime's seed generator.
async fn picks() -> String {
    let mut bits = String::new();
    for _ in 0..8 {
        // Deliberately not `biased;`: this reads tokio's seeded RNG.
        let bit = tokio::select! {
            _ = std::future::ready(()) => '0',
            _ = std::future::ready(()) => '1',
        };
        bits.push(bit);
    }
    bits
}

struct Outcome {
    log: Vec<String>,
    result: Result<(), String>,
    elapsed: Duration,
    /// Per running host: the scheduler tick, seed-generator state and
    /// local-set tick (what stepping moves besides clocks).
    counters: Vec<(String, u32, u64, u8)>,
    steps: u64,
    longest_step: Duration,
    /// Steps taken while a host was crashed (`crash_world` only).
    steps_while_down: u64,
}

fn run(skip: bool, tick: Duration, duration: Duration, client_waits_us: &'static [u64]) -> Outcome {
    let log: Log = Arc::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(7)
        .tick_duration(tick)
        .simulation_duration(duration)
        .skip_idle_time(skip)
        .build();
    let server_log = log.clone();
    sim.host("server", move || {
        let log = server_log.clone();
        async move {
            // A local-set task on a period that is not a whole millisecond.
            tokio::task::spawn_local({
                let log = log.clone();
                async move {
                    let mut every = tokio::time::interval(Duration::from_micros(7_333_300));
                    for n in 0..12 {
                        every.tick().await;
                        note(&log, format!("server tick {n} {}", picks().await));
                    }
                }
            });
            let listener = TcpListener::bind(("0.0.0.0", 1)).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                let log = log.clone();
                // A runtime-scheduler task per connection.
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let wait: u64 = line.parse().unwrap();
                        tokio::time::sleep(Duration::from_micros(wait)).await;
                        note(&log, format!("server answers {line} {}", picks().await));
                        if write
                            .write_all(format!("{line}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        }
    });
    let client_log = log.clone();
    sim.client("client", async move {
        let log = client_log;
        let stream = TcpStream::connect("server:1").await?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        for (i, wait) in client_waits_us.iter().enumerate() {
            tokio::time::sleep(Duration::from_micros(*wait)).await;
            note(&log, format!("client woke {i} {}", picks().await));
            // The server waits a different, odd time before answering.
            let server_wait = (wait / 3) % 2_000_000 + 500;
            write
                .write_all(format!("{server_wait}\n").as_bytes())
                .await?;
            let answer = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
            note(&log, format!("client got {answer:?}"));
        }
        Ok(())
    });
    let mut steps = 0;
    let mut longest_step = Duration::ZERO;
    let result = loop {
        let before = sim.elapsed();
        let step = sim.step();
        steps += 1;
        longest_step = longest_step.max(sim.elapsed() - before);
        match step {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    let log = log.lock().unwrap().clone();
    Outcome {
        log,
        result,
        elapsed: sim.elapsed(),
        counters: sim.idle_skip_counters(),
        steps,
        longest_step,
        steps_while_down: 0,
    }
}

/// Waits (µs) before each client request: zero, whole ticks, sub-tick and
/// sub-millisecond offsets, and minutes of nothing.
const WAITS: &[u64] = &[
    0, 1_000, 2_500, 10_000_000, 9_999_500, 60_000_000, 3_000, 100, 90_000_001, 1_000_000,
];

#[test]
fn idle_skip_gives_steppings_exact_run() {
    let stepped = run(false, TICK, Duration::from_secs(600), WAITS);
    let skipped = run(true, TICK, Duration::from_secs(600), WAITS);
    assert_eq!(stepped.result, Ok(()));
    assert!(
        stepped.log.len() > 30,
        "the world did too little: {:#?}",
        stepped.log
    );
    assert_eq!(skipped.log, stepped.log);
    assert_eq!(skipped.result, stepped.result);
    assert_eq!(skipped.elapsed, stepped.elapsed);
    assert!(!stepped.counters.is_empty());
    assert_eq!(skipped.counters, stepped.counters);
    // Stepping moves one tick per step; skipping elided most of them.
    assert_eq!(stepped.longest_step, TICK);
    assert!(skipped.longest_step >= Duration::from_secs(60));
    assert!(
        skipped.steps * 50 < stepped.steps,
        "{} steps skipping vs {} stepping",
        skipped.steps,
        stepped.steps
    );
}

#[test]
fn idle_skip_fails_at_the_duration_limit_like_stepping() {
    // The client sleeps past the simulation's duration: stepping fails the
    // run at the first step beyond it, and so must a skip over that gap.
    const PAST_THE_LIMIT: &[u64] = &[5_000, 3_600_000_000];
    let stepped = run(false, TICK, Duration::from_secs(20), PAST_THE_LIMIT);
    let skipped = run(true, TICK, Duration::from_secs(20), PAST_THE_LIMIT);
    assert!(stepped.result.is_err(), "{:?}", stepped.result);
    assert_eq!(skipped.result, stepped.result);
    assert_eq!(skipped.elapsed, stepped.elapsed);
    assert_eq!(skipped.log, stepped.log);
    assert_eq!(skipped.counters, stepped.counters);
    assert!(skipped.steps * 50 < stepped.steps);
}

#[test]
fn idle_skip_gives_steppings_exact_run_at_coarser_ticks() {
    // A tick longer than a millisecond can cross the timer wheel's slot
    // boundaries (64 ms and up), where stepping's scheduler turns once more:
    // the skip must account for exactly those. 7 ms and 100 ms do not
    // divide 64 ms; 64 ms lines up with it.
    for ms in [7, 10, 64, 100] {
        let tick = Duration::from_millis(ms);
        let stepped = run(false, tick, Duration::from_secs(600), WAITS);
        let skipped = run(true, tick, Duration::from_secs(600), WAITS);
        assert_eq!(stepped.result, Ok(()), "tick {ms} ms");
        assert_eq!(skipped.log, stepped.log, "tick {ms} ms");
        assert_eq!(skipped.elapsed, stepped.elapsed, "tick {ms} ms");
        assert_eq!(skipped.counters, stepped.counters, "tick {ms} ms");
        assert!(skipped.steps * 10 < stepped.steps, "tick {ms} ms");
    }
}

/// Logs turmoil's time when dropped by a crash (`crashing`). (Dropped with
/// the world after the run, it logs nothing: no host is current then. It
/// reads no tokio clock: a runtime being dropped has left its context, so
/// tokio would read the wall clock, upstream as here.)
struct DropProbe {
    log: Log,
    crashing: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        if self.crashing.load(std::sync::atomic::Ordering::SeqCst) {
            note(&self.log, "server dropped".into());
        }
    }
}

/// `write_while_down`: the client keeps its first connection and writes on
/// it while the server is crashed, so a message waits in the crashed host's
/// ready queue until the restart.
fn crash_world(skip: bool, write_while_down: bool) -> Outcome {
    let log: Log = Arc::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(3)
        .tick_duration(Duration::from_millis(10))
        .simulation_duration(Duration::from_secs(600))
        .skip_idle_time(skip)
        .build();
    let crashing: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let server_log = log.clone();
    let server_crashing = crashing.clone();
    sim.host("server", move || {
        let log = server_log.clone();
        let crashing = server_crashing.clone();
        async move {
            let probe = DropProbe {
                log: log.clone(),
                crashing,
            };
            note(&log, format!("server up {}", picks().await));
            let listener = TcpListener::bind(("0.0.0.0", 1)).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                note(&log, format!("server accepted {}", picks().await));
                drop(stream);
                let _ = &probe;
            }
        }
    });
    // The client asks for the crash and the restart, as tiersim's script
    // does: the harness acts on them between steps.
    let control: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let client_log = log.clone();
    let client_control = control.clone();
    sim.client("client", async move {
        let log = client_log;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let mut first = Some(TcpStream::connect("server:1").await?);
        note(&log, "client connected".into());
        if !write_while_down {
            first = None;
        }
        tokio::time::sleep(Duration::from_secs(45)).await;
        client_control.lock().unwrap().push("crash");
        if let Some(stream) = first.as_mut() {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let wrote = stream.write_all(b"anyone there?\n").await;
            note(&log, format!("client wrote while down: {wrote:?}"));
            tokio::time::sleep(Duration::from_secs(55)).await;
        } else {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        client_control.lock().unwrap().push("bounce");
        tokio::time::sleep(Duration::from_secs(20)).await;
        let _ = TcpStream::connect("server:1").await?;
        note(&log, format!("client connected again {}", picks().await));
        Ok(())
    });
    let mut steps = 0;
    let mut steps_while_down = 0;
    let mut down = false;
    let mut longest_step = Duration::ZERO;
    let result = loop {
        let before = sim.elapsed();
        let step = sim.step();
        steps += 1;
        longest_step = longest_step.max(sim.elapsed() - before);
        match step {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e.to_string()),
        }
        if down {
            steps_while_down += 1;
        }
        for action in std::mem::take(&mut *control.lock().unwrap()) {
            match action {
                "crash" => {
                    crashing.store(true, std::sync::atomic::Ordering::SeqCst);
                    sim.crash("server");
                    crashing.store(false, std::sync::atomic::Ordering::SeqCst);
                    down = true;
                }
                _ => {
                    sim.bounce("server");
                    down = false;
                }
            }
        }
    };
    let log = log.lock().unwrap().clone();
    Outcome {
        log,
        result,
        elapsed: sim.elapsed(),
        counters: sim.idle_skip_counters(),
        steps,
        longest_step,
        steps_while_down,
    }
}

#[test]
fn idle_skip_crash_and_bounce_of_a_lagging_host_match_stepping() {
    // The server idles for 45 s before it is crashed and for a minute
    // before it boots again: eliding ticks leaves its runtime behind, which
    // catches up before its tasks are dropped; then it boots on a fresh
    // runtime, serves, and every count matches stepping's.
    let stepped = crash_world(false, false);
    let skipped = crash_world(true, false);
    assert_eq!(stepped.result, Ok(()));
    assert!(
        stepped.log.iter().any(|l| l.contains("server dropped")),
        "{:#?}",
        stepped.log
    );
    assert_eq!(skipped.log, stepped.log);
    assert_eq!(skipped.elapsed, stepped.elapsed);
    assert_eq!(skipped.counters, stepped.counters);
    assert!(skipped.steps * 10 < stepped.steps);
}

#[test]
fn idle_skip_passes_over_a_message_waiting_for_a_crashed_host() {
    // The client writes to the crashed server: the segment waits in the
    // server's ready queue, untouched by stepping, until the restart. The
    // minute of downtime is still skipped, and the run is stepping's.
    let stepped = crash_world(false, true);
    let skipped = crash_world(true, true);
    assert_eq!(stepped.result, Ok(()));
    assert!(
        stepped
            .log
            .iter()
            .any(|l| l.contains("client wrote while down: Ok")),
        "{:#?}",
        stepped.log
    );
    assert_eq!(skipped.log, stepped.log);
    assert_eq!(skipped.elapsed, stepped.elapsed);
    assert_eq!(skipped.counters, stepped.counters);
    assert!(stepped.steps_while_down > 5_000);
    assert!(
        skipped.steps_while_down * 100 < stepped.steps_while_down,
        "{} steps while down, stepping takes {}",
        skipped.steps_while_down,
        stepped.steps_while_down
    );
}
