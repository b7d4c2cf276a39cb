//! A body's bytes held to a cap, frame by frame, for bodies that stream
//! through the host: a component's response, or a response to its own
//! outgoing request.

/// How many more bytes a body may carry.
#[derive(Debug, Clone, Copy)]
pub struct BodyCap {
    left: usize,
    limit: usize,
}

impl BodyCap {
    pub fn new(limit: usize) -> Self {
        BodyCap { left: limit, limit }
    }

    /// Counts `size` more bytes, or says the cap (in bytes) they would pass.
    pub fn take(&mut self, size: usize) -> Result<(), usize> {
        self.left = self.left.checked_sub(size).ok_or(self.limit)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::BodyCap;

    #[test]
    fn a_body_may_carry_its_cap_and_no_more() {
        let mut cap = BodyCap::new(10);
        assert_eq!(cap.take(4), Ok(()));
        assert_eq!(cap.take(6), Ok(()));
        assert_eq!(cap.take(1), Err(10));
        assert_eq!(cap.take(0), Ok(()));
    }
}
