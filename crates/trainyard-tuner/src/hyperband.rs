//! Hyperband, asynchronously (ASHA): trials are spread over brackets; in each bracket, a trial is
//! judged at its rungs — epochs `MinResource · η^k` — against the trials of the same bracket that
//! reached that rung before it, and stopped unless it is in the top 1/η of them. The bracket with
//! the largest first rung lets its trials run to MaxResource untouched, so a slow starter that
//! would win still gets its chance. Resources are epochs: one objective value reported per epoch.

use std::collections::HashMap;

/// The reduction factor: at each rung, one trial in η goes on.
pub const ETA: u64 = 3;

#[derive(Debug, Clone, PartialEq)]
pub struct Hyperband {
    pub min_resource: u64,
    pub max_resource: u64,
    /// Values (larger is better) recorded at each (bracket, rung epoch).
    rungs: HashMap<(usize, u64), Vec<f64>>,
}

impl Hyperband {
    pub fn new(min_resource: u64, max_resource: u64) -> Hyperband {
        let min_resource = min_resource.max(1);
        Hyperband { min_resource, max_resource: max_resource.max(min_resource), rungs: HashMap::new() }
    }

    /// How many brackets: ⌊log_η(R / r_min)⌋ + 1.
    pub fn brackets(&self) -> usize {
        let mut n = 0;
        let mut r = self.min_resource;
        while r * ETA <= self.max_resource {
            r *= ETA;
            n += 1;
        }
        n + 1
    }

    /// The bracket of trial `index` (0-based): trials take turns, most aggressive bracket first.
    pub fn bracket_of(&self, index: u64) -> usize {
        (index % self.brackets() as u64) as usize
    }

    /// The epochs at which a trial of `bracket` is judged: bracket 0 from MinResource on, each later
    /// bracket starting one rung higher; the last bracket has none below MaxResource.
    pub fn rungs(&self, bracket: usize) -> Vec<u64> {
        let mut r = self.min_resource * ETA.pow(bracket as u32);
        let mut out = Vec::new();
        while r < self.max_resource {
            out.push(r);
            r *= ETA;
        }
        out
    }

    /// Records a trial's objective after `epoch` and says whether to stop it there.
    pub fn report(&mut self, bracket: usize, epoch: u64, value: f64) -> bool {
        if !self.rungs(bracket).contains(&epoch) {
            return false;
        }
        let seen = self.rungs.entry((bracket, epoch)).or_default();
        seen.push(value);
        let n = seen.len() as u64;
        if n < ETA {
            return false; // too few to judge: go on
        }
        let keep = (n / ETA).max(1) as usize;
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        value < sorted[keep - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_and_rungs_follow_the_resource_range() {
        let h = Hyperband::new(1, 27);
        assert_eq!(h.brackets(), 4);
        assert_eq!(h.rungs(0), [1, 3, 9]);
        assert_eq!(h.rungs(1), [3, 9]);
        assert_eq!(h.rungs(2), [9]);
        assert!(h.rungs(3).is_empty(), "the last bracket runs every trial to MaxResource");
        assert_eq!((0..5).map(|i| h.bracket_of(i)).collect::<Vec<_>>(), [0, 1, 2, 3, 0]);
        let small = Hyperband::new(5, 10);
        assert_eq!((small.brackets(), small.rungs(0)), (1, vec![5]));
    }

    #[test]
    fn only_the_top_third_goes_on_at_a_rung() {
        let mut h = Hyperband::new(1, 9);
        // Epochs that are not rungs never stop a trial.
        assert!(!h.report(0, 2, -100.0));
        // The first two at rung 1 go on (too few to judge); the third is judged against all three.
        assert!(!h.report(0, 1, 0.5));
        assert!(!h.report(0, 1, 0.9));
        assert!(h.report(0, 1, 0.4), "0.4 is not in the top third of 0.5, 0.9, 0.4");
        assert!(!h.report(0, 1, 0.95), "0.95 is the best so far");
        assert!(h.report(0, 1, 0.6), "top third of six is two: 0.95 and 0.9");
        // Brackets are judged apart.
        assert!(!h.report(1, 3, 0.0));
    }
}
