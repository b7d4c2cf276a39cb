//! What is wrong with a config: every problem found, each under its dotted
//! key, gathered so the user fixes the file in one pass.

/// One thing wrong, at a dotted key such as `components.users.wasm`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found so far.
#[derive(Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// `value` if it lies in `min..=max`, else a problem and `None`.
    pub fn ranged(&mut self, key: impl Into<String>, value: Option<u64>, min: u64, max: u64) -> Option<u64> {
        let value = value?;
        if (min..=max).contains(&value) {
            Some(value)
        } else {
            self.add(key, format!("{value} is out of range: use {min} to {max}"));
            None
        }
    }
}
