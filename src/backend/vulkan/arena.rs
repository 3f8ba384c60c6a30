//! Liveness-based placement of activations in one device buffer: a first-fit free list over
//! element offsets. Values are placed when produced and released after their last reader, so
//! the arena's size is the peak of simultaneously live activations (plus fragmentation).

pub struct Arena {
    /// Free ranges (offset, len) in elements, sorted by offset, never adjacent.
    free: Vec<(u64, u64)>,
    top: u64,
    align: u64,
}

impl Arena {
    /// `align` is in elements: every offset is a multiple of it (storage-buffer offset alignment).
    pub fn new(align: u64) -> Self {
        Arena {
            free: Vec::new(),
            top: 0,
            align: align.max(1),
        }
    }

    fn round(&self, n: u64) -> u64 {
        n.max(1).div_ceil(self.align) * self.align
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = self.round(len);
        if let Some(k) = self.free.iter().position(|&(_, l)| l >= len) {
            let (off, l) = self.free[k];
            if l == len {
                self.free.remove(k);
            } else {
                self.free[k] = (off + len, l - len);
            }
            return off;
        }
        // A free range that ends at the top can be grown instead of leaving it as a hole.
        if let Some(&(off, _)) = self.free.last().filter(|&&(o, l)| o + l == self.top) {
            self.free.pop();
            self.top = off + len;
            return off;
        }
        let off = self.top;
        self.top += len;
        off
    }

    pub fn free(&mut self, off: u64, len: u64) {
        let len = self.round(len);
        let k = self.free.partition_point(|&(o, _)| o < off);
        self.free.insert(k, (off, len));
        // Merge with the next, then with the previous range.
        if k + 1 < self.free.len() && self.free[k].0 + self.free[k].1 == self.free[k + 1].0 {
            self.free[k].1 += self.free[k + 1].1;
            self.free.remove(k + 1);
        }
        if k > 0 && self.free[k - 1].0 + self.free[k - 1].1 == self.free[k].0 {
            self.free[k - 1].1 += self.free[k].1;
            self.free.remove(k);
        }
    }

    /// Elements the arena buffer needs.
    pub fn size(&self) -> u64 {
        self.top
    }
}

#[cfg(test)]
mod tests {
    use super::Arena;

    #[test]
    fn reuses_and_merges() {
        let mut a = Arena::new(4);
        let x = a.alloc(10); // 12
        let y = a.alloc(4);
        assert_eq!((x, y), (0, 12));
        a.free(x, 10);
        assert_eq!(a.alloc(8), 0, "first fit reuses the hole");
        a.free(0, 8);
        a.free(y, 4);
        assert_eq!(a.alloc(16), 0, "freed neighbours merge");
        assert_eq!(a.size(), 16);
    }
}
