//! The search space: each tuned hyperparameter with its domain and scale, mapped to and from the
//! unit interval so that strategies work on `[0, 1)^d` whatever the scales.

use std::collections::BTreeMap;

use trainyard_model::api;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Logarithmic,
    /// Dense near 1: for values in [0, 1) such as momentum or decay rates.
    ReverseLogarithmic,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    Integer { min: i64, max: i64, scale: Scale },
    Continuous { min: f64, max: f64, scale: Scale },
    Categorical { values: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    pub name: String,
    pub domain: Domain,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchSpace {
    pub parameters: Vec<Parameter>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpaceError {
    #[error("range '{name}': {reason}")]
    InvalidRange { name: String, reason: String },
}

/// `Auto` chooses logarithmic scaling when a positive range spans at least two orders of magnitude
/// (e.g. a learning rate from 1e-4 to 1e-1), linear otherwise.
fn auto_scale(min: f64, max: f64) -> Scale {
    if min > 0.0 && max / min >= 100.0 { Scale::Logarithmic } else { Scale::Linear }
}

fn scale_of(raw: Option<&str>, min: f64, max: f64) -> Scale {
    match raw {
        Some("Linear") => Scale::Linear,
        Some("Logarithmic") => Scale::Logarithmic,
        Some("ReverseLogarithmic") => Scale::ReverseLogarithmic,
        _ => auto_scale(min, max),
    }
}

impl SearchSpace {
    /// The space of validated ranges (see `trainyard_model::rules`); parameters sorted by name so
    /// that the space does not depend on the order ranges were listed in.
    pub fn from_ranges(ranges: &api::ParameterRanges) -> Result<SearchSpace, SpaceError> {
        let invalid = |name: &str, reason: String| SpaceError::InvalidRange { name: name.to_string(), reason };
        let mut parameters = Vec::new();
        for r in ranges.integer_parameter_ranges.iter().flatten() {
            let name = r.name.clone().unwrap_or_default();
            let parse = |v: &Option<String>| v.as_deref().unwrap_or("").trim().parse::<i64>();
            let (min, max) = match (parse(&r.min_value), parse(&r.max_value)) {
                (Ok(a), Ok(b)) if a <= b => (a, b),
                _ => return Err(invalid(&name, "bounds are not integers with min <= max".into())),
            };
            let scale = scale_of(r.scaling_type.as_deref(), min as f64, max as f64);
            parameters.push(Parameter { name, domain: Domain::Integer { min, max, scale } });
        }
        for r in ranges.continuous_parameter_ranges.iter().flatten() {
            let name = r.name.clone().unwrap_or_default();
            let parse = |v: &Option<String>| v.as_deref().unwrap_or("").trim().parse::<f64>();
            let (min, max) = match (parse(&r.min_value), parse(&r.max_value)) {
                (Ok(a), Ok(b)) if a.is_finite() && b.is_finite() && a <= b => (a, b),
                _ => return Err(invalid(&name, "bounds are not numbers with min <= max".into())),
            };
            let scale = scale_of(r.scaling_type.as_deref(), min, max);
            parameters.push(Parameter { name, domain: Domain::Continuous { min, max, scale } });
        }
        for r in ranges.categorical_parameter_ranges.iter().flatten() {
            let name = r.name.clone().unwrap_or_default();
            let values = r.values.clone().unwrap_or_default();
            if values.is_empty() {
                return Err(invalid(&name, "no values".into()));
            }
            parameters.push(Parameter { name, domain: Domain::Categorical { values } });
        }
        parameters.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(SearchSpace { parameters })
    }

    /// The point of the unit cube a set of hyperparameters came from (the inverse of [`Self::at`],
    /// up to rounding); a missing or unparseable value maps to the middle of its range.
    pub fn point_of(&self, values: &BTreeMap<String, String>) -> Vec<f64> {
        self.parameters
            .iter()
            .map(|p| values.get(&p.name).map_or(0.5, |v| p.domain.unit_of(v)).clamp(0.0, 0.999_999))
            .collect()
    }

    /// The hyperparameters at a point of the unit cube (one coordinate per parameter, in [0, 1)).
    pub fn at(&self, point: &[f64]) -> BTreeMap<String, String> {
        self.parameters.iter().zip(point).map(|(p, &u)| (p.name.clone(), p.domain.render(u.clamp(0.0, 1.0)))).collect()
    }
}

/// Maps u in [0, 1] onto [min, max] with the scale.
fn scaled(u: f64, min: f64, max: f64, scale: Scale) -> f64 {
    // The ends are exact, so a range's bounds are reachable as written.
    if u <= 0.0 {
        return min;
    }
    if u >= 1.0 {
        return max;
    }
    match scale {
        Scale::Linear => min + u * (max - min),
        Scale::Logarithmic => (min.ln() + u * (max.ln() - min.ln())).exp(),
        // Reverse-log on [min, max) ⊂ [0, 1): log-uniform in 1 - x.
        Scale::ReverseLogarithmic => {
            let (a, b) = (1.0 - max, 1.0 - min);
            1.0 - (b.ln() + u * (a.ln() - b.ln())).exp()
        }
    }
}

/// The inverse of [`scaled`].
fn unscaled(x: f64, min: f64, max: f64, scale: Scale) -> f64 {
    if max <= min {
        return 0.5;
    }
    match scale {
        Scale::Linear => (x - min) / (max - min),
        Scale::Logarithmic if x > 0.0 && min > 0.0 => (x.ln() - min.ln()) / (max.ln() - min.ln()),
        Scale::ReverseLogarithmic if x < 1.0 && max < 1.0 => {
            let (a, b) = (1.0 - max, 1.0 - min);
            ((1.0 - x).ln() - b.ln()) / (a.ln() - b.ln())
        }
        _ => 0.5,
    }
}

impl Domain {
    /// Where a rendered value sits in the unit interval.
    pub fn unit_of(&self, value: &str) -> f64 {
        match self {
            Domain::Integer { min, max, scale } => {
                let Ok(x) = value.trim().parse::<f64>() else { return 0.5 };
                match scale {
                    Scale::Logarithmic if *min > 0 => {
                        unscaled(x + 0.5, *min as f64, *max as f64 + 0.9999, Scale::Logarithmic)
                    }
                    _ => unscaled(x, *min as f64 - 0.5, *max as f64 + 0.4999, Scale::Linear),
                }
            }
            Domain::Continuous { min, max, scale } => {
                value.trim().parse::<f64>().map_or(0.5, |x| unscaled(x, *min, *max, *scale))
            }
            Domain::Categorical { values } => match values.iter().position(|v| v == value) {
                Some(i) => (i as f64 + 0.5) / values.len() as f64,
                None => 0.5,
            },
        }
    }

    /// The string a training job receives for the point `u` of this domain.
    pub fn render(&self, u: f64) -> String {
        match self {
            Domain::Integer { min, max, scale } => {
                // Widen by half a step at each end so every integer gets an equal share on a linear scale.
                let (lo, hi) = (*min as f64 - 0.5, *max as f64 + 0.4999);
                let x = match scale {
                    Scale::Logarithmic if *min > 0 => {
                        scaled(u, *min as f64, *max as f64 + 0.9999, Scale::Logarithmic).floor()
                    }
                    _ => scaled(u, lo, hi, Scale::Linear).round(),
                };
                (x as i64).clamp(*min, *max).to_string()
            }
            Domain::Continuous { min, max, scale } => {
                let x = scaled(u, *min, *max, *scale).clamp(*min, *max);
                format!("{x}")
            }
            Domain::Categorical { values } => {
                let i = ((u * values.len() as f64) as usize).min(values.len() - 1);
                values[i].clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(json: &str) -> SearchSpace {
        let ranges: api::ParameterRanges = serde_json_like(json);
        SearchSpace::from_ranges(&ranges).expect("valid")
    }

    fn serde_json_like(json: &str) -> api::ParameterRanges {
        // The model's serde derive is the real decoder of requests.
        trainyard_model::api_json(json).expect("ranges parse")
    }

    #[test]
    fn scales_map_the_unit_interval_onto_the_range() {
        let s = space(
            r#"{"ContinuousParameterRanges": [
                {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"},
                {"Name": "momentum", "MinValue": "0.9", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"},
                {"Name": "wd", "MinValue": "0", "MaxValue": "1", "ScalingType": "Auto"}],
               "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1", "MaxValue": "3", "ScalingType": "Linear"}],
               "CategoricalParameterRanges": [{"Name": "opt", "Values": ["sgd", "adam"]}]}"#,
        );
        let names: Vec<&str> = s.parameters.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["epochs", "lr", "momentum", "opt", "wd"], "sorted by name");
        let low = s.at(&[0.0; 5]);
        let high = s.at(&[1.0; 5]);
        let mid = s.at(&[0.5; 5]);
        assert_eq!((low["epochs"].as_str(), high["epochs"].as_str(), mid["epochs"].as_str()), ("1", "3", "2"));
        assert_eq!(low["lr"], "0.0001");
        assert!((high["lr"].parse::<f64>().expect("number") - 0.1).abs() < 1e-12);
        let lr_mid: f64 = mid["lr"].parse().expect("number");
        assert!((lr_mid - (0.0001f64 * 0.1).sqrt()).abs() < 1e-12, "log midpoint is the geometric mean: {lr_mid}");
        let m_mid: f64 = mid["momentum"].parse().expect("number");
        assert!((m_mid - (1.0 - (0.1f64 * 0.001).sqrt())).abs() < 1e-9, "reverse-log midpoint: {m_mid}");
        assert_eq!((low["opt"].as_str(), high["opt"].as_str()), ("sgd", "adam"));
        assert_eq!(mid["wd"], "0.5", "Auto on [0, 1] is linear");
    }

    #[test]
    fn auto_goes_logarithmic_over_two_orders_of_magnitude() {
        assert_eq!(auto_scale(1e-4, 1e-1), Scale::Logarithmic);
        assert_eq!(auto_scale(1.0, 50.0), Scale::Linear);
        assert_eq!(auto_scale(0.0, 1e6), Scale::Linear);
    }

    #[test]
    fn integers_are_uniform_on_a_linear_scale() {
        let s = space(
            r#"{"IntegerParameterRanges": [{"Name": "k", "MinValue": "0", "MaxValue": "3", "ScalingType": "Linear"}]}"#,
        );
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let u = (i as f64 + 0.5) / 4000.0;
            let v: usize = s.at(&[u])["k"].parse().expect("integer");
            counts[v] += 1;
        }
        assert!(counts.iter().all(|&c| (900..=1100).contains(&c)), "{counts:?}");
    }
}
