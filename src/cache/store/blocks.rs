//! The slot stores' memory: slots in fixed-size blocks and records in fixed-size chunks, neither
//! ever reallocated, so growing copies nothing and an offset stays valid until compaction rewrites it.

/// Slots per slab block (160 KiB of 40-byte slots).
pub(super) const BLOCK_BITS: u32 = 12;
pub(super) const BLOCK_SLOTS: usize = 1 << BLOCK_BITS;

/// A shard's slots in fixed-size blocks that never move. A `Vec` of slots grew by doubling, copying
/// every slot and faulting in fresh pages each time, while the allocator returned the old block to
/// the OS only after a delay: in a profile of a 2M warm start, about 7% of the edge's CPU. Growing
/// here allocates one block and copies nothing.
pub(super) struct Slab<T> {
    pub(super) blocks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self { blocks: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn push(&mut self, slot: T) {
        if self.blocks.len() == self.len >> BLOCK_BITS {
            self.blocks.push(Vec::with_capacity(BLOCK_SLOTS));
        }
        self.blocks[self.len >> BLOCK_BITS].push(slot);
        self.len += 1;
    }

    /// Removes slot `at`, moving the last slot into its place.
    pub(super) fn swap_remove(&mut self, at: usize) {
        self.len -= 1;
        let last = self.blocks[self.len >> BLOCK_BITS].pop().expect("the last block holds the last slot");
        if at < self.len {
            self[at] = last;
        }
        // Keep one empty block beyond the last used (so a store that hovers at a block boundary does
        // not allocate and free a block per insert), and free any further.
        if self.blocks.len() > self.len.div_ceil(BLOCK_SLOTS) + 1 {
            self.blocks.pop();
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.blocks.iter().flatten()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.blocks.iter_mut().flatten()
    }
}

impl<T> std::ops::Index<usize> for Slab<T> {
    type Output = T;

    fn index(&self, at: usize) -> &T {
        &self.blocks[at >> BLOCK_BITS][at & (BLOCK_SLOTS - 1)]
    }
}

impl<T> std::ops::IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, at: usize) -> &mut T {
        &mut self.blocks[at >> BLOCK_BITS][at & (BLOCK_SLOTS - 1)]
    }
}

/// Arena chunks are this big (records never straddle two); a record larger than a chunk gets a chunk
/// of its own. 2^18 bytes leaves 14 bits of a 32-bit offset for the chunk: 4 GiB per shard. (64 KiB
/// chunks and 1024-slot blocks were tried against the partly empty last chunk of each shard, which
/// transparent huge pages keep resident whole: RSS at 1M did not improve, 181 against 177-179 MB.)
pub(super) const CHUNK_BITS: u32 = 18;
pub(super) const CHUNK_BYTES: usize = 1 << CHUNK_BITS;
/// Records of one shard, back to back in chunks that are never reallocated (so growing never copies,
/// and an offset stays valid until compaction rewrites it).
#[derive(Default)]
pub(super) struct Arena {
    pub(super) chunks: Vec<Vec<u8>>,
    /// Bytes written to the chunks.
    pub(super) used: usize,
    /// Of those, bytes no slot refers to any more.
    pub(super) garbage: usize,
}

impl Arena {
    pub(super) fn get(&self, offset: u32, len: u32) -> &[u8] {
        let start = (offset & (CHUNK_BYTES as u32 - 1)) as usize;
        &self.chunks[(offset >> CHUNK_BITS) as usize][start..start + len as usize]
    }

    pub(super) fn get_mut(&mut self, offset: u32, len: u32) -> &mut [u8] {
        let start = (offset & (CHUNK_BYTES as u32 - 1)) as usize;
        &mut self.chunks[(offset >> CHUNK_BITS) as usize][start..start + len as usize]
    }

    /// Appends `head` then `tail` as one record; returns its offset.
    pub(super) fn push(&mut self, head: &[u8], tail: &[u8]) -> u32 {
        let len = head.len() + tail.len();
        let fits = self.chunks.last().is_some_and(|chunk| chunk.len() + len <= chunk.capacity().min(CHUNK_BYTES));
        if !fits {
            assert!(self.chunks.len() < 1 << (32 - CHUNK_BITS), "a shard's records fit in 4 GiB");
            // Exactly one chunk's worth (or the one record): the allocation is never grown.
            self.chunks.push(Vec::with_capacity(len.max(CHUNK_BYTES)));
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        let start = chunk.len();
        chunk.extend_from_slice(head);
        chunk.extend_from_slice(tail);
        self.used += len;
        ((index as u32) << CHUNK_BITS) | start as u32
    }

    pub(super) fn forget(&mut self, len: u32) {
        self.garbage += len as usize;
    }

    /// Whether enough is garbage that copying the live records out pays: more than an eighth (so
    /// each compaction copies at most seven bytes per byte it frees), and more than a chunk (so small
    /// shards do not compact over and over for a few bytes).
    pub(super) fn wants_compaction(&self) -> bool {
        self.garbage > CHUNK_BYTES && self.garbage * 8 > self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slab_keeps_slots_across_blocks_and_frees_blocks_it_no_longer_needs() {
        let mut slab = Slab::default();
        let mut model = Vec::new();
        for key in 0..(3 * BLOCK_SLOTS as u64 + 5) {
            slab.push(key);
            model.push(key);
        }
        let mut random = fastrand::Rng::with_seed(1);
        while model.len() > 10 {
            let at = random.usize(..model.len());
            slab.swap_remove(at);
            model.swap_remove(at);
            assert_eq!(slab.len(), model.len());
            assert!(slab.blocks.len() <= model.len().div_ceil(BLOCK_SLOTS) + 1);
        }
        let keys: Vec<u64> = slab.iter().copied().collect();
        assert_eq!(keys, model);
        assert_eq!((0..model.len()).map(|at| slab[at]).collect::<Vec<_>>(), model);
    }
}
