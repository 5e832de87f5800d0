use std::future::Future;
use std::cell::Cell;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;

use rand::rngs::SmallRng;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::task::LocalSet;
use tokio::time::{sleep, Duration, Instant};

use super::Result;

// To support re-creation, we need to store a factory of the future that
// represents the software. This is somewhat annoying in that it requires
// boxxing to avoid generics.
type Software<'a> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result>>> + 'a>;

/// Runtime kinds.
pub enum Kind<'a> {
    /// A runtime for executing test code.
    Client,

    /// A runtime that is running simulated host software.
    Host { software: Software<'a> },

    /// A runtime without any software. The network topology uses this for
    /// time tracking and message delivery.
    NoSoftware,
}

/// Runtime configuration.
#[derive(Clone, Default)]
pub struct Config {
    /// Whether io is enabled on the runtime.
    pub enable_io: bool,

    /// Rng used to seed the tokio runtime.
    ///
    /// Only used if the `tokio_unstable` cfg flag is set.
    #[cfg_attr(not(tokio_unstable), expect(dead_code))]
    pub rng: Option<SmallRng>,
}

/// Per host simulated runtime.
///
/// The tokio runtime is paused (see [`Builder::start_paused`]), which gives us
/// control over when and how to advance time. In particular, see [`Rt::tick`],
/// which lets the runtime do a bit more work.
pub struct Rt<'a> {
    pub kind: Kind<'a>,

    /// Handle to the Tokio runtime driving this simulated host. Each runtime
    /// may have a different sense of "now" which simulates clock skew.
    tokio: Runtime,

    /// Local task set used for running !Send tasks.
    local: LocalSet,

    /// A user readable name to identify the node.
    pub nodename: Arc<str>,

    /// Optional handle to a host's software. When software finishes, the handle is
    /// consumed to check for error, which is propagated up to fail the simulation.
    handle: Option<JoinHandle<Result>>,

    /// Runtime configuration.
    config: Config,

    /// tiersim patch (see `vendor/README.md`): idle ticks this host's
    /// runtime has not been driven through yet ([`Rt::catch_up`]).
    lag: u64,

    /// tiersim patch (see `vendor/README.md`): the runtime's clock as last
    /// read. Only driving the runtime moves its paused clock, and every
    /// method that does takes `&mut self` and clears this, so an idle host
    /// asked every step reads its clock once.
    now: Cell<Option<Instant>>,
}

impl<'a> Rt<'a> {
    pub(crate) fn client<F>(nodename: Arc<str>, client: F, mut config: Config) -> Self
    where
        F: Future<Output = Result> + 'static,
    {
        let (tokio, local) = init(&mut config);

        let handle = with(&tokio, &local, || tokio::task::spawn_local(client));

        Self {
            kind: Kind::Client,
            tokio,
            local,
            nodename,
            handle: Some(handle),
            config,
            lag: 0,
            now: Cell::new(None),
        }
    }

    pub(crate) fn host<F, Fut>(nodename: Arc<str>, software: F, mut config: Config) -> Self
    where
        F: Fn() -> Fut + 'a,
        Fut: Future<Output = Result> + 'static,
    {
        let (tokio, local) = init(&mut config);

        let software: Software = Box::new(move || Box::pin(software()));
        let handle = with(&tokio, &local, || tokio::task::spawn_local(software()));

        Self {
            kind: Kind::Host { software },
            tokio,
            local,
            nodename,
            handle: Some(handle),
            config,
            lag: 0,
            now: Cell::new(None),
        }
    }

    pub(crate) fn no_software() -> Self {
        let mut config = Config::default();
        let (tokio, local) = init(&mut config);

        Self {
            kind: Kind::NoSoftware,
            tokio,
            local,
            nodename: String::new().into(),
            handle: None,
            config,
            lag: 0,
            now: Cell::new(None),
        }
    }

    pub(crate) fn is_client(&self) -> bool {
        matches!(self.kind, Kind::Client)
    }

    fn is_host(&self) -> bool {
        matches!(self.kind, Kind::Host { .. })
    }

    pub(crate) fn is_software_running(&self) -> bool {
        self.handle.is_some()
    }

    pub(crate) fn now(&self) -> Instant {
        // tiersim patch (see `vendor/README.md`): the same paused clock
        // `Instant::now()` reads inside the runtime, without entering it,
        // and read again only after the runtime was driven.
        if let Some(now) = self.now.get() {
            return now;
        }
        let now = self.tokio.sim_now();
        self.now.set(Some(now));
        now
    }

    // This method is called by [`Sim::run`], which iterates through all the
    // runtimes and ticks each one. The magic of this method is described in the
    // documentation for [`LocalSet::run_until`], but it may not be entirely
    // obvious how things fit together.
    //
    // A [`LocalSet`] tracks the tasks to run, which may in turn spawn more
    // tasks. `run_until` drives a top level task to completion, but not its
    // children. If you look below, you may be confused. The task we run here
    // just sleeps and has no children! However, it's the _same `LocalSet`_ that
    // is used to run software on the host.
    //
    // In this way, every time `tick` is called, the following unfolds:
    //
    // 1. Time advances on the runtime
    // 2. We schedule a new task that simply sleeps
    // 3. Other tasks on the `LocalSet` get a chance to run
    // 4. The sleep finishes
    // 5. The runtime pauses
    //
    // Returns whether the software has finished successfully or the error
    // that caused failure. Subsequent calls do not return the error as it is
    // expected to fail the simulation.
    pub(crate) fn tick(&mut self, duration: Duration) -> Result<bool> {
        self.now.set(None); // tiersim patch: the clock moves below
        self.tokio.block_on(async {
            self.local
                .run_until(async {
                    sleep(duration).await;
                })
                .await
        });

        // pull for software completion
        match &self.handle {
            Some(handle) if handle.is_finished() => {
                // Consume handle to extract task result
                if let Some(h) = self.handle.take() {
                    match self.tokio.block_on(h) {
                        // If the host was crashed the JoinError is cancelled, which
                        // needs to be handled to not fail the simulation.
                        Err(je) if je.is_cancelled() => {}
                        res => res??,
                    }
                };
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Ok(true),
        }
    }

    /// tiersim patch (see `vendor/README.md`): `None` when a task of this
    /// host may run now; otherwise how long until its timer wheel has work
    /// (`Some(None)`: no timer at all).
    pub(crate) fn idle_for(&self) -> Option<Option<Duration>> {
        if !self.local.sim_is_idle() {
            return None;
        }
        let next = self.tokio.sim_idle_until()?;
        let now = self.now();
        Some(next.map(|at| at.saturating_duration_since(now)))
    }

    /// tiersim patch (see `vendor/README.md`): how many idle ticks this
    /// host's runtime is behind the world.
    pub(crate) fn lag(&self) -> u64 {
        self.lag
    }

    /// tiersim patch (see `vendor/README.md`): `ticks` more idle ticks this
    /// host's runtime owes; only for a host that [`Rt::idle_for`] says has
    /// nothing to do over them (and nothing is delivered to it).
    pub(crate) fn defer_idle(&mut self, ticks: u64) {
        self.lag += ticks;
    }

    /// tiersim patch (see `vendor/README.md`): drives the runtime through
    /// the idle ticks it owes, exactly as stepping them would leave it: the
    /// clock moves over them without polling anything (nothing can run in
    /// them), then what each idle tick moves besides the clock is moved as
    /// many times: the local set's tick (one per tick: `run_until` polls
    /// the empty set once), the seed generator (one seed per `block_on`)
    /// and the scheduler's tick (which also counts the wheel cascades each
    /// tick's sleep passes through, so tokio computes it).
    pub(crate) fn catch_up(&mut self, tick: Duration) {
        let ticks = std::mem::take(&mut self.lag);
        if ticks == 0 {
            return;
        }
        // The clock moves below.
        let from = self.now();
        self.now.set(None);
        let turns = self
            .tokio
            .sim_idle_scheduler_ticks(from, tick, ticks)
            .expect("a turmoil host runs a paused current-thread runtime");
        let span = Duration::from_nanos((tick.as_nanos() * u128::from(ticks)) as u64);
        assert!(
            self.tokio.sim_advance_idle(span),
            "a turmoil runtime is paused"
        );
        self.tokio.sim_account_idle_block_ons(ticks, turns as u32);
        self.local.sim_account_idle_ticks(ticks as u8);
    }

    /// tiersim patch (see `vendor/README.md`): `ticks` idle ticks of
    /// `tick` each, as one: the clock moves over them in one [`Rt::tick`]
    /// (nothing runs in it), then what stepping would have moved besides
    /// the clock is set to where `ticks` separate ticks leave it: the local
    /// set's tick (one per tick: `run_until` polls the empty set once), the
    /// seed generator (one seed per `block_on`), and the scheduler's tick
    /// (which also counts the wheel cascades each tick's sleep passes
    /// through, so tokio computes it). Only for a host that
    /// [`Rt::idle_for`] says has nothing to do over the span.
    pub(crate) fn tick_idle(&mut self, tick: Duration, ticks: u64) -> Result<bool> {
        let span = tick * ticks as u32;
        let stepped_scheduler_ticks = self
            .tokio
            .sim_idle_scheduler_ticks(self.now(), tick, ticks)
            .expect("a turmoil host runs a paused current-thread runtime");
        let (scheduler_before, _) = self.tokio.sim_counters();
        let local_before = self.local.sim_tick();
        let finished = self.tick(span)?;
        let (scheduler_after, _) = self.tokio.sim_counters();
        let scheduler_moved = scheduler_after.wrapping_sub(scheduler_before);
        self.tokio.sim_account_idle_block_ons(
            ticks - 1,
            (stepped_scheduler_ticks as u32).wrapping_sub(scheduler_moved),
        );
        let local_moved = self.local.sim_tick().wrapping_sub(local_before);
        self.local
            .sim_account_idle_ticks((ticks as u8).wrapping_sub(local_moved));
        Ok(finished)
    }

    /// tiersim patch (see `vendor/README.md`): what stepping moves besides
    /// clocks (the scheduler's tick, the seed generator's state, the local
    /// set's tick), for tests that compare a skipped run with a stepped one.
    pub(crate) fn counters(&self) -> (u32, u64, u8) {
        let (tick, seeds) = self.tokio.sim_counters();
        (tick, seeds, self.local.sim_tick())
    }

    pub(crate) fn crash(&mut self) {
        if !self.is_host() {
            panic!("can only crash host's software");
        }

        if self.handle.take().is_some() {
            self.cancel_tasks();
        };
    }

    pub(crate) fn bounce(&mut self) {
        if !self.is_host() {
            panic!("can only bounce host's software");
        }

        self.cancel_tasks();
        self.now.set(None); // tiersim patch: a new runtime, a new clock

        if let Kind::Host { software } = &self.kind {
            let handle = with(&self.tokio, &self.local, || {
                tokio::task::spawn_local(software())
            });
            self.handle.replace(handle);
        };
    }

    /// Cancel all tasks within the [`Rt`] by dropping the current tokio
    /// [`Runtime`].
    ///
    /// Dropping the runtime blocks the calling thread until all futures have
    /// completed, which is desired here to ensure host software completes and
    /// all resources are dropped.
    ///
    /// Both the [`Runtime`] and [`LocalSet`] are replaced with new instances.
    fn cancel_tasks(&mut self) {
        let (tokio, local) = init(&mut self.config);
        self.lag = 0;
        self.now.set(None); // tiersim patch: a new runtime, a new clock

        _ = mem::replace(&mut self.tokio, tokio);
        drop(mem::replace(&mut self.local, local));
    }
}

fn init(config: &mut Config) -> (Runtime, LocalSet) {
    let mut tokio_builder = tokio::runtime::Builder::new_current_thread();

    #[cfg(tokio_unstable)]
    tokio_builder.unhandled_panic(tokio::runtime::UnhandledPanic::ShutdownRuntime);

    if config.enable_io {
        tokio_builder.enable_io();
    }

    #[cfg(tokio_unstable)]
    if let Some(rng) = &mut config.rng {
        let bytes: [u8; 32] = rand::Rng::random(rng);
        let seed = tokio::runtime::RngSeed::from_bytes(&bytes);
        tokio_builder.rng_seed(seed);
    }

    let tokio = tokio_builder
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();

    tokio.block_on(async {
        // Sleep to "round" `Instant::now()` to the closest `ms`
        tokio::time::sleep(Duration::from_millis(1)).await;
    });

    (tokio, new_local())
}

fn new_local() -> LocalSet {
    #[cfg(not(tokio_unstable))]
    let local = LocalSet::new();

    #[cfg(tokio_unstable)]
    let mut local = LocalSet::new();

    #[cfg(tokio_unstable)]
    local.unhandled_panic(tokio::runtime::UnhandledPanic::ShutdownRuntime);

    local
}

fn with<R>(tokio: &Runtime, local: &LocalSet, f: impl FnOnce() -> R) -> R {
    tokio.block_on(async { local.run_until(async { f() }).await })
}
