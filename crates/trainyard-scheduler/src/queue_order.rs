//! Where a queued job stands: its position in arrival order among the jobs still waiting, in
//! O(log n), for every describe of a waiting job. Counting the jobs ahead one by one cost a
//! describe O(queue): with 60,000 jobs waiting, describes took 14 ms at the median and slowed the
//! event loop that answered them.
//!
//! Each job takes the next slot of a Fenwick tree (a 1 per live slot), so the jobs ahead of one
//! are the sum of the slots before its own. Slots of jobs that left stay empty until the slots run
//! out; then the live ones are renumbered in order into a tree twice their number (amortised
//! O(log n) a job).

use std::collections::HashMap;

/// The jobs waiting, in the order they joined the queue, each with why it cannot be placed when
/// no agent could ever hold it.
#[derive(Debug, Default)]
pub struct QueueOrder {
    jobs: HashMap<String, Waiting>,
    /// Fenwick tree over the slots (1-based inside: `tree[0]` is unused).
    tree: Vec<u32>,
    next_slot: usize,
}

#[derive(Debug)]
struct Waiting {
    slot: usize,
    reason: Option<String>,
}

/// A queued job's place: 1 for the first in line, of `length` waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub position: usize,
    pub length: usize,
    /// Why no agent could ever hold it, if that is so.
    pub reason: Option<String>,
}

const FIRST_CAPACITY: usize = 64;

impl QueueOrder {
    pub fn new() -> QueueOrder {
        QueueOrder::default()
    }

    /// How many jobs wait.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// `job` joins the end of the line (a job already waiting keeps its place and its reason).
    pub fn push(&mut self, job: &str) {
        if self.jobs.contains_key(job) {
            return;
        }
        if self.next_slot + 1 >= self.tree.len() {
            self.renumber();
        }
        self.next_slot += 1;
        let slot = self.next_slot;
        self.add(slot, 1);
        self.jobs.insert(job.to_string(), Waiting { slot, reason: None });
    }

    /// `job` left the line (placed, stopped, ended); nothing when it was not in it.
    pub fn remove(&mut self, job: &str) {
        if let Some(waiting) = self.jobs.remove(job) {
            self.add(waiting.slot, -1);
        }
    }

    /// Records why no agent could ever hold `job` (kept until it leaves the line). Whether that
    /// changed anything: false when `job` does not wait or had that reason already.
    pub fn set_reason(&mut self, job: &str, reason: &str) -> bool {
        match self.jobs.get_mut(job) {
            Some(waiting) if waiting.reason.as_deref() != Some(reason) => {
                waiting.reason = Some(reason.to_string());
                true
            }
            _ => false,
        }
    }

    /// Where `job` stands, or None when it does not wait.
    pub fn standing(&self, job: &str) -> Option<Standing> {
        let waiting = self.jobs.get(job)?;
        Some(Standing {
            position: self.prefix(waiting.slot) as usize,
            length: self.jobs.len(),
            reason: waiting.reason.clone(),
        })
    }

    fn add(&mut self, slot: usize, delta: i32) {
        let mut i = slot;
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].saturating_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// How many live slots are at or before `slot`.
    fn prefix(&self, slot: usize) -> u32 {
        let (mut i, mut sum) = (slot, 0);
        while i > 0 {
            sum += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        sum
    }

    /// The live jobs, in order, take slots 1..=n of a tree with room for as many again.
    fn renumber(&mut self) {
        let mut live: Vec<(usize, &mut Waiting)> = self.jobs.values_mut().map(|w| (w.slot, w)).collect();
        live.sort_unstable_by_key(|(slot, _)| *slot);
        let capacity = (2 * live.len()).max(FIRST_CAPACITY);
        let mut tree = vec![0u32; capacity + 1];
        for (i, (_, waiting)) in live.into_iter().enumerate() {
            waiting.slot = i + 1;
            tree[i + 1] = 1;
        }
        // Linear-time construction: each node passes its sum up to its parent.
        for i in 1..tree.len() {
            let parent = i + (i & i.wrapping_neg());
            if parent < tree.len() {
                tree[parent] += tree[i];
            }
        }
        self.next_slot = self.jobs.len();
        self.tree = tree;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn position(order: &QueueOrder, job: &str) -> Option<(usize, usize)> {
        order.standing(job).map(|s| (s.position, s.length))
    }

    #[test]
    fn positions_follow_arrival_and_close_up_when_jobs_leave() {
        let mut order = QueueOrder::new();
        for job in ["a", "b", "c", "d"] {
            order.push(job);
        }
        assert_eq!(position(&order, "a"), Some((1, 4)));
        assert_eq!(position(&order, "d"), Some((4, 4)));
        order.remove("b");
        assert_eq!(position(&order, "c"), Some((2, 3)));
        assert_eq!(position(&order, "b"), None, "a job that left has no place");
        order.push("a");
        assert_eq!(position(&order, "a"), Some((1, 3)), "pushing a waiting job again keeps its place");
        order.push("b");
        assert_eq!(position(&order, "b"), Some((4, 4)), "a job back in line goes to the end");
        order.remove("nobody");
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn a_reason_stays_with_its_job_across_renumbering() {
        let mut order = QueueOrder::new();
        order.push("huge");
        assert!(order.set_reason("huge", "needs 9 GPUs"));
        assert!(!order.set_reason("huge", "needs 9 GPUs"), "the reason it has already");
        assert!(!order.set_reason("absent", "ignored"), "a job not in line");
        for i in 0..1000 {
            order.push(&format!("job-{i}"));
            order.remove(&format!("job-{i}"));
        }
        let standing = order.standing("huge").expect("still waiting");
        assert_eq!(standing, Standing { position: 1, length: 1, reason: Some("needs 9 GPUs".into()) });
        assert_eq!(order.standing("absent"), None);
    }

    /// Against a plain list, over random pushes and removals that renumber many times.
    #[test]
    fn agrees_with_a_list_under_random_churn() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut order = QueueOrder::new();
        let mut list: Vec<String> = Vec::new();
        for step in 0..20_000 {
            if list.is_empty() || rng.random_bool(0.55) {
                let job = format!("job-{step}");
                order.push(&job);
                list.push(job);
            } else {
                let job = list.remove(rng.random_range(0..list.len()));
                order.remove(&job);
            }
            if step % 97 == 0 {
                for (i, job) in list.iter().enumerate() {
                    assert_eq!(position(&order, job), Some((i + 1, list.len())), "step {step}, {job}");
                }
            }
        }
        assert!(list.len() > 1000, "the churn grew the line past several renumberings");
    }
}
