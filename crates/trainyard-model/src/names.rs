//! Resource names and ARNs.

/// Where ARNs say a resource lives. SageMaker writes `arn:aws:sagemaker:<region>:<account>:...`;
/// a self-hosted cluster names its own "region" and account (defaults: `local`, `000000000000`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnContext {
    pub partition: String,
    pub region: String,
    pub account: String,
}

impl Default for ArnContext {
    fn default() -> Self {
        Self { partition: "aws".into(), region: "local".into(), account: "000000000000".into() }
    }
}

impl ArnContext {
    /// SageMaker lower-cases the name in a tuning job's ARN.
    pub fn tuning_job(&self, name: &str) -> String {
        self.arn("hyper-parameter-tuning-job", name)
    }

    pub fn training_job(&self, name: &str) -> String {
        self.arn("training-job", name)
    }

    fn arn(&self, kind: &str, name: &str) -> String {
        format!("arn:{}:sagemaker:{}:{}:{kind}/{}", self.partition, self.region, self.account, name.to_lowercase())
    }
}

/// The name of the `index`-th trial (1-based) of a tuning job: `<tuning-job>-<NNN>-<8 hex>`, as
/// SageMaker names them. Tuning job names are at most 32 characters, so the result fits in 63.
pub fn trial_name(tuning_job: &str, index: u32, suffix: u32) -> String {
    format!("{tuning_job}-{index:03}-{suffix:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_match_the_service_model_patterns() {
        let ctx = ArnContext::default();
        assert_eq!(
            ctx.tuning_job("My-Tuning"),
            "arn:aws:sagemaker:local:000000000000:hyper-parameter-tuning-job/my-tuning"
        );
        assert_eq!(trial_name("random-240712-1545", 19, 0x4ac17a84), "random-240712-1545-019-4ac17a84");
        assert!(trial_name(&"x".repeat(32), 999, u32::MAX).len() <= 63);
    }
}
