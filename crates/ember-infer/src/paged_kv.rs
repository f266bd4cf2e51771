//! A paged key/value cache on the host, as vLLM's PagedAttention keeps it: one pool of
//! fixed-size blocks (16 positions by default), a [`BlockTable`] per sequence listing the
//! blocks its positions lie in, a free list, and reference counts so that sequences with
//! a common prompt prefix share its blocks.
//!
//! Full blocks are indexed by their content (the tokens in them, the block before them
//! and a salt such as the adapter in use): a later sequence whose prompt starts the same
//! way takes them instead of computing them again. Freed blocks keep their content and
//! stay findable until the free list hands them out again, oldest freed first.
//!
//! Only full blocks are shared, so a sequence writes only into blocks it owns alone;
//! [`PagedKv::fork`] copies the partial last block.

use std::collections::{HashMap, VecDeque};

use ember_nn::TransformerConfig;

/// Positions per block unless configured otherwise (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// The blocks of one sequence, in position order, and how many positions are computed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    /// Position `p` lies in block `blocks[p / block_size]` at offset `p % block_size`.
    pub blocks: Vec<usize>,
    /// Positions whose keys and values are written.
    pub len: usize,
    /// Leading blocks already entered in the content index.
    indexed: usize,
}

impl BlockTable {
    /// Positions the reserved blocks hold.
    pub fn capacity(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }
}

/// The identity of a full block's content: its salt, the block before it (and that
/// block's generation, so a reused block never matches stale children) and its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ContentKey {
    salt: u64,
    parent: Option<(usize, u64)>,
    tokens: Vec<u32>,
}

/// The pool: per layer, keys and values `[n_blocks, block_size, n_kv_heads · head_dim]`.
#[derive(Debug, Clone)]
pub struct PagedKv {
    block_size: usize,
    kv_width: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Sequences holding each block.
    refs: Vec<u32>,
    /// Bumped each time a block is handed out anew (its old content is gone).
    generation: Vec<u64>,
    /// The content key of each indexed block.
    key_of: Vec<Option<ContentKey>>,
    index: HashMap<ContentKey, usize>,
    /// Blocks with no holder, oldest freed first; an entry is stale when its stamp is
    /// not the block's current one (the block was taken back by a prefix match).
    free: VecDeque<(usize, u64)>,
    free_stamp: Vec<u64>,
    n_free: usize,
}

/// Not enough free blocks for what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

impl PagedKv {
    /// A pool of `n_blocks` blocks of `block_size` positions for `config`'s layers.
    pub fn new(config: &TransformerConfig, block_size: usize, n_blocks: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        let kv_width = config.n_kv_heads * config.head_dim();
        let layer = || vec![0f32; n_blocks * block_size * kv_width];
        Self {
            block_size,
            kv_width,
            keys: (0..config.n_layers).map(|_| layer()).collect(),
            values: (0..config.n_layers).map(|_| layer()).collect(),
            refs: vec![0; n_blocks],
            generation: vec![0; n_blocks],
            key_of: vec![None; n_blocks],
            index: HashMap::new(),
            free: (0..n_blocks).map(|b| (b, 0)).collect(),
            free_stamp: vec![0; n_blocks],
            n_free: n_blocks,
        }
    }

    /// Bytes one block takes (keys and values of every layer).
    pub fn block_bytes(config: &TransformerConfig, block_size: usize) -> usize {
        2 * config.n_layers * block_size * config.n_kv_heads * config.head_dim() * 4
    }

    /// How many blocks fit in `megabytes` MiB.
    pub fn blocks_in(config: &TransformerConfig, block_size: usize, megabytes: f64) -> usize {
        ((megabytes * 1024.0 * 1024.0) / Self::block_bytes(config, block_size) as f64) as usize
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks no sequence holds (some may still hold a reusable prefix).
    pub fn free_blocks(&self) -> usize {
        self.n_free
    }

    /// The fraction of blocks sequences hold, 0 to 1.
    pub fn usage(&self) -> f64 {
        let total = self.total_blocks().max(1);
        (total - self.n_free) as f64 / total as f64
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// Takes the oldest free block for a new holder, forgetting its old content.
    fn take_free(&mut self) -> Option<usize> {
        while let Some((block, stamp)) = self.free.pop_front() {
            if stamp != self.free_stamp[block] || self.refs[block] != 0 {
                continue;
            }
            if let Some(key) = self.key_of[block].take() {
                self.index.remove(&key);
            }
            self.generation[block] += 1;
            self.refs[block] = 1;
            self.n_free -= 1;
            return Some(block);
        }
        None
    }

    /// Adds a holder to `block`, taking it off the free list when it had none.
    fn hold(&mut self, block: usize) {
        if self.refs[block] == 0 {
            // Its free-list entry goes stale.
            self.free_stamp[block] += 1;
            self.n_free -= 1;
        }
        self.refs[block] += 1;
    }

    /// Removes a holder from `block`; with none left it joins the free list, content kept.
    fn drop_hold(&mut self, block: usize) {
        assert!(self.refs[block] > 0, "block {block} released twice");
        self.refs[block] -= 1;
        if self.refs[block] == 0 {
            self.free_stamp[block] += 1;
            self.free.push_back((block, self.free_stamp[block]));
            self.n_free += 1;
        }
    }

    /// Makes `table` hold at least `positions` positions; all or nothing.
    pub fn reserve(&mut self, table: &mut BlockTable, positions: usize) -> Result<(), OutOfBlocks> {
        let needed = self
            .blocks_for(positions)
            .saturating_sub(table.blocks.len());
        if needed > self.n_free {
            return Err(OutOfBlocks {
                needed,
                free: self.n_free,
            });
        }
        for _ in 0..needed {
            let block = self.take_free().expect("counted free blocks");
            table.blocks.push(block);
        }
        Ok(())
    }

    /// Returns every block of `table` (it is left empty).
    pub fn release(&mut self, table: &mut BlockTable) {
        for block in table.blocks.drain(..) {
            self.drop_hold(block);
        }
        table.len = 0;
        table.indexed = 0;
    }

    /// A table for a sequence starting with `tokens`, holding the longest run of indexed
    /// full blocks that matches them, never the block of the last token (whose logits the
    /// caller needs computed). Its `len` says how many positions are already there.
    pub fn share_prefix(&mut self, salt: u64, tokens: &[u32]) -> BlockTable {
        let mut table = BlockTable::default();
        let shareable = tokens.len().saturating_sub(1) / self.block_size;
        let mut parent = None;
        for chunk in tokens.chunks(self.block_size).take(shareable) {
            let key = ContentKey {
                salt,
                parent,
                tokens: chunk.to_vec(),
            };
            let Some(&block) = self.index.get(&key) else {
                break;
            };
            self.hold(block);
            table.blocks.push(block);
            parent = Some((block, self.generation[block]));
        }
        table.len = table.blocks.len() * self.block_size;
        table.indexed = table.blocks.len();
        table
    }

    /// Enters `table`'s full, computed blocks into the content index; `tokens` are the
    /// sequence's tokens from position 0 (at least `table.len`).
    pub fn index_blocks(&mut self, salt: u64, table: &mut BlockTable, tokens: &[u32]) {
        let full = table.len.min(tokens.len()) / self.block_size;
        while table.indexed < full {
            let i = table.indexed;
            let block = table.blocks[i];
            let parent = i
                .checked_sub(1)
                .map(|p| (table.blocks[p], self.generation[table.blocks[p]]));
            let key = ContentKey {
                salt,
                parent,
                tokens: tokens[i * self.block_size..(i + 1) * self.block_size].to_vec(),
            };
            if self.key_of[block].is_none() && !self.index.contains_key(&key) {
                self.index.insert(key.clone(), block);
                self.key_of[block] = Some(key);
            }
            table.indexed += 1;
        }
    }

    /// Keeps the first `len` positions of `table` (rejected draft tokens) and returns the
    /// blocks it no longer needs.
    pub fn truncate(&mut self, table: &mut BlockTable, len: usize) {
        let len = len.min(table.len);
        let keep = self.blocks_for(len);
        for block in table.blocks.drain(keep..) {
            self.drop_hold(block);
        }
        table.len = len;
        table.indexed = table.indexed.min(len / self.block_size);
    }

    /// A second table with `table`'s positions: full blocks shared, the partial last one
    /// copied (the two sequences will write different tokens there).
    pub fn fork(&mut self, table: &BlockTable) -> Result<BlockTable, OutOfBlocks> {
        let full = table.len / self.block_size;
        let partial = !table.len.is_multiple_of(self.block_size);
        if partial && self.n_free == 0 {
            return Err(OutOfBlocks { needed: 1, free: 0 });
        }
        let mut copy = BlockTable {
            blocks: Vec::with_capacity(table.blocks.len()),
            len: table.len,
            indexed: table.indexed.min(full),
        };
        for &block in &table.blocks[..full] {
            self.hold(block);
            copy.blocks.push(block);
        }
        if partial {
            let from = table.blocks[full];
            let to = self.take_free().expect("checked a free block");
            let width = self.block_size * self.kv_width;
            for layer in self.keys.iter_mut().chain(self.values.iter_mut()) {
                layer.copy_within(from * width..(from + 1) * width, to * width);
            }
            copy.blocks.push(to);
        }
        Ok(copy)
    }

    /// Where position `pos` of `table` lives: its offset (in floats) into a layer's
    /// keys or values, `n_kv_heads · head_dim` floats long.
    pub fn offset(&self, table: &BlockTable, pos: usize) -> usize {
        let block = table.blocks[pos / self.block_size];
        (block * self.block_size + pos % self.block_size) * self.kv_width
    }

    /// Layer `layer`'s keys and values, `[n_blocks, block_size, n_kv_heads · head_dim]`.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Writes position `pos`'s key and value rows (`[n_kv_heads · head_dim]`) in `layer`.
    pub fn write(&mut self, layer: usize, table: &BlockTable, pos: usize, k: &[f32], v: &[f32]) {
        let at = self.offset(table, pos);
        self.keys[layer][at..at + self.kv_width].copy_from_slice(k);
        self.values[layer][at..at + self.kv_width].copy_from_slice(v);
    }

    /// Holders of `block` (for tests and metrics).
    pub fn holders(&self, block: usize) -> u32 {
        self.refs[block]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(blocks: usize) -> PagedKv {
        let config = TransformerConfig::llama(32, 16, 1, 2, 1, 32, 64);
        PagedKv::new(&config, 4, blocks)
    }

    #[test]
    fn reserve_is_all_or_nothing_and_release_returns_every_block() {
        let mut kv = pool(5);
        let mut a = BlockTable::default();
        kv.reserve(&mut a, 9).unwrap();
        assert_eq!(a.blocks.len(), 3);
        assert_eq!(kv.free_blocks(), 2);
        let mut b = BlockTable::default();
        assert_eq!(
            kv.reserve(&mut b, 12),
            Err(OutOfBlocks { needed: 3, free: 2 })
        );
        assert!(b.blocks.is_empty());
        assert_eq!(kv.free_blocks(), 2);
        kv.release(&mut a);
        assert_eq!(kv.free_blocks(), 5);
        kv.reserve(&mut b, 20).unwrap();
        assert_eq!(kv.free_blocks(), 0);
        assert!((kv.usage() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_common_prefix_shares_full_blocks_and_survives_its_first_holder() {
        let mut kv = pool(8);
        let tokens: Vec<u32> = (0..10).collect();
        let mut a = kv.share_prefix(7, &tokens);
        assert_eq!(a.len, 0);
        kv.reserve(&mut a, 10).unwrap();
        a.len = 10;
        kv.index_blocks(7, &mut a, &tokens);
        // Same first 8 tokens: two shared blocks; the third is partial and not shared.
        let mut other: Vec<u32> = (0..8).collect();
        other.extend([99, 98, 97]);
        let mut b = kv.share_prefix(7, &other);
        assert_eq!(b.len, 8);
        assert_eq!(b.blocks, a.blocks[..2]);
        assert_eq!(kv.holders(a.blocks[0]), 2);
        // Another salt (an adapter) shares nothing.
        assert_eq!(kv.share_prefix(8, &other).len, 0);
        // A prompt of exactly two blocks keeps its last block to compute.
        let exact: Vec<u32> = (0..8).collect();
        let mut c = kv.share_prefix(7, &exact);
        assert_eq!(c.len, 4);
        kv.release(&mut c);
        let first = a.blocks[0];
        kv.release(&mut a);
        kv.release(&mut b);
        assert_eq!(kv.free_blocks(), 8);
        // Freed but not reused: still found.
        let mut d = kv.share_prefix(7, &other);
        assert_eq!(d.len, 8);
        assert_eq!(d.blocks[0], first);
        assert_eq!(kv.free_blocks(), 6);
        kv.release(&mut d);
        // Handing every block out again forgets the content.
        let mut e = BlockTable::default();
        kv.reserve(&mut e, 32).unwrap();
        kv.release(&mut e);
        assert_eq!(kv.share_prefix(7, &other).len, 0);
    }

    #[test]
    fn fork_shares_full_blocks_and_copies_the_partial_one() {
        let config = TransformerConfig::llama(32, 16, 2, 2, 1, 32, 64);
        let mut kv = PagedKv::new(&config, 4, 6);
        let mut a = BlockTable::default();
        kv.reserve(&mut a, 6).unwrap();
        for pos in 0..6 {
            let k = vec![pos as f32; 8];
            let v = vec![-(pos as f32); 8];
            kv.write(1, &a, pos, &k, &v);
        }
        a.len = 6;
        let b = kv.fork(&a).unwrap();
        assert_eq!(b.blocks[0], a.blocks[0]);
        assert_ne!(b.blocks[1], a.blocks[1]);
        assert_eq!(kv.holders(a.blocks[0]), 2);
        for pos in 0..6 {
            let (keys, values) = kv.layer(1);
            let (x, y) = (kv.offset(&a, pos), kv.offset(&b, pos));
            assert_eq!(keys[x..x + 8], keys[y..y + 8]);
            assert_eq!(values[y], -(pos as f32));
        }
    }
}
