//! Skipping idle time with results identical to stepping (issue 14's
//! evaluation; not the tiersim substrate). Every host is a task on one
//! paused current-thread runtime over a turmoil-net fabric. Stepping drains
//! the fabric at every tick boundary (`run_until(sleep(tick))`, then egress
//! and due deliveries). Skipping does the same while anything moves or waits
//! in the fabric; once a drain finds nothing, the harness waits until some
//! host task is polled (tokio, paused, advances the clock to the earliest
//! timer by itself) and drains next at the first tick boundary strictly
//! after that instant, which is exactly when stepping would have (a timer
//! due on a boundary runs after that boundary's drain, since `run_until`
//! polls its own sleep first). The client logs each reply with its
//! simulated time; `identical: true` compares both logs.
//!
//! What tiersim would still need: host scoping for tasks a host spawns
//! (hyper's connection tasks; tokio_unstable's task spawn/poll hooks can
//! carry the host and signal activity), crash/restart (turmoil-net 0.1 has
//! none), partitions as fabric rules, and care with turmoil-net's TCP
//! retransmission, which counts egress passes, not time (threshold 3,
//! abort after 5): with 5 ms latency at a 1 ms tick a connect times out
//! unless `retx_threshold` is raised, and a skipping harness must keep
//! stepping while any connection has unacknowledged data.
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant as Wall};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::LocalSet;
use tokio::time::{sleep, sleep_until, Instant};
use turmoil_net::shim::tokio::net::{TcpListener, TcpStream};
use turmoil_net::{EnterGuard, HostId, Net};
use turmoil_net::{Latency, Verdict};

const TICK: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Activity {
    polled: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

struct Host<F> {
    id: HostId,
    act: Rc<Activity>,
    inner: Pin<Box<F>>,
}
impl<F: Future> Future for Host<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        turmoil_net::set_current(self.id);
        self.act.polled.set(true);
        if let Some(w) = self.act.waker.borrow_mut().take() {
            w.wake();
        }
        self.inner.as_mut().poll(cx)
    }
}

struct WaitActivity(Rc<Activity>);
impl Future for WaitActivity {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.polled.get() {
            Poll::Ready(())
        } else {
            *self.0.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[derive(Default)]
struct Fabric {
    pending: Vec<(Duration, u64, turmoil_net::Packet)>,
    seq: u64,
}
impl Fabric {
    /// Drains the fabric at a tick boundary `now`; true if anything moved or waits.
    fn drain(&mut self, g: &EnterGuard, now: Duration) -> bool {
        let due = self
            .pending
            .iter()
            .position(|p| p.0 > now)
            .unwrap_or(self.pending.len());
        let moved_due = due > 0;
        for (_, _, p) in self.pending.drain(..due) {
            g.deliver(p);
        }
        let mut out = Vec::new();
        g.egress_all(&mut out);
        let moved = !out.is_empty();
        for p in out {
            match g.evaluate(&p) {
                Verdict::Drop => {}
                Verdict::Deliver(d) if !d.is_zero() => {
                    self.seq += 1;
                    self.pending.push((now + d, self.seq, p));
                    self.pending.sort_by_key(|x| (x.0, x.1));
                }
                _ => g.deliver(p),
            }
        }
        moved || moved_due || !self.pending.is_empty()
    }
}

fn world(skip: bool) -> (Vec<String>, Duration) {
    let mut net = Net::with_config(turmoil_net::KernelConfig::default().retx_threshold(50));
    if std::env::var("LAT").is_ok() {
        net.rule(Latency::fixed(Duration::from_millis(5)));
    }
    let server = net.add_host("server");
    let client = net.add_host("client");
    let guard = net.enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let act = Rc::new(Activity::default());
    let log = Rc::new(RefCell::new(Vec::new()));
    let wall = Wall::now();
    rt.block_on(async {
        let start = Instant::now();
        let set = LocalSet::new();
        set.spawn_local(Host {
            id: server,
            act: act.clone(),
            inner: Box::pin(async move {
                let l = TcpListener::bind("0.0.0.0:80").await.unwrap();
                loop {
                    let (mut s, _) = l.accept().await.unwrap();
                    let n = s.read_u32().await.unwrap();
                    sleep(Duration::from_millis(u64::from(n))).await;
                    s.write_u32(n + 1).await.unwrap();
                }
            }),
        });
        let clog = log.clone();
        let done = set.spawn_local(Host {
            id: client,
            act: act.clone(),
            inner: Box::pin(async move {
                for i in 0..30u32 {
                    let mut s = TcpStream::connect("server:80").await.unwrap();
                    s.write_u32(i * 37 % 500).await.unwrap();
                    let r = s.read_u32().await.unwrap();
                    clog.borrow_mut()
                        .push(format!("{:?} {i} -> {r}", start.elapsed()));
                    let gap = if i % 5 == 4 {
                        Duration::from_secs(600)
                    } else {
                        Duration::from_millis(3 + u64::from(i))
                    };
                    sleep(gap).await;
                }
            }),
        });
        let mut fabric = Fabric::default();
        loop {
            set.run_until(sleep(TICK)).await;
            let busy = fabric.drain(&guard, start.elapsed());
            if done.is_finished() {
                break;
            }
            if skip && !busy {
                // Nothing in flight: let tokio jump to the next timer; the
                // next drain is at the first tick boundary after it.
                act.polled.set(false);
                set.run_until(WaitActivity(act.clone())).await;
                let t = start.elapsed();
                let ticks = t.as_nanos() / TICK.as_nanos() + 1;
                set.run_until(sleep_until(start + TICK * ticks as u32))
                    .await;
                let _ = fabric.drain(&guard, start.elapsed());
                if done.is_finished() {
                    break;
                }
            }
        }
    });
    drop(guard);
    let out = log.borrow().clone();
    (out, wall.elapsed())
}

fn main() {
    if let Ok(mode) = std::env::var("ONLY") {
        let (a, t) = world(mode == "skip");
        println!("{mode}: {} lines in {t:?}", a.len());
        return;
    }
    let (a, ta) = world(false);
    let (b, tb) = world(true);
    println!(
        "stepped: {} lines in {:?}; skipping: {} lines in {:?}",
        a.len(),
        ta,
        b.len(),
        tb
    );
    println!("last: {:?} / {:?}", a.last(), b.last());
    println!("identical: {}", a == b);
}
