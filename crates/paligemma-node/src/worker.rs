//! One worker thread per model, fed by a FIFO queue.
//!
//! The model is loaded on, owned by and dropped on its worker thread; JS only holds the queue.
//! Generations join the model's continuous batch ([`paligemma::batching::Scheduler`]): between
//! two decode steps the worker moves everything queued into the scheduler, which admits what
//! fits (`maxBatch` rows and the KV budget), prefills it, and steps all running rows at once.
//! A forward pass runs on its own between two steps. The worker exits, dropping the model, once
//! the queue is closed (by `dispose()` or by the JS object's finalizer) and drained and the
//! batch is empty — nothing else keeps the weights alive.
//!
//! Every job's work runs inside the model's own rayon pool, which is what makes the `threads`
//! load option effective (see [`build_pool`]).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use paligemma::batching::{BatchLimits, Scheduler};

use crate::batched::BatchedGeneration;
use crate::error::NativeFailure;
use crate::jobs::{ForwardJob, GenerateJob};
use crate::text::Tokenizer;

/// What a running job may use.
#[derive(Clone, Copy)]
pub(crate) struct Context<'a> {
    pub model: &'a paligemma::PaliGemma,
    pub tokenizer: Option<&'a Tokenizer>,
    pub disposed: &'a AtomicBool,
}

impl Context<'_> {
    pub fn is_disposed(&self) -> bool {
        self.disposed.load(Ordering::Acquire)
    }
}

/// A queued request. Each settles its JS promise or event stream exactly once: when it runs, or
/// through [`Job::abandon`] when it is skipped, panics or is dropped.
pub(crate) enum Job {
    Forward(Box<ForwardJob>),
    Generate(Box<GenerateJob>),
}

impl Job {
    /// Settles the request with `failure` unless it already settled.
    pub fn abandon(&mut self, failure: NativeFailure) {
        match self {
            Job::Forward(job) => job.abandon(failure),
            Job::Generate(job) => job.finish(Err(failure)),
        }
    }
}

/// A request's cancellation state, shared by its JS `CancelToken`, the queue and the job.
#[derive(Default)]
pub(crate) struct CancelFlag {
    cancelled: AtomicBool,
    /// Queues holding a job with this flag, so cancelling can remove it before it starts.
    queues: Mutex<Vec<Weak<Queue>>>,
}

impl CancelFlag {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the request cancelled; a queued job is removed (and settled) right away, a running
    /// one stops at its next cancellation check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        let queues: Vec<Weak<Queue>> = std::mem::take(&mut *lock(&self.queues));
        for queue in queues.iter().filter_map(Weak::upgrade) {
            queue.purge(false);
        }
    }

    fn attach(&self, queue: &Arc<Queue>) {
        lock(&self.queues).push(Arc::downgrade(queue));
    }
}

struct Entry {
    job: Job,
    flag: Arc<CancelFlag>,
    queued_at: Instant,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Entry>,
    /// No more jobs are accepted; the worker exits when `jobs` is empty.
    closed: bool,
    /// The worker has dropped the model and finished.
    exited: bool,
    /// Run once the worker has exited (dispose() promises).
    on_exit: Vec<Box<dyn FnOnce() + Send>>,
}

/// The FIFO between JS and a model's worker.
#[derive(Default)]
pub(crate) struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    disposed: AtomicBool,
}

/// JS's ownership of a queue. Dropping it (the model object was garbage-collected, or a loaded
/// model never reached JS) closes the queue, so the worker finishes what is queued and exits.
pub(crate) struct QueueHandle(pub Arc<Queue>);

impl std::ops::Deref for QueueHandle {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        &self.0
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Locks ignoring poisoning: every critical section here leaves the state consistent, and a
/// poisoned lock must not turn into a panic at an FFI boundary.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    pub fn is_disposed(&self) -> bool {
        self.disposed.load(Ordering::Acquire)
    }

    /// Queues a job, or hands it back when the model is closed or the request already cancelled.
    pub fn submit(self: &Arc<Self>, flag: Arc<CancelFlag>, job: Job) -> Result<(), (Job, NativeFailure)> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err((job, NativeFailure::disposed()));
        }
        if flag.is_cancelled() {
            return Err((job, NativeFailure::aborted()));
        }
        flag.attach(self);
        state.jobs.push_back(Entry { job, flag, queued_at: Instant::now() });
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Removes cancelled jobs (or all jobs, when `all`) and settles them outside the lock.
    fn purge(&self, all: bool) {
        let removed: Vec<Entry> = {
            let mut state = lock(&self.state);
            let (gone, kept): (VecDeque<Entry>, VecDeque<Entry>) =
                std::mem::take(&mut state.jobs).into_iter().partition(|e| all || e.flag.is_cancelled());
            state.jobs = kept;
            gone.into_iter().collect()
        };
        let failure = if all { NativeFailure::disposed() } else { NativeFailure::aborted() };
        for mut entry in removed {
            entry.job.abandon(failure.clone());
        }
    }

    /// Stops accepting jobs; queued ones still run. Used when JS garbage-collects the model.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_all();
    }

    /// Cancels everything: queued jobs are settled with ERR_DISPOSED, the running one stops at
    /// its next check. `on_exit` runs once the worker has dropped the model.
    pub fn dispose(&self, on_exit: Box<dyn FnOnce() + Send>) {
        self.disposed.store(true, Ordering::Release);
        self.close();
        self.purge(true);
        let mut state = lock(&self.state);
        if state.exited {
            drop(state);
            on_exit();
        } else {
            state.on_exit.push(on_exit);
        }
    }

    /// Waits for the next job; `None` once the queue is closed and empty.
    fn next(&self) -> Option<Entry> {
        let mut state = lock(&self.state);
        loop {
            if let Some(entry) = state.jobs.pop_front() {
                return Some(entry);
            }
            if state.closed {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Every job queued now, without waiting.
    fn take_all(&self) -> Vec<Entry> {
        lock(&self.state).jobs.drain(..).collect()
    }

    fn mark_exited(&self) {
        let callbacks = {
            let mut state = lock(&self.state);
            state.exited = true;
            state.closed = true;
            std::mem::take(&mut state.on_exit)
        };
        for callback in callbacks {
            callback();
        }
    }
}

/// Runs a forward pass between two decode steps; a panic settles it with ERR_INTERNAL.
fn run_forward(pool: &rayon::ThreadPool, ctx: &Context, job: &mut ForwardJob) {
    let outcome = pool.install(|| catch_unwind(AssertUnwindSafe(|| job.run(ctx))));
    if let Err(payload) = outcome {
        job.abandon(NativeFailure::from_panic(payload));
    }
}

/// Builds the pool every job of one model runs in.
///
/// What decides candle 0.11.1's CPU parallelism (read from its source):
/// - matmul (gemm) splits work into `candle_core::utils::get_num_threads()` pieces
///   (`RAYON_NUM_THREADS`, else the number of physical cores) and runs them with rayon on the
///   *current* pool; candle-nn's softmax / rms-norm / layer-norm use rayon's current pool too.
///   Inside `pool.install` that is this pool, so at most `threads` cores do that work.
/// - large element-wise ops (≥ 64 Ki elements) use candle's own process-wide "barrier pool",
///   sized once from `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS` / physical cores; no per-model
///   setting reaches it.
pub(crate) fn build_pool(threads: usize, model_id: u32) -> Result<rayon::ThreadPool, NativeFailure> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        // Linux thread names are cut at 15 bytes.
        .thread_name(move |i| format!("pgm{model_id}-{i}"))
        .build()
        .map_err(|e| NativeFailure::internal(format!("cannot start {threads} worker threads: {e}")))
}

/// What the worker loads before serving jobs.
pub(crate) struct Loaded {
    pub model: paligemma::PaliGemma,
    /// How the model's generations share decode steps.
    pub limits: BatchLimits,
    pub tokenizer: Option<Tokenizer>,
    /// [`paligemma::ChosenDevice::fallback`].
    pub device_fallback: Option<String>,
}

/// Loads the model (and tokenizer) on the worker.
pub(crate) type LoadFn = Box<dyn FnOnce() -> Result<Loaded, NativeFailure> + Send>;
/// Receives the load's outcome, on the worker, before any job runs.
pub(crate) type OnLoaded = Box<dyn FnOnce(Result<&Loaded, NativeFailure>) + Send>;

/// Starts a model's worker thread. `load` runs first, on the worker, inside the pool;
/// `on_loaded` gets its result and, on success, jobs are served until the queue closes.
pub(crate) fn spawn(
    queue: Arc<Queue>,
    threads: usize,
    model_id: u32,
    load: LoadFn,
    on_loaded: OnLoaded,
) -> Result<(), NativeFailure> {
    let spawned = std::thread::Builder::new().name(format!("pgm{model_id}-worker")).spawn(move || {
        serve(&queue, threads, model_id, load, on_loaded);
        queue.mark_exited();
    });
    spawned.map(|_| ()).map_err(|e| NativeFailure::internal(format!("cannot start the model's worker thread: {e}")))
}

fn serve(
    queue: &Queue,
    threads: usize,
    model_id: u32,
    load: LoadFn,
    on_loaded: OnLoaded,
) {
    let pool = match build_pool(threads, model_id) {
        Ok(pool) => pool,
        Err(failure) => return on_loaded(Err(failure)),
    };
    let loaded = match pool.install(|| catch_unwind(AssertUnwindSafe(load))) {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(failure)) => return on_loaded(Err(failure)),
        Err(payload) => return on_loaded(Err(NativeFailure::from_panic(payload))),
    };
    on_loaded(Ok(&loaded));
    let ctx = Context { model: &loaded.model, tokenizer: loaded.tokenizer.as_ref(), disposed: &queue.disposed };
    let mut batch: Scheduler<BatchedGeneration> = Scheduler::new(loaded.limits);
    loop {
        // Wait only when there is nothing to step; otherwise take what arrived since the last
        // step and go on.
        let arrived = if batch.is_idle() {
            match queue.next() {
                Some(entry) => vec![entry],
                None => break,
            }
        } else {
            queue.take_all()
        };
        for entry in arrived {
            let Entry { mut job, flag, queued_at } = entry;
            if ctx.is_disposed() {
                job.abandon(NativeFailure::disposed());
            } else if flag.is_cancelled() {
                job.abandon(NativeFailure::aborted());
            } else {
                match job {
                    Job::Generate(job) => batch.submit(BatchedGeneration::new(*job, ctx, queued_at)),
                    Job::Forward(mut job) => run_forward(&pool, &ctx, &mut job),
                }
            }
        }
        if ctx.is_disposed() {
            // The running rows stop before their next step; their requests reject with
            // ERR_DISPOSED (BatchedGeneration::finish maps the abort).
            batch.fail_all(|| paligemma::Error::Aborted);
            continue;
        }
        let stepped = pool.install(|| catch_unwind(AssertUnwindSafe(|| batch.step(ctx.model))));
        if let Err(payload) = stepped {
            let failure = NativeFailure::from_panic(payload);
            batch.fail_all(|| paligemma::Error::Internal(failure.message.clone()));
        }
        // Rows that ended dropped their KV caches inside `step`, before the next one starts.
    }
    // Weights are released before dispose() resolves (mark_exited runs after this returns).
    {
        let device = loaded.model.device().clone();
        let sync = || {
            if !device.is_cpu() {
                let _ = catch_unwind(AssertUnwindSafe(|| device.synchronize()));
            }
        };
        // cudarc frees a GPU buffer only if the CUDA context is current on the dropping thread
        // (otherwise the error is recorded silently and the memory leaks, measured: the whole
        // model per load/dispose cycle). This thread ran no CUDA work — jobs run on the pool — and
        // a synchronize is what makes the context current here.
        sync();
        drop(loaded);
        drop(pool);
        // The frees go to CUDA's stream-ordered pool, which hands memory back to the driver only
        // at a synchronization point.
        sync();
    }
    release_free_heap();
}

/// Hands freed heap pages back to the OS. glibc raises its mmap threshold after large frees, so
/// many weight-sized buffers end up in malloc arenas, which keep them resident after the model
/// is dropped (measured: ~160 MiB of a 520 MiB checkpoint) unless trimmed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: malloc_trim only returns unused memory to the OS; it is thread-safe.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}
