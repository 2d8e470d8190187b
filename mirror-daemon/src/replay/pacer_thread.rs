//! One pacer thread writes paced requests at their due instants, to well under a
//! millisecond, instead of each lane waking on tokio's timer (whole milliseconds: lanes
//! due within one millisecond wrote together, a burst a single-process candidate queues).
//!
//! A lane masks and prepares its batch ahead, then hands the pacer its due instant, the
//! candidate connection's socket (and the secondary's) and the requests' bytes, and
//! waits. The pacer keeps the hand-overs in a bounded [`Schedule`] (a min-heap by due
//! instant), sleeps on a futex with a small timer slack until the earliest is due, and
//! performs the non-blocking writes itself, every hand-over due within [`COALESCE`] of
//! the earliest in one wake-up, then wakes the lane, which reads the responses as
//! before. A write the socket does not take whole (`EAGAIN`) is finished by the lane's
//! own asynchronous write; a hand-over the schedule has no room for is refused and
//! counted, and that lane waits on tokio's timer and writes itself, as without pacer.
//!
//! The pacer only writes: the transmit stamps (`SO_TIMESTAMPING`, `OPT_ID`) are read
//! back by the lane, by the offset of each request's last byte, as for its own writes.
use std::{
    cmp::Ordering as CmpOrdering,
    collections::BinaryHeap,
    os::fd::RawFd,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Hand-overs due within this of the earliest are written in the same wake-up: one
/// wake-up per request would cost more than this spacing is worth (a send takes a few
/// microseconds; the tap's stamps resolve the candidate's arrivals to about as much).
pub const COALESCE: Duration = Duration::from_micros(30);
/// Hand-overs waiting at most: a lane has one batch in flight, so this is far above the
/// lanes' count (`--workers`); beyond, a hand-over is refused and counted.
pub const SCHEDULE_CAPACITY: usize = 4096;
/// The pacer thread's timer slack: how late the kernel may fire its wake-up to coalesce
/// it with others (50 µs by default for a normal thread).
const TIMER_SLACK_NS: libc::c_ulong = 5_000;
/// Batches taken off the schedule in one wake-up at most (the rest at the next pass).
const MAX_PER_WAKE: usize = 256;

/// One entry: due at `due`; `seq` keeps hand-overs due at the same instant in order.
#[derive(Debug)]
struct Entry<T> {
    due: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest must come first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// What waits for the pacer, earliest first; at most `capacity` entries (allocated once).
#[derive(Debug)]
pub struct Schedule<T> {
    heap: BinaryHeap<Entry<T>>,
    capacity: usize,
    seq: u64,
    refused: u64,
}

impl<T> Schedule<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(capacity),
            capacity,
            seq: 0,
            refused: 0,
        }
    }

    /// Adds `item` due at `due`; when full, gives it back (counted as refused).
    pub fn push(&mut self, due: Instant, item: T) -> Result<(), T> {
        if self.heap.len() >= self.capacity {
            self.refused += 1;
            return Err(item);
        }
        self.seq += 1;
        self.heap.push(Entry {
            due,
            seq: self.seq,
            item,
        });
        Ok(())
    }

    /// When the earliest entry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.due)
    }

    /// The earliest entry if it is due by `now + window` (written early by at most the
    /// window, with the others due within it).
    pub fn pop_due(&mut self, now: Instant, window: Duration) -> Option<T> {
        if self.next_due()? > now + window {
            return None;
        }
        self.heap.pop().map(|e| e.item)
    }

    /// Everything left, in no particular order (at shutdown).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.heap.drain().map(|e| e.item)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Entries refused because the schedule was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

/// How long to sleep before the earliest entry is due, `None` when it is due now (within
/// the coalescing window) or nothing waits (`Some(None)`: until told).
pub fn sleep_for(
    next: Option<Instant>,
    now: Instant,
    window: Duration,
) -> Option<Option<Duration>> {
    match next {
        None => Some(None),
        Some(due) if due > now + window => Some(Some(due - now)),
        Some(_) => None,
    }
}

/// One connection's part of a hand-over: its socket, the requests' bytes (moved in and
/// given back, never copied) and what the pacer wrote of each.
#[derive(Debug, Default)]
pub struct PacedSide {
    pub fd: RawFd,
    pub wires: Vec<Vec<u8>>,
    /// Per request, in order, while the socket took them: bytes written (a last entry
    /// short of its request's length: the socket was full) and when the write returned.
    pub written: Vec<(usize, Instant)>,
    /// The errno that stopped the writes before the next request, if any.
    pub error: Option<i32>,
}

impl PacedSide {
    /// Ready for a new batch on `fd` (the vectors keep their capacity).
    pub fn reset(&mut self, fd: RawFd) {
        self.fd = fd;
        self.wires.clear();
        self.written.clear();
        self.error = None;
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Idle,
    Waiting,
    Written,
    /// Not written (the pacer stopped): the lane writes itself.
    Refused,
}

#[derive(Debug, Default)]
struct Job {
    generation: u64,
    phase: Phase,
    sides: Vec<PacedSide>,
}

/// A lane's hand-over place, reused batch after batch (no allocation per request).
#[derive(Debug, Default)]
pub struct Handoff {
    job: Mutex<Job>,
    done: tokio::sync::Notify,
}

/// Called when the lane's wait is dropped before the pacer answered (the runtime stopping
/// at the shutdown deadline): the pacer must not write to a socket the lane is closing.
struct CancelOnDrop<'a>(Option<&'a Handoff>);

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.0
            && let Ok(mut job) = h.job.lock()
        {
            job.generation += 1;
            job.phase = Phase::Idle;
        }
    }
}

/// What the pacer did, for the end-of-run line.
#[derive(Debug, Default)]
pub struct PacerFigures {
    /// Batches the pacer wrote.
    pub batches: AtomicU64,
    /// Requests it wrote whole.
    pub requests: AtomicU64,
    /// Hand-overs refused (schedule full or the pacer stopping): the lane wrote itself.
    pub refused: AtomicU64,
    /// Wake-ups that wrote something.
    pub wakeups: AtomicU64,
    /// The pacer thread's own CPU time (ns), once it has stopped.
    pub cpu_ns: AtomicU64,
}

type Item = (Arc<Handoff>, u64);

struct Shared {
    schedule: Mutex<Schedule<Item>>,
    wake: Condvar,
    stop: std::sync::atomic::AtomicBool,
    figures: PacerFigures,
}

/// The pacer thread and its schedule; stops when dropped or finished.
pub struct PacerThread {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PacerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacerThread").finish_non_exhaustive()
    }
}

/// What lanes hold to hand batches over.
#[derive(Clone)]
pub struct Pacing(Arc<Shared>);

impl PacerThread {
    /// Starts the thread (named `pacer`); `on_start` runs first on it (its scheduling).
    pub fn start(on_start: impl FnOnce() + Send + 'static) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            schedule: Mutex::new(Schedule::new(SCHEDULE_CAPACITY)),
            wake: Condvar::new(),
            stop: std::sync::atomic::AtomicBool::new(false),
            figures: PacerFigures::default(),
        });
        let me = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || {
                on_start();
                // SAFETY: prctl on the calling thread with a plain integer argument.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0) };
                run(&me);
                me.figures.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    pub fn pacing(&self) -> Pacing {
        Pacing(self.shared.clone())
    }

    pub fn figures(&self) -> &PacerFigures {
        &self.shared.figures
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Ok(_s) = self.shared.schedule.lock() {
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops the thread and waits for it (it ends at its next wake-up, which this
    /// causes; what still waits is given back to its lanes): its CPU figure is then
    /// final.
    pub fn stop_and_join(&mut self) {
        self.stop();
    }
}

impl Drop for PacerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The pacer's loop: sleep until the earliest hand-over is due, write every one due
/// within the window, repeat; at stop, give back what waits.
fn run(shared: &Shared) {
    let mut due_now: Vec<Item> = Vec::with_capacity(MAX_PER_WAKE);
    let mut schedule = lock(&shared.schedule);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            for (h, generation) in schedule.drain() {
                answer(&h, generation, |_| Phase::Refused);
                shared.figures.refused.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let now = Instant::now();
        match sleep_for(schedule.next_due(), now, COALESCE) {
            Some(None) => {
                schedule = shared
                    .wake
                    .wait(schedule)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            Some(Some(d)) => {
                schedule = shared
                    .wake
                    .wait_timeout(schedule, d)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            None => {
                while due_now.len() < MAX_PER_WAKE {
                    match schedule.pop_due(now, COALESCE) {
                        Some(item) => due_now.push(item),
                        None => break,
                    }
                }
                drop(schedule);
                shared.figures.wakeups.fetch_add(1, Ordering::Relaxed);
                for (h, generation) in due_now.drain(..) {
                    answer(&h, generation, |sides| {
                        write_all_sides(sides, &shared.figures)
                    });
                }
                schedule = lock(&shared.schedule);
            }
        }
    }
}

/// Settles a waiting hand-over (unless the lane gave it up) and wakes its lane.
fn answer(h: &Handoff, generation: u64, settle: impl FnOnce(&mut [PacedSide]) -> Phase) {
    {
        let mut job = lock(&h.job);
        if job.generation != generation || job.phase != Phase::Waiting {
            return;
        }
        job.phase = settle(&mut job.sides);
    }
    h.done.notify_one();
}

fn write_all_sides(sides: &mut [PacedSide], figures: &PacerFigures) -> Phase {
    for side in sides.iter_mut() {
        write_side(side);
        let whole = side
            .written
            .iter()
            .zip(&side.wires)
            .filter(|((n, _), w)| *n == w.len())
            .count();
        figures.requests.fetch_add(whole as u64, Ordering::Relaxed);
    }
    figures.batches.fetch_add(1, Ordering::Relaxed);
    Phase::Written
}

/// Writes the side's requests one after the other, each with its own `send` (so each
/// gets its own transmit stamp), without blocking: stops at a full socket or an error.
fn write_side(side: &mut PacedSide) {
    for wire in &side.wires {
        let mut off = 0;
        while off < wire.len() {
            match nix::sys::socket::send(
                side.fd,
                &wire[off..],
                nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => off += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => {
                    if off > 0 {
                        side.written.push((off, Instant::now()));
                    }
                    side.error = Some(e as i32);
                    return;
                }
            }
        }
        if off > 0 {
            side.written.push((off, Instant::now()));
        }
        if off < wire.len() {
            return;
        }
    }
}

impl Pacing {
    /// Has the pacer write `sides` (moved in, given back) at `due`. True when it wrote
    /// them (each side's `written` and `error` say how far); false when it refused (the
    /// schedule full, or the pacer stopping), and the lane writes them itself.
    pub async fn write_at(
        &self,
        handoff: &Arc<Handoff>,
        due: Instant,
        sides: &mut Vec<PacedSide>,
    ) -> bool {
        let generation = {
            let mut job = lock(&handoff.job);
            job.generation += 1;
            job.phase = Phase::Waiting;
            std::mem::swap(&mut job.sides, sides);
            job.generation
        };
        let mut cancel = CancelOnDrop(Some(handoff));
        let pushed = {
            let mut schedule = lock(&self.0.schedule);
            let earliest = schedule.next_due().is_none_or(|d| due < d);
            let stopping = self.0.stop.load(Ordering::Relaxed);
            let pushed = !stopping && schedule.push(due, (handoff.clone(), generation)).is_ok();
            if pushed && earliest {
                self.0.wake.notify_one();
            }
            pushed
        };
        let phase = if pushed {
            loop {
                handoff.done.notified().await;
                let job = lock(&handoff.job);
                if job.generation == generation && job.phase != Phase::Waiting {
                    break job.phase;
                }
            }
        } else {
            self.0.figures.refused.fetch_add(1, Ordering::Relaxed);
            Phase::Refused
        };
        cancel.0 = None;
        let mut job = lock(&handoff.job);
        std::mem::swap(&mut job.sides, sides);
        job.phase = Phase::Idle;
        phase == Phase::Written
    }

    pub fn figures(&self) -> &PacerFigures {
        &self.0.figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, us: u64) -> Instant {
        base + Duration::from_micros(us)
    }

    #[test]
    fn the_earliest_comes_first_and_equal_instants_keep_their_order() {
        let t = Instant::now();
        let mut s = Schedule::new(8);
        for (us, name) in [(300, "c"), (100, "a"), (200, "b1"), (200, "b2"), (50, "z")] {
            s.push(at(t, us), name).expect("room");
        }
        let later = at(t, 1_000);
        let order: Vec<_> = std::iter::from_fn(|| s.pop_due(later, Duration::ZERO)).collect();
        assert_eq!(order, ["z", "a", "b1", "b2", "c"]);
        assert!(s.is_empty());
    }

    #[test]
    fn only_what_is_due_within_the_window_is_taken() {
        let t = Instant::now();
        let mut s = Schedule::new(8);
        s.push(at(t, 10), 1).expect("room");
        s.push(at(t, 35), 2).expect("room");
        s.push(at(t, 80), 3).expect("room");
        let w = Duration::from_micros(30);
        // At t: the first and the one 35 µs ahead are not both in a 30 µs window.
        assert_eq!(s.pop_due(t, w), Some(1));
        assert_eq!(s.pop_due(t, w), None);
        assert_eq!(s.len(), 2);
        // 10 µs later the second is within the window, the third not.
        assert_eq!(s.pop_due(at(t, 10), w), Some(2));
        assert_eq!(s.pop_due(at(t, 10), w), None);
        assert_eq!(s.next_due(), Some(at(t, 80)));
    }

    #[test]
    fn a_full_schedule_refuses_and_counts() {
        let t = Instant::now();
        let mut s = Schedule::new(2);
        assert!(s.push(t, 'a').is_ok());
        assert!(s.push(t, 'b').is_ok());
        assert_eq!(s.push(t, 'c'), Err('c'));
        assert_eq!(s.push(t, 'd'), Err('d'));
        assert_eq!(s.refused(), 2);
        assert_eq!(s.len(), 2);
        // Room again once one is taken.
        assert!(s.pop_due(t, Duration::ZERO).is_some());
        assert!(s.push(t, 'e').is_ok());
        assert_eq!(s.refused(), 2);
        let mut left: Vec<_> = s.drain().collect();
        left.sort_unstable();
        assert_eq!(left, ['b', 'e']);
    }

    #[test]
    fn the_sleep_ends_when_the_earliest_enters_the_window() {
        let t = Instant::now();
        let w = Duration::from_micros(30);
        assert_eq!(sleep_for(None, t, w), Some(None));
        assert_eq!(
            sleep_for(Some(at(t, 500)), t, w),
            Some(Some(Duration::from_micros(500)))
        );
        assert_eq!(sleep_for(Some(at(t, 30)), t, w), None);
        assert_eq!(sleep_for(Some(t), at(t, 100), w), None, "late: at once");
    }

    /// Real sockets: the pacer writes a hand-over to a connected socket and wakes the
    /// waiting task; a full schedule refuses (the lane then writes itself).
    #[test]
    fn the_pacer_writes_a_handed_over_batch_and_the_lane_gets_its_bytes_back() {
        use std::{io::Read as _, os::fd::AsRawFd as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let mut pacer = PacerThread::start(|| {}).expect("pacer thread");
        let pacing = pacer.pacing();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let handoff = Arc::new(Handoff::default());
        let mut sides = vec![PacedSide::default()];
        sides[0].reset(client.as_raw_fd());
        sides[0].wires.push(b"GET /a HTTP/1.1\r\n\r\n".to_vec());
        sides[0].wires.push(b"GET /b HTTP/1.1\r\n\r\n".to_vec());
        let due = Instant::now() + Duration::from_millis(2);
        let wrote = rt.block_on(pacing.write_at(&handoff, due, &mut sides));
        assert!(wrote);
        assert_eq!(sides.len(), 1, "the sides are given back");
        assert_eq!(sides[0].wires.len(), 2, "the bytes are given back");
        let lens: Vec<usize> = sides[0].written.iter().map(|(n, _)| *n).collect();
        assert_eq!(lens, [19, 19]);
        assert!(sides[0].error.is_none());
        let mut got = [0u8; 38];
        server.read_exact(&mut got).expect("both requests");
        assert_eq!(&got[..], b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        assert_eq!(pacing.figures().batches.load(Ordering::Relaxed), 1);
        assert_eq!(pacing.figures().requests.load(Ordering::Relaxed), 2);
        // Once stopped, a hand-over is refused and counted.
        pacer.stop_and_join();
        sides[0].written.clear();
        assert!(!rt.block_on(pacing.write_at(&handoff, due, &mut sides)));
        assert_eq!(pacing.figures().refused.load(Ordering::Relaxed), 1);
        assert!(sides[0].written.is_empty());
        assert!(pacing.figures().cpu_ns.load(Ordering::Relaxed) > 0);
        drop(client);
    }
}
