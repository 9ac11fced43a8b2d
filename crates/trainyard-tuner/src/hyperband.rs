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
    /// The bracket of each trial of one round (see [`Self::bracket_of`]), worked out once: it is
    /// asked for at every report of an objective.
    schedule: Vec<u8>,
}

impl Hyperband {
    pub fn new(min_resource: u64, max_resource: u64) -> Hyperband {
        let min_resource = min_resource.max(1);
        let mut hyperband = Hyperband {
            min_resource,
            max_resource: max_resource.max(min_resource),
            rungs: HashMap::new(),
            schedule: Vec::new(),
        };
        hyperband.schedule = hyperband.round_robin();
        hyperband
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

    /// How many trials each bracket gets in one round of Hyperband (Li et al.): bracket b of
    /// B brackets starts ⌈B/(B−b) · η^(B−1−b)⌉ trials, so the aggressive brackets, whose trials
    /// mostly stop at their first rung, get many cheap trials and the last bracket a few full ones.
    pub fn bracket_sizes(&self) -> Vec<u64> {
        let count = self.brackets() as u64;
        (0..count).map(|b| (count * ETA.pow((count - 1 - b) as u32)).div_ceil(count - b)).collect()
    }

    /// The bracket of trial `index` (0-based): in each round the brackets take turns in
    /// proportion to [`Self::bracket_sizes`] (smooth weighted round robin, most aggressive bracket
    /// first), so trials started close together spread over the brackets.
    pub fn bracket_of(&self, index: u64) -> usize {
        self.schedule.get((index % self.schedule.len().max(1) as u64) as usize).map_or(0, |b| usize::from(*b))
    }

    /// One round of [`Self::bracket_of`]: each turn, every bracket earns its size in credit and the
    /// richest (the earlier on ties) is chosen and pays the round's length.
    fn round_robin(&self) -> Vec<u8> {
        let sizes = self.bracket_sizes();
        let round: u64 = sizes.iter().sum();
        let mut credit = vec![0i64; sizes.len()];
        (0..round)
            .map(|_| {
                for (c, s) in credit.iter_mut().zip(&sizes) {
                    *c += *s as i64;
                }
                let chosen = (0..sizes.len()).max_by_key(|b| (credit[*b], std::cmp::Reverse(*b))).unwrap_or(0);
                credit[chosen] -= round as i64;
                chosen as u8
            })
            .collect()
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
        // Hyperband's allocation for 4 brackets and η = 3: 27, 12, 6 and 4 trials a round.
        assert_eq!(h.bracket_sizes(), [27, 12, 6, 4]);
        let round: Vec<usize> = (0..49).map(|i| h.bracket_of(i)).collect();
        for (bracket, size) in [27, 12, 6, 4].iter().enumerate() {
            assert_eq!(round.iter().filter(|b| **b == bracket).count(), *size, "{round:?}");
        }
        assert_eq!(&round[..4], [0, 1, 0, 2], "interleaved, the most aggressive first");
        assert_eq!((49..98).map(|i| h.bracket_of(i)).collect::<Vec<_>>(), round, "and again each round");
        let small = Hyperband::new(5, 10);
        assert_eq!((small.brackets(), small.rungs(0)), (1, vec![5]));
        assert_eq!((0..3).map(|i| small.bracket_of(i)).collect::<Vec<_>>(), [0, 0, 0]);
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
